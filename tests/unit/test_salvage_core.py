"""core.salvage: what becomes of an upload nobody finishes (SPEC §2.19), from tables."""

from __future__ import annotations

import pytest

from cefmp4.core.salvage import MIN_PART_BYTES, Action, Part, Upload, last_activity, plan

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
