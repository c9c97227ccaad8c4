"""core.claim as tables: claiming a file, driven by scripted observations, no event loop,
file or store. Each row gives the answers that differ from a plain claim (a new file, one
instance), the actions asked and the outcome."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.core.claim import (
    Acquire,
    Acquired,
    Action,
    AskRunning,
    AtPath,
    Claimed,
    Deferred,
    Done,
    EndedHere,
    Found,
    Malformed,
    NotStarted,
    Observation,
    Remember,
    Resume,
    Resumed,
    Reused,
    RunningHere,
    Started,
    StartNew,
    Unreadable,
    claiming,
)
from cefmp4.core.machine import Unexpected
from tests.support.machines import Script, drive


def _record(state: StreamState, **kw: object) -> StreamRecord:
    values: dict[str, object] = dict(
        stream_id="s1", path="/w/a.mp4", rel_path="a.mp4", device=1, inode=2, bucket="b",
        key="p/s1/a.mp4", part_size=10, max_parts=8, state=state, started_at=1.0,
        last_activity_at=1.0)
    values.update(kw)
    return StreamRecord(**values)  # type: ignore[arg-type]


ACTIVE = _record(StreamState.ACTIVE)
DONE = _record(StreamState.COMPLETED, final_size=30, final_mtime_ns=7)
FAILED = _record(StreamState.FAILED)

USUAL: dict[str, Observation] = {
    "Acquire": Acquired(True), "CloseHeld": Done(), "FindByInode": Found(None),
    "Remember": Done(), "StatPath": AtPath(None), "AskRunning": RunningHere(frozenset()),
    "Resume": Resumed(), "Forget": Done(), "StartNew": Started(),
}


def run(
    answers: Mapping[str, Sequence[Observation]] | None = None, *, held: bool = False,
    shared: bool = False, known: StreamRecord | None = None,
) -> tuple[list[Action], Claimed]:
    script = Script(USUAL, answers)
    got = drive(claiming(held=held, shared=shared, known=known), script)
    assert script.done(), f"answers left over: {script.left}"
    return got


def kinds(actions: Sequence[Action]) -> list[str]:
    return [type(a).__name__ for a in actions]


@pytest.mark.parametrize(("held", "expected"), [
    (False, ["Acquire"]),
    (True, ["Acquire", "CloseHeld"]),  # a descriptor handed over is closed: a peer owns it
])
def test_a_file_a_peer_holds_the_lease_of_waits(held: bool, expected: list[str]) -> None:
    actions, claimed = run({"Acquire": [Acquired(False)]}, held=held)
    assert kinds(actions) == expected
    assert claimed is Claimed.DEFER


def test_a_new_file_is_a_new_stream() -> None:
    actions, claimed = run()
    assert actions == [Acquire(), AskRunning(), StartNew(False)]
    assert claimed is Claimed.RUN


@pytest.mark.parametrize(("started", "claimed"), [
    (Started(), Claimed.RUN),
    (NotStarted(), Claimed.NOTHING),  # changed or gone before it was opened, or unkeyable
    (Deferred(), Claimed.DEFER),  # out of descriptors: claimed again later
])
def test_what_starting_a_new_stream_says(started: Observation, claimed: Claimed) -> None:
    assert run({"StartNew": [started]})[1] is claimed


@pytest.mark.parametrize(("seen", "expected", "claimed"), [
    (Resumed(), ["Acquire", "AskRunning", "Resume", "Forget"], Claimed.RUN),
    # The file gone: the stream finished with what S3 holds while resuming.
    (EndedHere(), ["Acquire", "AskRunning", "Resume", "Forget"], Claimed.NOTHING),
    # The file found is another recording: the stream ended, the file is a new stream from
    # the descriptor the resume holds (never its path again).
    (Reused(), ["Acquire", "AskRunning", "Resume", "Forget", "StartNew"], Claimed.RUN),
    # Unreadable now, or not now: the stream stays unfinished (not forgotten).
    (Unreadable(), ["Acquire", "AskRunning", "Resume"], Claimed.NOTHING),
    (Deferred(), ["Acquire", "AskRunning", "Resume"], Claimed.DEFER),
    # Its checkpoint does not parse: quarantined, never acted on.
    (Malformed(), ["Acquire", "AskRunning", "Resume", "Forget"], Claimed.NOTHING),
])
def test_an_unfinished_stream_resumes(
    seen: Observation, expected: list[str], claimed: Claimed
) -> None:
    actions, got = run({"Resume": [seen]}, known=ACTIVE)
    assert kinds(actions) == expected
    assert got is claimed
    assert actions[2] == Resume(ACTIVE, taken_over=False)
    if "StartNew" in expected:
        assert actions[-1] == StartNew(True)


def test_a_stream_this_instance_runs_is_not_claimed_twice() -> None:
    # Asked after the lease and the store (awaits meanwhile): not before the claim began.
    actions, claimed = run({"AskRunning": [RunningHere(frozenset({"s1"}))]}, known=ACTIVE)
    assert kinds(actions) == ["Acquire", "AskRunning"]
    assert claimed is Claimed.NOTHING


@pytest.mark.parametrize(("at_path", "expected", "claimed"), [
    ((30, 7), ["Acquire", "Remember", "StatPath", "AskRunning"], Claimed.NOTHING),  # uploaded
    ((31, 8), ["Acquire", "Remember", "StatPath", "AskRunning", "StartNew"], Claimed.RUN),
    (None, ["Acquire", "Remember", "StatPath", "AskRunning", "StartNew"], Claimed.RUN),
])
def test_a_completed_streams_file(
    at_path: tuple[int, int] | None, expected: list[str], claimed: Claimed
) -> None:
    actions, got = run({"StatPath": [AtPath(at_path)]}, known=DONE)
    assert kinds(actions) == expected
    assert actions[1] == Remember(DONE)
    assert got is claimed


def test_a_shared_store_is_asked_what_another_instance_did_with_the_file() -> None:
    # Start-up knew it unfinished; a peer completed it since: the store's answer counts.
    actions, claimed = run({"FindByInode": [Found(DONE)], "StatPath": [AtPath((30, 7))]},
                           shared=True, known=ACTIVE)
    assert kinds(actions) == ["Acquire", "FindByInode", "Remember", "StatPath", "AskRunning"]
    assert claimed is Claimed.NOTHING


def test_a_peers_unfinished_stream_is_taken_over() -> None:
    actions, claimed = run({"FindByInode": [Found(ACTIVE)]}, shared=True)
    assert actions[3] == Resume(ACTIVE, taken_over=True)
    assert claimed is Claimed.RUN


def test_a_failed_stream_leaves_its_file_to_a_new_stream() -> None:
    assert kinds(run(known=FAILED)[0]) == ["Acquire", "AskRunning", "StartNew"]


def test_a_descriptor_handed_over_is_a_new_stream_whatever_the_checkpoint_says() -> None:
    # It holds bytes no path reaches: its inode's checkpoints are not asked.
    actions, claimed = run(held=True, shared=True, known=ACTIVE)
    assert actions == [Acquire(), AskRunning(), StartNew(False)]
    assert claimed is Claimed.RUN


def test_an_answer_that_does_not_answer_the_action_is_a_bug_of_the_shell() -> None:
    with pytest.raises(Unexpected):
        run({"Resume": [Started()]}, known=ACTIVE)
    with pytest.raises(Unexpected):
        run({"StartNew": [Resumed()]})
