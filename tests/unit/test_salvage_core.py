"""core.salvage: what becomes of an upload nobody finishes (SPEC §2.19), from tables."""

from __future__ import annotations

import pytest

from cefmp4.core.salvage import (
    MIN_PART_BYTES,
    Action,
    Part,
    Upload,
    last_activity,
    plan,
    published_by_owner,
    salvaged_document,
)

MIB = 1 << 20
NOW = 100_000.0
AGE = 900.0


def _parts(*spec: tuple[int, int, float | None]) -> tuple[Part, ...]:
    return tuple(Part(n, size, f"etag{n}", at) for n, size, at in spec)


OLD = NOW - 2 * AGE
FRESH = NOW - 10.0


@pytest.mark.parametrize(
    ("upload", "exists", "action", "used", "ignored"),
    [
        # Nobody added anything for longer than the limit: its parts become the object.
        (Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD), (2, 10 * MIB, OLD))), False,
         Action.COMPLETE, [1, 2], []),
        # A sibling's day-long recording: initiated long ago, a part seconds ago: live.
        (Upload("k", "u", NOW - 86_400 * 3, _parts((1, 10 * MIB, NOW - 86_400 * 3),
                                                    (2, 10 * MIB, FRESH))), False,
         Action.SKIP_LIVE, [], []),
        # Initiated within the limit, no part yet: live (its owner is about to send one).
        (Upload("k", "u", FRESH, ()), False, Action.SKIP_LIVE, [], []),
        # Old and empty: nothing to keep.
        (Upload("k", "u", OLD, ()), False, Action.ABORT_EMPTY, [], []),
        # A gap ends the object: parts 1-2, then 4 (3 was in flight when the host died).
        (Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD), (2, 10 * MIB, OLD),
                                      (4, 10 * MIB, OLD))), False,
         Action.COMPLETE, [1, 2], [4]),
        # No part 1: nothing contiguous from byte 0; left open and reported.
        (Upload("k", "u", OLD, _parts((2, 10 * MIB, OLD))), False, Action.UNUSABLE, [], [2]),
        # Only the last part may be short: cut after the first short one.
        (Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD), (2, MIN_PART_BYTES - 1, OLD),
                                      (3, 10 * MIB, OLD))), False,
         Action.COMPLETE, [1, 2], [3]),
        # An object at its key is never replaced: left open and reported.
        (Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD))), True, Action.BLOCKED, [1], []),
        # Known to a checkpoint store whose owner may live: its owner resumes it.
        (Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD)), known=True), False,
         Action.SKIP_OWNED, [], []),
        # Known, owner provably gone (lease expired, file nowhere): salvaged like any other.
        (Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD)), known=True, owner_gone=True),
         False, Action.COMPLETE, [1], []),
        # Parts listed without a time (a store that gives none): the initiation counts.
        (Upload("k", "u", OLD, _parts((1, 10 * MIB, None))), False, Action.COMPLETE, [1], []),
    ],
)
def test_plan(upload: Upload, exists: bool, action: Action, used: list[int],
              ignored: list[int]) -> None:
    result = plan(upload, now=NOW, older_than=AGE, object_exists=exists)
    assert result.action is action, result.reason
    assert [p.number for p in result.used] == used
    assert [p.number for p in result.ignored] == ignored
    assert result.bytes == sum(p.size for p in result.used)
    assert result.reason


def test_gap_after_names_the_last_part_used() -> None:
    up = Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD), (3, 10 * MIB, OLD)))
    assert plan(up, now=NOW, older_than=AGE, object_exists=False).gap_after == 1
    whole = Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD)))
    assert plan(whole, now=NOW, older_than=AGE, object_exists=False).gap_after is None


def test_last_activity_is_the_newest_part_else_the_initiation() -> None:
    assert last_activity(Upload("k", "u", 5.0, ())) == 5.0
    assert last_activity(Upload("k", "u", 5.0, _parts((1, 1, 9.0), (2, 1, 7.0)))) == 9.0
    assert last_activity(Upload("k", "u", 5.0, _parts((1, 1, None)))) == 5.0
    # A part listed as older than the upload (clock skew): the initiation still counts.
    assert last_activity(Upload("k", "u", 5.0, _parts((1, 1, 1.0)))) == 5.0


def test_a_zero_age_limit_takes_everything_not_owned() -> None:
    up = Upload("k", "u", NOW, _parts((1, 10 * MIB, NOW)))
    assert plan(up, now=NOW, older_than=0.0, object_exists=False).action is Action.COMPLETE


# --- tail segments (RPO_SECONDS, §2.20) ----------------------------------------------------

from cefmp4.core.tail import Segment, chain, next_range, parse_segment, segment_key  # noqa: E402

SID = "20261207T120000Z-0123456789"


def _seg(start: int, end: int, at: float | None = OLD) -> Segment:
    return Segment(start, end, segment_key("streams/", SID, start, end), at)


