"""core.ending as tables: how a recording ends and what its object is, without an event loop,
a file or a store. Rows named after a simulator seed are that seed's situation (known.py)."""

from __future__ import annotations

import pytest

from cefmp4.checkpoint import PartRecord
from cefmp4.core.ending import (
    CompletedBy,
    End,
    Fate,
    Found,
    Kept,
    ObjectAt,
    Resume,
    Status,
    end_of,
    fate,
    judge_object,
    keeps_what_s3_holds,
    kept_needs_head,
    kept_object,
    truncated,
    when_upload_gone,
)
from cefmp4.core.hashing import multipart_etag
from cefmp4.core.tail import Segment
from cefmp4.storage import ObjectInfo

PARTS = [PartRecord(n, (n - 1) * 10, 10, f"{n:032x}", "", 1.0) for n in (1, 2, 3, 5)]
PLAIN = "d41d8cd98f00b204e9800998ecf8427e"
S, B = Status, CompletedBy


def multipart(parts: list[PartRecord]) -> ObjectInfo:
    return ObjectInfo(sum(p.size for p in parts), multipart_etag([p.etag for p in parts]))


# --- End ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "judged", "end"), [
    (S.COMPLETE, None, End(S.COMPLETE, B.IDLE_TIMEOUT)),
    (S.COMPLETE, B.WRITER_CLOSED, End(S.COMPLETE, B.WRITER_CLOSED)),
    (S.COMPLETE, B.UPLOAD_COMMAND, End(S.COMPLETE, B.UPLOAD_COMMAND)),
    # An ending that lost bytes is named by its status, whatever completed the stream.
    (S.TRUNCATED, B.WRITER_CLOSED, End(S.TRUNCATED, B.TRUNCATED, "truncated")),
    (S.SOURCE_DELETED, B.IDLE_TIMEOUT, End(S.SOURCE_DELETED, B.SOURCE_DELETED, "deleted")),
    (S.SALVAGED, None, End(S.SALVAGED, B.SALVAGE)),
])
def test_end_of_a_status(status: Status, judged: CompletedBy | None, end: End) -> None:
    assert End.of(status, judged) == end


@pytest.mark.parametrize(("status", "by", "end"), [
    # 941/904/891: a truncated end checkpointed before a crash stays truncated.
    ("truncated", "idle_timeout", End(S.TRUNCATED, B.TRUNCATED, "truncated")),
    ("truncated", None, End(S.TRUNCATED, B.TRUNCATED, "truncated")),
    ("source_deleted", "source_deleted", End(S.SOURCE_DELETED, B.SOURCE_DELETED, "deleted")),
    ("complete", "writer_closed", End(S.COMPLETE, B.WRITER_CLOSED)),
    ("complete", None, End(S.COMPLETE, B.IDLE_TIMEOUT)),  # before completed_by existed
    (None, None, End(S.COMPLETE, B.IDLE_TIMEOUT)),
    ("complete", "a-newer-version's", End(S.COMPLETE, B.IDLE_TIMEOUT)),
    ("nonsense", "writer_closed", End(S.COMPLETE, B.WRITER_CLOSED)),
])
def test_the_end_a_checkpoint_holds(status: str | None, by: str | None, end: End) -> None:
    assert End.recorded(status, by) == end


def test_the_spellings_are_the_metadata_values() -> None:
    assert {s.value for s in Status} == {"complete", "truncated", "source_deleted", "salvaged"}
    assert {b.value for b in CompletedBy} == {
        "idle_timeout", "writer_closed", "hold_expired", "upload_command", "truncated",
        "source_deleted", "salvage"}


# --- the file ----------------------------------------------------------------------------

@pytest.mark.parametrize(("size", "extent", "cut"), [
    (100, 100, False), (150, 100, False), (99, 100, True), (0, 10, True), (0, 0, False),
])
def test_truncated_is_uploaded_bytes_gone(size: int, extent: int, cut: bool) -> None:
    assert truncated(size, extent) is cut  # 41106/41403: the one test, wherever asked


@pytest.mark.parametrize(("links", "at_path", "result"), [
    (1, (1, 7), Fate.LINKED),  # still named (here, or renamed: a rename keeps the stream)
    (1, None, Fate.LINKED),
    (2, (1, 9), Fate.LINKED),  # a hard link elsewhere keeps it too
    (0, None, Fate.DELETED),
    (0, (1, 7), Fate.DELETED),  # only it (seen through a stale name cache) at its path
    (0, (1, 9), Fate.REPLACED),
    (0, (2, 7), Fate.REPLACED),  # another device: another file
])
def test_fate_of_the_held_file(
    links: int, at_path: tuple[int, int] | None, result: Fate
) -> None:
    assert fate(links, (1, 7), at_path) is result


