"""core.resume as tables: how a stream resumes, without an event loop, a file or a store.
Rows named after a simulator seed are that seed's situation (tests/sim/known.py)."""

from __future__ import annotations

import pytest

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.core.ending import End, Status
from cefmp4.core.machine import Checkpoint, Checkpointed, Unexpected
from cefmp4.core.parts import PartSchedule
from cefmp4.core.resume import (
    Ask,
    Candidate,
    CannotRead,
    Done,
    FileGone,
    Holds,
    OnClaim,
    Opened,
    PartsRead,
    Reconciled,
    Recording,
    Resumed,
    ResumeObservation,
    Taken,
    Unknown,
    on_claim,
    plan_parts,
    recording,
    resuming,
    superseded,
    unknown_upload,
)
from cefmp4.storage import UploadedPart
from tests.support.machines import Script, drive

SCHEDULE = PartSchedule(10)  # 10-byte parts, 10,000 of them
R = Recording


def part(n: int, etag: str | None = None) -> PartRecord:
    return PartRecord(n, (n - 1) * 10, 10, etag or f"{n:032x}", "", 1.0)


def listed(n: int, etag: str | None = None, size: int = 10) -> UploadedPart:
    return UploadedPart(n, size, etag or f"{n:032x}")


@pytest.mark.parametrize(("remote", "known", "file_open", "kept", "cands", "mism", "miss"), [
    # Everything checkpointed is in S3 with the same ETag.
    ([listed(1), listed(2)], [part(1), part(2)], True, [1, 2], [], [], []),
    # A crash between UploadPart and its checkpoint: a candidate, adopted if the bytes match.
    ([listed(1), listed(2)], [part(1)], True, [1], [2], [], []),
    ([listed(1), listed(2)], [part(1)], False, [1], [], [], []),  # never without the file
    # A part re-sent with other bytes (S3 holds the later one): judged by the file again.
    ([listed(1, "f" * 32)], [part(1)], True, [], [1], [1], []),
    # S3 lost a checkpointed part: uploaded again.
    ([listed(1)], [part(1), part(2)], True, [1], [], [], [2]),
    # A short part (an interrupted finalize's tail) is never adopted: finalize redoes it.
    ([listed(1), listed(2, size=4)], [part(1)], True, [1], [], [], []),
    # Hostile answers: a part number outside the schedule is ignored, never a crash.
    ([listed(0), listed(-1), listed(10_001)], [], True, [], [], [], []),
])
def test_plan_parts(
    remote: list[UploadedPart], known: list[PartRecord], file_open: bool,
    kept: list[int], cands: list[int], mism: list[int], miss: list[int],
) -> None:
    plan = plan_parts(SCHEDULE, remote, known, file_open=file_open)
    assert [p.part_number for p in plan.kept] == kept
    assert [c.number for c in plan.candidates] == cands
    assert list(plan.mismatched) == mism
    assert list(plan.missing) == miss


def test_a_candidate_is_where_the_schedule_puts_it() -> None:
    [c] = plan_parts(SCHEDULE, [listed(3, "e" * 32)], [], file_open=True).candidates
    assert c == Candidate(3, 20, 10, "e" * 32)


@pytest.mark.parametrize(("parts", "here", "last", "first", "verdict"), [
    (0, False, None, None, R.IS_IT),  # nothing uploaded: nothing to compare
    (1, True, None, None, R.IS_IT),  # a one-part stream at its own path: trusted
    (1, False, None, None, R.ASK_LAST),
    (3, True, None, None, R.ASK_LAST),
    (3, True, True, None, R.IS_IT),  # appended to, or its header patched: the recording
    (3, False, True, None, R.IS_IT),  # renamed while down
    # 80950: cut inside the last part while nobody watched, at its own path.
    (3, True, False, None, R.REWRITTEN),
    (3, False, False, None, R.ASK_FIRST),
    (3, False, False, True, R.REWRITTEN),
    # 35582: deleted while down, its inode number given to a new file elsewhere.
    (3, False, False, False, R.REUSED),
])
def test_is_the_file_found_still_the_recording(
    parts: int, here: bool, last: bool | None, first: bool | None, verdict: Recording
) -> None:
    assert recording(parts=parts, here=here, holds_last=last, holds_first=first) is verdict


