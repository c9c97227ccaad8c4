"""core.verified as tables: the ending with the verified file, driven by scripted
observations, no event loop, file or store. Each row gives the answers that differ from an
uneventful ending (per action, in order), the actions the machine asks for and its
outcome. Rows named after a simulator seed are that seed's situation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from cefmp4.checkpoint import PartRecord
from cefmp4.core.ending import CompletedBy, End, Status
from cefmp4.core.hashing import FileDigest, PartDigest, RangeDigest
from cefmp4.core.identity import Fingerprint
from cefmp4.core.machine import Checkpoint, Checkpointed, Unexpected
from cefmp4.core.verified import (
    Action,
    Changed,
    Complete,
    Completed,
    Digest,
    Digested,
    Done,
    Drained,
    FateSeen,
    Keep,
    Looked,
    NotQuick,
    ObjectThere,
    Observation,
    Outcome,
    Publish,
    Resend,
    Shrunk,
    UploadGone,
    Verified,
    stale_parts,
    verified,
    verified_ending,
)
from tests.support.machines import Script, drive

FP: Fingerprint = (20, 1_000, 1_000)
LATER: Fingerprint = (20, 2_000, 2_000)
HELD = (1, 7)


def _part(n: int, crc: int) -> PartRecord:
    return PartRecord(n, (n - 1) * 10, 10, f"{n:032x}", PartDigest(crc).record, 1.0)


def _digest(crcs: Sequence[int], *, trusted: bool = True, fp: Fingerprint = FP) -> Digest:
    ranges = [RangeDigest(n, (n - 1) * 10, 10, PartDigest(c)) for n, c in enumerate(crcs, 1)]
    return Digest(fp, trusted, FileDigest(10 * len(crcs), "ab" * 32, ranges), 1_000)


P = {1: _part(1, 11), 2: _part(2, 12)}
PARTS = (P[1], P[2])
D = _digest([11, 12])
EMPTY = _digest([])
IDLE = End.of(Status.COMPLETE, CompletedBy.IDLE_TIMEOUT)
TRUNC = End.of(Status.TRUNCATED)
MADE = Verified(PARTS, D.result.sha256, D.mtime_ns, FP)


def looked(size: int = 20, fp: Fingerprint = FP, extent: int = 20,
           parts: Mapping[int, PartRecord] = P) -> Looked:
    return Looked(size, fp, extent, dict(parts))


SHRUNK = looked(size=5, fp=(5, 3_000, 3_000))

# What an uneventful ending is answered: the file linked and unchanged, nothing quick, no
# predigest, every part and the Complete through.
USUAL: dict[str, Observation] = {
    "Checkpoint": Checkpointed(), "CancelBeyond": Done(), "Settle": Drained(),
    "LookFate": FateSeen(1, HELD, HELD), "QuickStart": NotQuick(),
    "TakePredigest": Digested(None), "DigestNow": Digested(D), "Look": looked(),
    "Resend": Done(), "Drain": Drained(), "PutEmpty": Completed(), "Complete": Completed(),
    "Restart": Done(),
}


def run(
    answers: Mapping[str, Sequence[Observation]] | None = None, *, resumed: bool = False,
    truncated_now: bool = False, recorded: End = IDLE,
    judged: CompletedBy | None = CompletedBy.IDLE_TIMEOUT,
) -> tuple[list[Action], Outcome]:
    """Drive the machine: an action is answered by the next of ``answers`` for its kind,
    else as ``USUAL``. Every scripted answer must be used."""
    script = Script(USUAL, answers)
    got = drive(verified_ending(resumed=resumed, truncated_now=truncated_now,
                                recorded=recorded, judged=judged), script)
    assert script.done(), f"answers left over: {script.left}"
    return got


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


VERIFY = ["TakePredigest", "DigestNow", "Look", "Resend", "Drain", "Look"]
START = ["Settle", "LookFate", "Checkpoint", "QuickStart"]


# --- the end, decided and checkpointed first ------------------------------------------------


@pytest.mark.parametrize(("fate", "end"), [
    (FateSeen(1, HELD, HELD), IDLE),
    # Deleted or replaced while it ran: the held descriptor still has every byte, so the
    # object is the verified file, labelled with what happened to it.
    (FateSeen(0, HELD, None), End.of(Status.SOURCE_DELETED)),
    (FateSeen(0, HELD, (1, 8)), End(Status.TRUNCATED, CompletedBy.TRUNCATED, "replaced")),
])
def test_an_end_is_checkpointed_before_any_step_acts_on_it(fate: FateSeen, end: End) -> None:
    actions, outcome = run({"LookFate": [fate]})
    assert kinds(actions) == [*START, *VERIFY, "Complete"]
    assert actions[2] == Checkpoint(end)
    assert actions[-1] == Complete(PARTS, FP)
    assert outcome == Publish(end, MADE)


def test_a_truncation_the_follow_loop_saw_cancels_the_parts_past_it_and_keeps() -> None:
    actions, outcome = run(truncated_now=True)
    assert kinds(actions) == ["CancelBeyond", "LookFate", "Checkpoint"]
    assert actions[-1] == Checkpoint(TRUNC)  # the follow loop said so in the log already
    assert outcome == Keep()


def test_a_truncation_while_a_part_was_held_back_is_the_end_even_if_the_file_grew_back() -> None:
    actions, outcome = run({"Settle": [Shrunk()]})
    assert kinds(actions) == ["Settle", "LookFate", "Checkpoint"]
    assert actions[-1] == Checkpoint(TRUNC, seen_truncated=True)
    assert outcome == Keep()


def test_a_resumed_end_stands_and_is_not_checkpointed_again() -> None:
    actions, outcome = run(resumed=True, judged=None)
    assert kinds(actions) == ["Settle", "Look", "QuickStart", *VERIFY, "Complete"]
    assert outcome == Publish(IDLE, MADE)


def test_a_resumed_stream_whose_file_shrank_while_down_keeps_what_s3_holds() -> None:
    actions, outcome = run({"Look": [SHRUNK]}, resumed=True)
    assert kinds(actions) == ["Settle", "Look", "LookFate", "Checkpoint"]
    assert actions[-1] == Checkpoint(TRUNC, seen_truncated=True)
    assert outcome == Keep()


@pytest.mark.parametrize("status", [Status.SOURCE_DELETED, Status.TRUNCATED])
def test_a_resumed_end_that_is_not_the_file_keeps_what_s3_holds(status: Status) -> None:
    # The held descriptor of a deleted or replaced file does not outlive a restart.
    actions, outcome = run(resumed=True, recorded=End.of(status))
    assert kinds(actions) == ["Settle", "Look"]
    assert outcome == Keep()


# --- proving the file's bytes -----------------------------------------------------------------


def test_a_file_finished_before_its_stream_began_needs_no_second_read() -> None:
    actions, outcome = run({"QuickStart": [Done()], "QuickFinish": [MADE]})
    assert kinds(actions) == [*START, "Drain", "Look", "QuickFinish", "Complete"]
    assert outcome == Publish(IDLE, MADE)


def test_a_quick_file_that_changed_meanwhile_is_hashed() -> None:
    actions, outcome = run({"QuickStart": [Done()], "QuickFinish": [NotQuick()]})
    assert kinds(actions) == [*START, "Drain", "Look", "QuickFinish", *VERIFY, "Complete"]
    assert outcome == Publish(IDLE, MADE)


def test_a_predigest_still_valid_spares_the_pass() -> None:
    actions, outcome = run({"TakePredigest": [Digested(D)]})
    assert kinds(actions) == [*START, "TakePredigest", "Look", "Resend", "Drain", "Look",
                              "Complete"]
    assert actions[-4] == Resend(2, ())
    assert outcome == Publish(IDLE, MADE)


def test_a_patched_part_is_sent_again_and_then_verified() -> None:
    patched = _digest([11, 99])
    resent = {**P, 2: _part(2, 99)}
    actions, outcome = run({"DigestNow": [Digested(patched)],
                            "Look": [looked(), looked(parts=resent)]})
    assert Resend(2, ((2, 10, 10),)) in actions
    assert outcome == Publish(IDLE, Verified((P[1], resent[2]), patched.result.sha256,
                                             patched.mtime_ns, FP))


def test_parts_sent_again_from_an_untrusted_pass_are_hashed_again() -> None:
    # A pass of a file written within the mtime granularity cannot prove the bytes did not
    # move while hashed: with parts re-sent, only a trusted pass verifies.
    shaky = _digest([11, 99], trusted=False)
    resent = {**P, 2: _part(2, 99)}
    fixed = _digest([11, 99])
    actions, outcome = run({"DigestNow": [Digested(shaky), Digested(fixed)],
                            "Look": [looked(), looked(parts=resent), looked(parts=resent),
                                     looked(parts=resent)]})
    assert kinds(actions) == [*START, *VERIFY, "DigestNow", "Look", "Resend", "Drain",
                              "Look", "Complete"]
    assert isinstance(outcome, Publish)


def test_a_write_while_parts_went_up_means_hashing_again() -> None:
    actions, outcome = run({"Look": [looked(), looked(fp=LATER)]})
    assert kinds(actions) == [*START, *VERIFY, "DigestNow", "Look", "Resend", "Drain", "Look",
                              "Complete"]
    assert outcome == Publish(IDLE, MADE)


def test_a_part_that_went_up_differently_means_hashing_again() -> None:
    # Same fingerprint, but the ledger's part 2 is not the pass's: never completed.
    other = {**P, 2: _part(2, 55)}
    actions, outcome = run({"Look": [looked(), looked(parts=other)]})
    assert kinds(actions).count("DigestNow") == 2
    assert outcome == Publish(IDLE, MADE)


def test_an_empty_recording_is_the_empty_object() -> None:
    actions, outcome = run({"DigestNow": [Digested(EMPTY)],
                            "Look": [looked(size=0, extent=0, parts={})] * 2})
    assert kinds(actions) == [*START, *VERIFY, "PutEmpty"]
    assert outcome == Publish(IDLE, Verified((), EMPTY.result.sha256, EMPTY.mtime_ns, FP))


# --- turns: shrunk, changed, gone, standing ---------------------------------------------------


@pytest.mark.parametrize(("answers", "asked"), [
    # Seen shorter while the file was hashed (11006656's review).
    ({"DigestNow": [Shrunk()]}, [*START, "TakePredigest", "DigestNow"]),
    ({"Look": [SHRUNK]}, [*START, "TakePredigest", "DigestNow", "Look"]),
    # While the re-sent parts went up, or just after.
    ({"Drain": [Shrunk()]}, [*START, *VERIFY[:-1]]),
    ({"Look": [looked(), SHRUNK]}, [*START, *VERIFY]),
    # 11006656: while a Complete was held back for 20 s (the file grew back meanwhile): the
    # retry is not sent, and the regrown file is never verified over what S3 holds.
    ({"Complete": [Shrunk()]}, [*START, *VERIFY, "Complete"]),
    # The quick path's drain.
    ({"QuickStart": [Done()], "Drain": [Shrunk()]}, [*START, "Drain"]),
])
def test_a_truncation_seen_while_verifying_checkpoints_the_truncated_end_and_keeps(
    answers: dict[str, list[Observation]], asked: list[str]
) -> None:
    actions, outcome = run(answers)
    assert kinds(actions) == [*asked, "Checkpoint"]
    assert actions[-1] == Checkpoint(TRUNC, seen_truncated=True)
    assert outcome == Keep()


def test_a_complete_not_sent_because_the_file_changed_verifies_again() -> None:
    actions, outcome = run({"Complete": [Changed()]})
    assert kinds(actions) == [*START, *VERIFY, "Complete", "QuickStart", *VERIFY, "Complete"]
    assert outcome == Publish(IDLE, MADE)


def test_an_upload_s3_forgot_restarts_the_stream_and_verifies_again() -> None:
    actions, outcome = run({"Complete": [UploadGone("NoSuchUpload")]})
    assert kinds(actions) == [*START, *VERIFY, "Complete", "Restart", "QuickStart", *VERIFY,
                              "Complete"]
    assert outcome == Publish(IDLE, MADE)


@pytest.mark.parametrize(("answers", "last"), [
    # Completed before a crash, found when the restart looked: it stands.
    ({"Complete": [UploadGone("NoSuchUpload")], "Restart": [ObjectThere()]}, "Restart"),
    ({"Drain": [ObjectThere()]}, "Drain"),
    ({"PutEmpty": [ObjectThere()], "DigestNow": [Digested(EMPTY)],
      "Look": [looked(size=0, extent=0, parts={})] * 2}, "PutEmpty"),
    ({"Complete": [ObjectThere()]}, "Complete"),
])
def test_an_object_standing_at_the_key_is_never_overwritten(
    answers: dict[str, list[Observation]], last: str
) -> None:
    actions, outcome = run(answers)
    assert kinds(actions)[-1] == last
    assert outcome == Keep(standing=True)


def test_an_answer_that_does_not_answer_the_action_is_a_bug_of_the_shell() -> None:
    with pytest.raises(Unexpected):
        run({"LookFate": [Drained()]})
    with pytest.raises(Unexpected):
        run({"DigestNow": [Digested(None)]})


# --- the rules, over every row ----------------------------------------------------------------

ROWS: list[dict[str, list[Observation]]] = [
    {}, {"Settle": [Shrunk()]}, {"Complete": [Changed()]}, {"Complete": [Shrunk()]},
    {"Complete": [UploadGone("x")]}, {"Drain": [ObjectThere()]},
    {"QuickStart": [Done()], "QuickFinish": [MADE]}, {"Look": [looked(), looked(fp=LATER)]},
]
S3 = {"Resend", "Drain", "PutEmpty", "Complete", "Restart"}


@pytest.mark.parametrize("answers", ROWS)
def test_no_part_or_complete_before_the_end_is_checkpointed(
    answers: dict[str, list[Observation]],
) -> None:
    actions, _ = run(answers)
    first_s3 = next(i for i, k in enumerate(kinds(actions)) if k in S3 or k == "Checkpoint")
    assert kinds(actions)[first_s3] == "Checkpoint"


@pytest.mark.parametrize("answers", ROWS)
def test_every_complete_carries_the_fingerprint_its_parts_were_verified_at(
    answers: dict[str, list[Observation]],
) -> None:
    actions, _ = run(answers)
    assert all(a.unchanged == FP for a in actions if isinstance(a, Complete))


def test_stale_and_verified_agree_on_what_a_pass_shows() -> None:
    assert stale_parts(D, P) == []
    assert verified(D, P) == [P[1], P[2]]
    moved = {**P, 2: PartRecord(2, 11, 10, P[2].etag, P[2].md5, 1.0)}  # same bytes, other offset
    assert [d.part_number for d in stale_parts(D, moved)] == [2]
    assert verified(D, {1: P[1]}) is None
    assert [d.part_number for d in stale_parts(D, {1: P[1]})] == [2]