@pytest.mark.parametrize(("cut", "what", "judged", "end"), [
    (False, Fate.LINKED, B.WRITER_CLOSED, End(S.COMPLETE, B.WRITER_CLOSED)),
    (False, Fate.LINKED, None, End(S.COMPLETE, B.IDLE_TIMEOUT)),
    (True, Fate.LINKED, B.IDLE_TIMEOUT, End(S.TRUNCATED, B.TRUNCATED, "truncated")),
    # 1627/4050/30927: replaced → "truncated" with reason "replaced"; the held file's bytes.
    (False, Fate.REPLACED, B.IDLE_TIMEOUT, End(S.TRUNCATED, B.TRUNCATED, "replaced")),
    (False, Fate.DELETED, B.IDLE_TIMEOUT, End(S.SOURCE_DELETED, B.SOURCE_DELETED, "deleted")),
    (True, Fate.DELETED, None, End(S.TRUNCATED, B.TRUNCATED, "truncated")),  # 3681
])
def test_end_of_a_followed_stream(
    cut: bool, what: Fate, judged: CompletedBy | None, end: End
) -> None:
    assert end_of(truncated_now=cut, fate=what, judged=judged) == end


# --- the object at the key ---------------------------------------------------------------

@pytest.mark.parametrize(("head", "found", "made"), [
    (None, Found.ABSENT, 0),
    (ObjectInfo(0, PLAIN), Found.EMPTY, 0),
    (multipart(PARTS[:2]), Found.OURS, 2),  # an object of the first parts, past a gap
    (multipart(PARTS[:3]), Found.OURS, 3),  # 310: parts 1-3 of 1, 2, 3, 5
    (multipart(PARTS), Found.FOREIGN, 0),  # 1, 2, 3, 5 is not a Complete we make
    (multipart([PartRecord(1, 0, 10, "f" * 32, "", 1.0), PARTS[1]]), Found.FOREIGN, 0),
    (ObjectInfo(20, "abc-9"), Found.FOREIGN, 0),  # more parts than we hold
    (ObjectInfo(20, "abc-x"), Found.FOREIGN, 0),  # a dash, but no count
    (ObjectInfo(30, PLAIN), Found.OURS, 3),  # a plain ETag is matched by size
    (ObjectInfo(25, PLAIN), Found.FOREIGN, 0),
])
def test_judge_object(head: ObjectInfo | None, found: Found, made: int) -> None:
    at = judge_object(head, PARTS)
    assert at.found is found
    assert list(at.parts) == PARTS[:made]


def test_salvage_evidence_makes_our_parts_a_salvagers_object() -> None:
    assert judge_object(multipart(PARTS[:3]), PARTS, salvaged=True).found is Found.SALVAGED
    assert judge_object(None, PARTS, salvaged=True).found is Found.ABSENT
    assert not judge_object(multipart(PARTS[:3]), PARTS, salvaged=True).made_of_all(PARTS[:3])


def test_a_complete_is_confirmed_only_by_all_its_parts() -> None:
    at = judge_object(multipart(PARTS[:3]), PARTS)
    assert at.made_of_all(PARTS[:3])
    assert not at.made_of_all(PARTS[:2])
    assert not judge_object(None, PARTS).made_of_all([])