@pytest.mark.parametrize(("here", "body", "verdict"), [
    (True, None, R.ASK_BODY),  # its only part is the one a header patch changes: past it
    (True, True, R.IS_IT),  # its header patched, or appended to: the recording
    # 74393 / 14010533: another file given its inode number at its path while down.
    (True, False, R.REWRITTEN),
    (False, None, R.ASK_LAST),  # found elsewhere: its whole part, as before
])
def test_a_one_part_stream_is_judged_by_its_bytes_past_the_header(
    here: bool, body: bool | None, verdict: Recording
) -> None:
    assert recording(parts=1, here=here, body_known=True, holds_body=body) is verdict


def test_a_part_recorded_with_its_body_past_the_header_says_where_it_starts() -> None:
    from cefmp4.core.hashing import MIN_BODY_BYTES, PartDigest, header_window, record_past

    mib = 1024 * 1024
    assert header_window(1, 0, 5 * mib) == 5 * mib // 2  # its second half
    assert header_window(1, 0, 2 * MIN_BODY_BYTES) == MIN_BODY_BYTES
    assert header_window(1, 0, 2 * MIN_BODY_BYTES - 1) is None  # too short to judge by
    assert header_window(2, 8 * mib, 8 * mib) is None  # part 1 only
    record = PartDigest(1, None, 2, (mib, 0xABC)).record
    assert record_past(record) == (mib, 0xABC)
    assert record_past(PartDigest(1, None, 2).record) is None  # recorded before, or short
    assert record_past("ab" * 16) is None  # an MD5 record
    # A record is input: a body digest that does not parse proves nothing.
    for hostile in ("crc32c:00000001;pastx:00000001", "crc32c:00000001;past5:zz",
                    "crc32c:00000001;past0:00000001", "crc32c:00000001;past-1:0000000"):
        assert record_past(hostile) is None


