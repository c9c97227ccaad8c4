"""core.kept as tables: the ending with what S3 holds, driven by scripted observations, no
event loop, file or store. Each row is the actions the machine asks for, in order, given
the answers, and its outcome. Rows named after a simulator seed are that seed's situation."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from cefmp4.checkpoint import PartRecord
from cefmp4.core.ending import CompletedBy, End, Found, ObjectAt, Status
from cefmp4.core.kept import (
    Abort,
    Aborted,
    Action,
    Complete,
    Completed,
    Fail,
    Head,
    HeadSaid,
    ListParts,
    ListSegments,
    Observation,
    Outcome,
    PartsListed,
    PieceSent,
    Publish,
    PublishEmpty,
    SegmentsListed,
    SendPiece,
    Taken,
    UploadGone,
    kept_ending,
)
from cefmp4.core.machine import Checkpoint, Checkpointed, Unexpected
from cefmp4.core.tail import Segment
from tests.support.machines import drive

P = [PartRecord(n, (n - 1) * 10, 10, f"{n:032x}", "", 1.0) for n in (1, 2, 3, 5)]
RUN = tuple(P[:3])
TRUNC = End.of(Status.TRUNCATED)
GONE = End.of(Status.SOURCE_DELETED)
IDLE = End.of(Status.COMPLETE, CompletedBy.IDLE_TIMEOUT)
S3_ACTIONS = (Head, ListSegments, ListParts, Abort, SendPiece, Complete)


def _seg(start: int, end: int) -> Segment:
    return Segment(start, end, f"t/{start:016x}-{end:016x}")


def _sent(number: int, start: int, end: int) -> PartRecord:
    return PartRecord(number, start, end - start, f"{number:031x}f", "", 2.0)


def run(
    end: End, parts: Sequence[PartRecord], answers: Sequence[Observation], *,
    finalizing: bool = True, file_open: bool = False, has_upload: bool = True,
    segments: bool = False, running_sha: bool = False,
) -> tuple[list[Action], Outcome]:
    """Drive the machine: each action is answered by the next of ``answers``."""
    machine = kept_ending(end, parts, finalizing=finalizing, file_open=file_open,
                          has_upload=has_upload, segments=segments, running_sha=running_sha)
    left = iter(answers)
    got = drive(machine, lambda _action: next(left))
    assert next(left, None) is None, "answers left over"
    return got


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


def test_a_truncated_stream_completes_its_contiguous_parts_with_the_running_sha() -> None:
    actions, outcome = run(TRUNC, P, [Checkpointed(), Completed()], finalizing=False,
                           running_sha=True)
    assert actions == [Checkpoint(TRUNC), Complete(RUN)]
    assert outcome == Publish(TRUNC, RUN, running_sha=True, tail_bytes=None)


def test_a_resumed_finalizing_end_is_not_checkpointed_again() -> None:
    actions, outcome = run(TRUNC, P, [Completed()])
    assert actions == [Complete(RUN)]
    assert isinstance(outcome, Publish)
    assert not outcome.running_sha


@pytest.mark.parametrize(("found", "file_open", "answers", "expected", "outcome"), [
    # 300: an idle end checkpointed, the file deleted while down, nothing at the key: the
    # object is what S3 held, and its new end is checkpointed before the Complete.
    (Found.ABSENT, False, [Checkpointed(), Completed()],
     ["Head", "Checkpoint", "Complete"], Publish(GONE, RUN, running_sha=False, tail_bytes=None)),
    # 310: completed before a crash: that object stands, confirmed by the Complete.
    (Found.OURS, True, [Completed()], ["Head", "Complete"],
     Publish(IDLE, RUN, running_sha=False, tail_bytes=None)),
    # 54164: the empty recording's object, the file grown while down and still open: the
    # parts since are its next stream's, so the upload goes without a listing.
    (Found.EMPTY, True, [Aborted()], ["Head", "Abort"], PublishEmpty(IDLE)),
])
def test_an_idle_end_finished_with_what_s3_holds(
    found: Found, file_open: bool, answers: list[Observation], expected: list[str],
    outcome: Outcome,
) -> None:
    at = ObjectAt(found, RUN if found is Found.OURS else ())
    actions, got = run(IDLE, P, [HeadSaid(at), *answers], file_open=file_open)
    assert kinds(actions) == expected
    assert got == outcome


@pytest.mark.parametrize(("listed", "expected", "why"), [
    # Nothing checkpointed and S3 lists nothing: the upload goes, the stream fails.
    (0, ["Head", "ListParts", "Abort"], "the file lost its bytes before any part was uploaded"),
    # S3 holds parts the checkpoint never learnt (its writes failing): never aborted on a
    # checkpoint's word; left open for salvage, and the error says so.
    (2, ["Head", "ListParts"], "the file lost its bytes before any part was uploaded; its "
     "upload holds 2 parts the checkpoint does not know as part 1 and is left open for "
     "salvage"),
])
def test_nothing_to_keep_aborts_only_an_upload_s3_lists_empty(
    listed: int, expected: list[str], why: str
) -> None:
    answers: list[Observation] = [HeadSaid(ObjectAt(Found.ABSENT)), PartsListed(listed)]
    actions, outcome = run(TRUNC, [], [*answers, *([Aborted()] if listed == 0 else [])])
    assert kinds(actions) == expected
    assert outcome == Fail(why, release=listed > 0)


def test_without_an_upload_nothing_is_listed_or_aborted() -> None:
    actions, outcome = run(TRUNC, [], [HeadSaid(ObjectAt(Found.ABSENT))], has_upload=False)
    assert kinds(actions) == ["Head"]
    assert isinstance(outcome, Fail)


@pytest.mark.parametrize(("listed", "expected"), [
    (0, ["Head", "ListParts", "Abort"]),
    (3, ["Head", "ListParts"]),  # 9252 with later parts: left for salvage, not destroyed
])
def test_an_empty_objects_stream_with_its_file_gone(listed: int, expected: list[str]) -> None:
    answers: list[Observation] = [HeadSaid(ObjectAt(Found.EMPTY)), PartsListed(listed)]
    actions, outcome = run(GONE, [], [*answers, *([Aborted()] if listed == 0 else [])])
    assert kinds(actions) == expected
    assert outcome == PublishEmpty(GONE)


def test_tail_segments_are_the_last_part() -> None:
    """RPO_SECONDS (§2.20): the segments that continue the parts are sent as part 4."""
    tail = _sent(4, 30, 38)
    actions, outcome = run(TRUNC, P, [SegmentsListed((_seg(30, 36), _seg(36, 38))),
                                      PieceSent(tail), Completed()], segments=True,
                           running_sha=True)
    assert kinds(actions) == ["ListSegments", "SendPiece", "Complete"]
    assert isinstance(actions[1], SendPiece)
    assert actions[1].number == 4
    assert actions[2] == Complete((*RUN, tail))
    # The SHA built while reading covers the parts only: the shell reads the object.
    assert outcome == Publish(TRUNC, (*RUN, tail), running_sha=False, tail_bytes=8)


def test_a_lost_part_is_filled_then_the_tail_follows() -> None:
    """2010391/2029967/11001459: part 4 missing, part 5 there, segments over both."""
    four, six = _sent(4, 30, 40), _sent(6, 50, 55)
    actions, outcome = run(GONE, P, [SegmentsListed((_seg(30, 40), _seg(50, 55))),
                                     PieceSent(four), PieceSent(six), Completed()],
                           segments=True)
    numbers = [a.number for a in actions if isinstance(a, SendPiece)]
    assert numbers == [4, 6]
    assert actions[-1] == Complete((*RUN, four, P[3], six))
    assert outcome == Publish(GONE, (*RUN, four, P[3], six), running_sha=False, tail_bytes=15)


@pytest.mark.parametrize(("at", "outcome"), [
    # 2022346: this stream's own Complete of its first parts went through before a crash.
    (ObjectAt(Found.OURS, RUN), Publish(TRUNC, RUN, running_sha=False, tail_bytes=None)),
    # Racing 37/41: a salvager made it: its object and metadata stand.
    (ObjectAt(Found.SALVAGED), Taken()),
    (ObjectAt(Found.FOREIGN), Taken()),
    # 2000380: S3 purged the upload; nothing at the key.
    (ObjectAt(Found.ABSENT), Fail("S3 lost the uploaded parts and the file lost its bytes")),
    (ObjectAt(Found.EMPTY), Fail("an object not made of the checkpointed parts is already "
                                 "at the key")),
])
def test_no_such_upload_at_the_complete(at: ObjectAt, outcome: Outcome) -> None:
    actions, got = run(TRUNC, P, [UploadGone(), HeadSaid(at)])
    assert actions == [Complete(RUN), Head(RUN)]
    assert got == outcome


def test_no_such_upload_while_sending_a_piece_asks_what_stands() -> None:
    """2001690: the tail part sent to an upload S3 had purged."""
    actions, outcome = run(TRUNC, P, [SegmentsListed((_seg(30, 36),)), UploadGone(),
                                      HeadSaid(ObjectAt(Found.ABSENT))], segments=True)
    assert kinds(actions) == ["ListSegments", "SendPiece", "Head"]
    assert actions[-1] == Head(RUN)
    assert isinstance(outcome, Fail)


def test_an_own_complete_that_took_the_tail_part_counts_its_bytes() -> None:
    tail = _sent(4, 30, 36)
    actions, outcome = run(TRUNC, P, [SegmentsListed((_seg(30, 36),)), PieceSent(tail),
                                      UploadGone(), HeadSaid(ObjectAt(Found.OURS,
                                                                      (*RUN, tail)))],
                           segments=True)
    assert kinds(actions) == ["ListSegments", "SendPiece", "Complete", "Head"]
    assert outcome == Publish(TRUNC, (*RUN, tail), running_sha=False, tail_bytes=6)


# --- checkpoint first, and crash points ----------------------------------------------------


SCRIPTS: list[tuple[End, list[PartRecord], list[Observation], dict[str, bool]]] = [
    (TRUNC, P, [Checkpointed(), Completed()], {"finalizing": False}),
    (IDLE, P, [HeadSaid(ObjectAt(Found.ABSENT)), Checkpointed(), Completed()], {}),
    (IDLE, P, [Checkpointed(), HeadSaid(ObjectAt(Found.ABSENT)), Checkpointed(), Completed()],
     {"finalizing": False}),
    (TRUNC, [], [Checkpointed(), HeadSaid(ObjectAt(Found.ABSENT)), PartsListed(0), Aborted()],
     {"finalizing": False}),
]


@pytest.mark.parametrize(("end", "parts", "answers", "flags"), SCRIPTS)
def test_every_new_end_is_checkpointed_before_any_request_acts_on_it(
    end: End, parts: list[PartRecord], answers: list[Observation], flags: dict[str, bool]
) -> None:
    actions, outcome = run(end, parts, answers, **flags)
    checkpointed = end if flags.get("finalizing", True) else None
    for action in actions:
        if isinstance(action, Checkpoint):
            checkpointed = action.end
        elif isinstance(action, (SendPiece, Complete, Abort)):
            assert checkpointed is not None
    final = getattr(outcome, "end", None)
    assert final is None or final == checkpointed


@pytest.mark.parametrize("crash_after", [1, 2])
def test_a_crash_after_any_step_resumes_to_the_same_outcome(crash_after: int) -> None:
    """300 with a crash: the restart finds the end its last checkpoint wrote (finalizing),
    asks again, and ends the same way; nothing acted on an end not yet checkpointed."""
    first, outcome = run(IDLE, P, [Checkpointed(), HeadSaid(ObjectAt(Found.ABSENT)),
                                   Checkpointed(), Completed()], finalizing=False)
    ends = [a.end for a in first[:crash_after + 1] if isinstance(a, Checkpoint)]
    resumed_end = ends[-1]
    answers: list[Observation] = ([Completed()] if resumed_end == GONE
                                  else [HeadSaid(ObjectAt(Found.ABSENT)), Checkpointed(),
                                        Completed()])
    _, again = run(resumed_end, P, answers)
    assert again == outcome


def test_an_answer_that_does_not_fit_is_a_shell_bug() -> None:
    with pytest.raises(Unexpected):
        run(TRUNC, P, [Aborted()])


def test_s3_actions_are_only_the_listed_ones() -> None:
    actions, _ = run(TRUNC, P, [SegmentsListed((_seg(30, 36),)), PieceSent(_sent(4, 30, 36)),
                                Completed()], segments=True)
    assert all(isinstance(a, (Checkpoint, *S3_ACTIONS)) for a in actions)