@pytest.mark.parametrize(("found", "resuming", "finalizing", "resume"), [
    (Found.OURS, True, True, Resume.ADOPT),  # 310: completed before the crash, confirmed
    (Found.OURS, False, True, Resume.STANDS),  # a running stream never restarts over it
    (Found.ABSENT, True, True, Resume.RESTART),
    (Found.ABSENT, False, False, Resume.RESTART),
    (Found.ABSENT, True, False, Resume.RESTART),
    # 9252/54164: the empty recording's object, written before a crash.
    (Found.EMPTY, True, True, Resume.RESTART),
    (Found.EMPTY, False, True, Resume.STANDS),
    # Salvaged by another party while the owner was gone (§2.19): never overwritten.
    (Found.FOREIGN, True, True, Resume.TAKEN),  # parts plus tail segments
    (Found.FOREIGN, False, True, Resume.TAKEN),
    (Found.OURS, True, False, Resume.TAKEN),  # the parts alone, before we ever finalized
    (Found.OURS, False, False, Resume.TAKEN),
    (Found.FOREIGN, False, False, Resume.TAKEN),
    (Found.EMPTY, False, False, Resume.TAKEN),
    # 37/41 (racing): the owner's own first parts, completed by a salvager (its metadata).
    (Found.SALVAGED, True, True, Resume.TAKEN),
    (Found.SALVAGED, False, True, Resume.TAKEN),
])
def test_when_the_upload_is_gone(
    found: Found, resuming: bool, finalizing: bool, resume: Resume
) -> None:
    parts = tuple(PARTS[:1]) if found is Found.OURS else ()
    at = ObjectAt(found, parts)
    assert when_upload_gone(at, resuming=resuming, finalizing=finalizing) is resume


# --- ending with what S3 holds -----------------------------------------------------------

COMPLETE_END = End(S.COMPLETE, B.IDLE_TIMEOUT)
TRUNC = End.of(S.TRUNCATED)
GONE = End.of(S.SOURCE_DELETED)
RUN = tuple(PARTS[:3])
NO_BYTES = "the file lost its bytes before any part was uploaded"


@pytest.mark.parametrize(("end", "parts", "asks"), [
    (COMPLETE_END, PARTS, True),  # was Complete made before the file went away?
    (TRUNC, PARTS, False),
    (TRUNC, [], True),  # nothing uploaded: is the empty recording's object there?
    (GONE, [PARTS[1]], True),  # no contiguous run from part 1 is nothing uploaded
])
def test_kept_needs_head(end: End, parts: list[PartRecord], asks: bool) -> None:
    assert kept_needs_head(end, parts) is asks


@pytest.mark.parametrize(("end", "parts", "found", "file_open", "plan"), [
    # 300: an idle end checkpointed, a crash, the file deleted while down: not "complete".
    (COMPLETE_END, PARTS, Found.ABSENT, False, Kept(GONE, Kept.COMPLETE, RUN)),
    (COMPLETE_END, PARTS, Found.ABSENT, True, Kept(TRUNC, Kept.COMPLETE, RUN)),
    # Completed before a crash: that object stands (Complete is confirmed by HeadObject).
    (COMPLETE_END, PARTS, Found.OURS, True, Kept(COMPLETE_END, Kept.COMPLETE, RUN)),
    (TRUNC, PARTS, None, True, Kept(TRUNC, Kept.COMPLETE, RUN)),
    (GONE, PARTS, None, False, Kept(GONE, Kept.COMPLETE, RUN)),
    # 9252/11305: an empty recording's object written, a crash, the file gone: published.
    (GONE, [], Found.EMPTY, False, Kept(GONE, Kept.PUBLISH_EMPTY)),
    # 54164: the same with the file grown while down: parts since are a new stream's.
    (COMPLETE_END, PARTS, Found.EMPTY, True, Kept(COMPLETE_END, Kept.PUBLISH_EMPTY)),
    (TRUNC, [], Found.ABSENT, True, Kept(TRUNC, Kept.FAIL, why=NO_BYTES)),
    (COMPLETE_END, [], Found.ABSENT, False, Kept(GONE, Kept.FAIL, why=NO_BYTES)),
])
def test_kept_object(
    end: End, parts: list[PartRecord], found: Found | None, file_open: bool, plan: Kept
) -> None:
    at = None if found is None else judge_object(
        {Found.ABSENT: None, Found.EMPTY: ObjectInfo(0, PLAIN),
         Found.OURS: multipart(list(RUN))}[found], parts)
    assert kept_object(end, parts, at, file_open=file_open) == plan


def _seg(start: int, end: int) -> Segment:
    return Segment(start, end, f"t/{start:016x}-{end:016x}")