def _record(**kw: object) -> StreamRecord:
    values: dict[str, object] = dict(
        stream_id="s", path="/w/a.mp4", rel_path="a.mp4", device=1, inode=2, bucket="b",
        key="p/s/a.mp4", part_size=10, max_parts=8, state=StreamState.ACTIVE,
        started_at=1.0, last_activity_at=1.0, upload_id=None)
    values.update(kw)
    return StreamRecord(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(("stream_id", "known", "verdict"), [
    (None, None, Unknown.LEAVE),  # not a key we make: the sweeper's grace period decides
    ("s", None, Unknown.REBUILD),  # the store lost the stream
    ("s", _record(), Unknown.ATTACH),  # created just before a crash, id not checkpointed
    ("s", _record(state=StreamState.FINALIZING), Unknown.ATTACH),
    ("s", _record(upload_id="u1"), Unknown.LEAVE),  # moved on: superseded decides
    ("s", _record(state=StreamState.COMPLETED), Unknown.LEAVE),
    ("s", _record(key="p/s/other.mp4"), Unknown.LEAVE),  # not this upload's key
])
def test_unknown_upload(stream_id: str | None, known: StreamRecord | None,
                        verdict: Unknown) -> None:
    assert unknown_upload("p/s/a.mp4", stream_id, known) is verdict


@pytest.mark.parametrize(("known", "age", "result"), [
    (None, 1e6, False),
    (_record(upload_id=None), 1e6, False),
    (_record(upload_id="u0"), 1e6, False),  # its own upload
    (_record(upload_id="u1"), 1e6, True),  # the stream moved on to u1
    (_record(upload_id="u1"), 10.0, False),  # young: maybe a peer's, not checkpointed yet
])
def test_superseded(known: StreamRecord | None, age: float, result: bool) -> None:
    assert superseded("u0", 1000.0, known, now=1000.0 + age, grace=60.0) is result


DONE = _record(state=StreamState.COMPLETED, final_size=100, final_mtime_ns=7)


@pytest.mark.parametrize(("latest", "running", "at_path", "verdict"), [
    (None, (), None, OnClaim.NEW),
    (DONE, (), (100, 7), OnClaim.UPLOADED),  # never uploaded again while unchanged
    (DONE, (), (101, 8), OnClaim.NEW),  # 1627: grown after Complete: a new stream
    (DONE, (), None, OnClaim.NEW),  # its path shows nothing (or could not be asked)
    (_record(state=StreamState.COMPLETED), (), (100, 7), OnClaim.NEW),  # a taken upload's
    (_record(state=StreamState.FAILED), (), None, OnClaim.NEW),
    (_record(), ("s",), None, OnClaim.RUNNING),
    (_record(state=StreamState.FINALIZING), (), None, OnClaim.RESUME),
    (_record(), ("other",), None, OnClaim.RESUME),
])
def test_on_claim(latest: StreamRecord | None, running: tuple[str, ...],
                  at_path: tuple[int, int] | None, verdict: OnClaim) -> None:
    assert on_claim(latest, running=running, at_path=at_path) is verdict


# --- resuming, as a state machine -------------------------------------------------------

USUAL: dict[str, ResumeObservation] = {
    "Open": Opened(here=True), "SayGone": Done(), "Bind": Done(),
    "GetParts": PartsRead(3, body_known=False), "Ask": Holds(True),
    "Reconcile": Reconciled(), "Checkpoint": Checkpointed(), "FinishKept": Done(),
    "MarkTaken": Done(),
}


def resume_run(answers: dict[str, list[ResumeObservation]]) -> tuple[list[str], Resumed]:
    script = Script(USUAL, answers)
    actions, resumed = drive(resuming(), script)
    assert script.done(), f"answers left over: {script.left}"
    return [type(a).__name__ for a in actions], resumed


@pytest.mark.parametrize(("answers", "expected", "resumed"), [
    # Appended to, or its header patched: the stream goes on with the file found.
    ({}, ["Open", "Bind", "GetParts", "Ask", "Reconcile"], Resumed.GOES_ON),
    ({"GetParts": [PartsRead(0, body_known=False)]}, ["Open", "Bind", "GetParts", "Reconcile"],
     Resumed.GOES_ON),
    # 80950: cut inside the last part while nobody watched: the truncated end, checkpointed
    # before the kept ending acts on it (2001351), and the file is a new stream.
    ({"Ask": [Holds(False)]},
     ["Open", "Bind", "GetParts", "Ask", "SayGone", "Reconcile", "Checkpoint", "FinishKept"],
     Resumed.REUSED),
    # 35582: found elsewhere holding none of its parts: another file with its inode number.
    ({"Open": [Opened(here=False)], "Ask": [Holds(False), Holds(False)]},
     ["Open", "Bind", "GetParts", "Ask", "Ask", "SayGone", "Reconcile", "FinishKept"],
     Resumed.REUSED),
    # 74393 / 14010533: a one-part stream at its path, a stranger's second half.
    ({"GetParts": [PartsRead(1, body_known=True)], "Ask": [Holds(False)]},
     ["Open", "Bind", "GetParts", "Ask", "SayGone", "Reconcile", "Checkpoint", "FinishKept"],
     Resumed.REUSED),
    # Its file gone (ENOENT, or another file at its place): it ends here with what S3 holds.
    ({"Open": [FileGone()]}, ["Open", "SayGone", "Bind", "GetParts", "Reconcile", "FinishKept"],
     Resumed.ENDED),
    ({"Open": [FileGone()], "Reconcile": [Taken()]},
     ["Open", "SayGone", "Bind", "GetParts", "Reconcile", "MarkTaken"], Resumed.ENDED),
    # A salvager made its object: recorded salvaged, and the file's bytes a new stream.
    ({"Reconcile": [Taken()]}, ["Open", "Bind", "GetParts", "Ask", "Reconcile", "MarkTaken"],
     Resumed.REUSED),
    ({"Ask": [Holds(False)], "Reconcile": [Taken()]},
     ["Open", "Bind", "GetParts", "Ask", "SayGone", "Reconcile", "MarkTaken"], Resumed.REUSED),
    # Unreadable now: nothing is written, it stays unfinished.
    ({"Open": [CannotRead()]}, ["Open"], Resumed.UNREADABLE),
])
def test_resuming_a_stream(
    answers: dict[str, list[ResumeObservation]], expected: list[str], resumed: Resumed
) -> None:
    assert resume_run(answers) == (expected, resumed)


def test_a_resumed_stream_judged_rewritten_is_checkpointed_truncated() -> None:
    actions, _ = drive(resuming(), Script(USUAL, {"Ask": [Holds(False)]}))
    assert Checkpoint(End.of(Status.TRUNCATED)) in actions
    assert [a.question for a in actions if isinstance(a, Ask)] == [Recording.ASK_LAST]


def test_an_answer_that_does_not_answer_resuming_is_a_bug_of_the_shell() -> None:
    with pytest.raises(Unexpected):
        resume_run({"GetParts": [Holds(True)]})