def test_segment_names_sort_by_offset_and_parse_back() -> None:
    key = segment_key("streams", SID, 5, 17)
    assert key == f"streams/.cefmp4/tail/{SID}/{5:016x}-{17:016x}"
    assert parse_segment("streams/", SID, key, 12) == Segment(5, 17, key)
    assert parse_segment("streams/", SID, key, 11) is None  # size disagrees with its name
    assert parse_segment("streams/", SID, key + "x", 12) is None
    assert parse_segment("streams/", SID, "streams/other", 12) is None
    with pytest.raises(ValueError, match="byte range"):
        segment_key("streams/", SID, 5, 5)


@pytest.mark.parametrize(("durable", "shipped", "size", "limit", "expected"), [
    (0, 0, 0, 10, None),  # nothing yet
    (0, 0, 7, 10, (0, 7)),
    (0, 7, 7, 10, None),  # shipped already
    (0, 7, 9, 10, (7, 9)),  # only what no segment holds: each byte at most twice
    (20, 7, 25, 10, (20, 25)),  # a part took it since
    (0, 0, 30, 10, (0, 10)),  # capped: memory stays bounded
])
def test_next_range(durable: int, shipped: int, size: int, limit: int,
                    expected: tuple[int, int] | None) -> None:
    assert next_range(durable, shipped, size, limit) == expected


def test_chain_continues_without_a_gap() -> None:
    segs = [_seg(0, 4), _seg(4, 9), _seg(9, 12), _seg(15, 20)]
    assert [(p.start, p.end) for p in chain(segs, 0)] == [(0, 4), (4, 9), (9, 12)]
    assert [(p.start, p.end) for p in chain(segs, 6)] == [(6, 9), (9, 12)]  # a part held 0-6
    assert chain(segs, 12) == []  # a gap at 12-15
    assert chain([], 0) == []


def test_plan_appends_the_tail_after_the_parts() -> None:
    part = 10 * MIB
    up = Upload("k", "u", OLD, _parts((1, part, OLD)),
                tail=(_seg(0, 100), _seg(part - 5, part + 300), _seg(part + 300, part + 400)))
    result = plan(up, now=NOW, older_than=AGE, object_exists=False)
    assert result.action is Action.COMPLETE
    assert [p.number for p in result.used] == [1]
    assert [(p.start, p.end) for p in result.tail] == [(part, part + 300),
                                                      (part + 300, part + 400)]
    assert result.bytes == part + 400
    assert "400 bytes of tail segments" in result.reason


def test_plan_a_recording_shorter_than_a_part_is_its_tail() -> None:
    """No part yet when the host died: before RPO_SECONDS this was aborted as empty."""
    up = Upload("k", "u", OLD, (), tail=(_seg(0, 1000), _seg(1000, 2500)))
    result = plan(up, now=NOW, older_than=AGE, object_exists=False)
    assert result.action is Action.COMPLETE
    assert result.used == ()
    assert result.bytes == 2500


def test_a_fresh_segment_keeps_an_upload_live() -> None:
    up = Upload("k", "u", OLD, _parts((1, 10 * MIB, OLD)), tail=(_seg(0, 9, at=FRESH),))
    assert plan(up, now=NOW, older_than=AGE, object_exists=False).action is Action.SKIP_LIVE


def test_an_upload_without_parts_is_empty_whatever_its_streams_segments() -> None:
    """Seed 2001974: a stream's segments are the stream's, not each upload's (an upload
    whose CreateMultipartUpload answer was lost holds none of its bytes). One without parts
    whose segments do not start at byte 0 holds nothing: aborted (the segments stay), not
    left open for ever."""
    up = Upload("k", "u", OLD, (), tail=(_seg(50, 90),))
    result = plan(up, now=NOW, older_than=AGE, object_exists=False)
    assert result.action is Action.ABORT_EMPTY
    assert "left as they are" in result.reason


@pytest.mark.parametrize(("raw", "owners"), [
    (None, False),  # no document: the interrupted salvage publishes its own
    (b'{"status": "salvaged"}', False),  # a salvager's (this one's, written before a crash)
    # Racing seed 13000015: the owner's Complete of the same first parts went through and
    # it published; the salvage resumed from its marker must not relabel that object.
    (b'{"status": "complete"}', True),
    (b'{"status": "truncated"}', True),
    (b"not json", False),  # input, not truth: proves nothing
    (b'["status"]', False),
    (b'{"status": 7}', False),
    (b"[" * 200_000, False),  # nested past Python's depth: proves nothing, raises nothing
])
def test_an_owners_document_stops_a_resumed_salvage(raw: bytes | None, owners: bool) -> None:
    assert published_by_owner(raw) is owners


@pytest.mark.parametrize(("raw", "salvaged"), [
    (None, False),
    (b'{"status": "salvaged"}', True),  # racing 37/41: a salvager made the object
    (b'{"status": "complete"}', False),
    (b"{", False),  # input, not truth
    (b'{"status": ["salvaged"]}', False),
    (b'{"a":' * 100_000, False),
])
def test_a_salvagers_document_says_the_upload_was_taken(raw: bytes | None,
                                                        salvaged: bool) -> None:
    assert salvaged_document(raw) is salvaged