@pytest.mark.parametrize(("parts", "segments", "action", "tail"), [
    # The segments that continue the run are the object's last part (RPO_SECONDS, §2.20).
    (PARTS, [_seg(30, 36), _seg(36, 39)], Kept.COMPLETE, [(30, 36), (36, 39)]),
    (PARTS, [_seg(25, 38)], Kept.COMPLETE, [(30, 38)]),  # only what the parts lack
    (PARTS, [_seg(10, 20)], Kept.COMPLETE, []),  # all inside the parts
    (PARTS, [_seg(31, 40)], Kept.COMPLETE, []),  # a gap: what follows it cannot be placed
    # Nothing but segments: the recording's bytes S3 holds are the segments.
    ([], [_seg(0, 7), _seg(7, 9)], Kept.COMPLETE, [(0, 7), (7, 9)]),
    ([], [_seg(3, 9)], Kept.FAIL, []),
])
def test_kept_object_with_tail_segments(
    parts: list[PartRecord], segments: list[Segment], action: str, tail: list[tuple[int, int]]
) -> None:
    plan = kept_object(GONE, parts, judge_object(None, parts), file_open=False,
                       segments=segments)
    assert plan.action == action
    assert [(p.start, p.end) for p in plan.tail] == tail
    assert plan.tail_bytes == sum(e - s for s, e in tail)


@pytest.mark.parametrize(("end", "cut", "resumed", "keeps"), [
    (End.of(S.COMPLETE), False, False, False),  # the verified file
    (End.of(S.COMPLETE), True, False, True),  # truncated while finalize watched
    (End.of(S.COMPLETE), False, True, False),  # 941: an idle end resumed: verified again
    (TRUNC, False, True, True),  # 891: a truncated end resumed is never 'complete'
    (GONE, False, True, True),
    # Replaced while followed: the held descriptor still has every byte (1627, 4050).
    (End(S.TRUNCATED, B.TRUNCATED, "replaced"), False, False, False),
    (GONE, False, False, False),  # deleted while followed: read to its last byte
])
def test_keeps_what_s3_holds(end: End, cut: bool, resumed: bool, keeps: bool) -> None:
    assert keeps_what_s3_holds(end, truncated_now=cut, resumed=resumed) is keeps


@pytest.mark.parametrize(("parts", "segments", "fills", "tail"), [
    # Part 4 missing, part 5 there (PARTS is 1, 2, 3, 5): segments covering [30, 40) fill it.
    (PARTS, [_seg(30, 40), _seg(50, 55)], [(4, [(30, 40)])], [(50, 55)]),
    (PARTS, [_seg(28, 35), _seg(35, 44)], [(4, [(30, 35), (35, 40)])], []),  # clipped at 40
    (PARTS, [_seg(30, 39)], [], [(30, 39)]),  # does not reach part 5: only a tail
    (PARTS, [_seg(31, 40)], [], []),  # does not start where part 3 ends
])
def test_kept_object_fills_a_lost_part_from_segments(
    parts: list[PartRecord], segments: list[Segment],
    fills: list[tuple[int, list[tuple[int, int]]]], tail: list[tuple[int, int]],
) -> None:
    plan = kept_object(GONE, parts, None, file_open=False, segments=segments)
    assert plan.action == Kept.COMPLETE
    assert [(f.number, [(p.start, p.end) for p in f.pieces]) for f in plan.fills] == fills
    assert [(p.start, p.end) for p in plan.tail] == tail
    used = [p.part_number for p in plan.parts]
    assert used == ([1, 2, 3, 5] if fills else [n for n in (1, 2, 3) if n in
                                                 {p.part_number for p in parts}])


@pytest.mark.parametrize(("segments", "fills", "tail"), [
    # Parts 3 and 4 missing (both in flight when the file was cut), part 5 there: segments
    # over both fill them, split evenly, and part 5 stays in (the review of 34c351d).
    ([_seg(20, 40)], [(3, [(20, 30)]), (4, [(30, 40)])], []),
    ([_seg(20, 33), _seg(33, 40), _seg(50, 52)], [(3, [(20, 30)]), (4, [(30, 33), (33, 40)])],
     [(50, 52)]),
    ([_seg(20, 39)], [], [(20, 39)]),  # short of part 5: only a tail after part 2
])
def test_kept_object_fills_several_lost_parts(
    segments: list[Segment], fills: list[tuple[int, list[tuple[int, int]]]],
    tail: list[tuple[int, int]],
) -> None:
    parts = [*PARTS[:2], PARTS[3]]  # 1, 2 and 5 (at offset 40)
    plan = kept_object(GONE, parts, None, file_open=False, segments=segments)
    assert [(f.number, [(p.start, p.end) for p in f.pieces]) for f in plan.fills] == fills
    assert [(p.start, p.end) for p in plan.tail] == tail
    assert [p.part_number for p in plan.parts] == ([1, 2, 5] if fills else [1, 2])
