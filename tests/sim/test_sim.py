"""The simulator's seeds as tests: each schedule must end with every invariant holding."""

from __future__ import annotations

import pytest

from tests.sim.known import KNOWN_HOLES, RACING_HOLES, RACING_REGRESSION_SEEDS
from tests.sim.runner import run_seed


def test_schedule(sim_seed: int, request: pytest.FixtureRequest) -> None:
    hole = KNOWN_HOLES.get(sim_seed)
    if hole is not None and request.config.getoption("--sim-seed") is None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=hole))
    result = run_seed(sim_seed)
    assert result.ok, result.report()


def test_a_seed_replays_exactly() -> None:
    """Replays are only worth printing if a seed means one run: same steps, same faults."""
    first, second = run_seed(17), run_seed(17)
    same = {k: v for k, v in first.stats.items() if k != "real_s"}
    assert same == {k: v for k, v in second.stats.items() if k != "real_s"}
    assert len(first.failures) == len(second.failures)


def test_virtual_time_runs_a_30s_timeout_in_milliseconds() -> None:
    seed = next(s for s in range(1000) if _timeout_of(s) == 30.0)
    result = run_seed(seed)
    assert result.stats["virtual_s"] > 30.0
    assert result.stats["real_s"] < 5.0, result.stats


def _timeout_of(seed: int) -> float:
    from tests.sim.schedule import make_schedule

    return make_schedule(seed).stream_timeout


def test_a_targeted_crash_lands_inside_the_phase_its_event_starts() -> None:
    """Seed 941 arms a crash 7 loop steps after stream_truncated: it must happen (the
    truncated stream is then mid-finalize), and the run must still end clean."""
    from tests.sim.schedule import make_schedule

    assert make_schedule(941).targets[0].event == "stream_truncated"
    result = run_seed(941)
    assert result.stats["targeted"] >= 1, result.stats
    assert result.ok, result.report()


def test_targeted_crashes_leave_the_base_schedule_alone() -> None:
    """They are drawn from their own stream, as the other party of issue #25 is: seeds
    0-99 describe the recorders, crashes and faults they drew before targets existed
    (digest taken at 363f889), so triaged seeds keep their meaning; and most seeds arm
    some."""
    import hashlib

    from tests.sim.schedule import TARGET_EVENTS, make_schedule

    digest = hashlib.sha256()
    armed = 0
    for seed in range(100):
        sched = make_schedule(seed)
        assert all(t.event in TARGET_EVENTS and t.steps >= 1 for t in sched.targets)
        armed += bool(sched.targets)
        lines = sched.describe().split("\n")
        base = (x for x in lines if not x.startswith(("  targeted", "  other party")))
        digest.update("\n".join(base).encode())
    assert digest.hexdigest() == (
        "bb11f07112ae14820048fccf63af17dba11fe0d4b771d195cc3a25245414f424"
    )
    assert 50 < armed < 100


def test_the_other_party_salvages_what_a_lost_host_left() -> None:
    """Issue #25: a seed whose recorders' host is lost with footage in open uploads (no
    replacement): the other host's ``cefmp4 salvage`` makes objects of them, and every
    byte S3 held is in one (``check_party``)."""
    from tests.sim.schedule import make_schedule

    sched = make_schedule(10)
    assert sched.host_loss is not None
    assert not sched.host_loss.replacement
    assert sched.rpo == 0.5
    result = run_seed(10)
    assert result.stats["host_lost"] == 1, result.stats
    assert result.stats["salvaged"] >= 1, result.stats
    assert result.ok, result.report()


async def test_the_age_rule_is_judged_when_s3_completes() -> None:
    """(c): the other party completing an upload its owner added to within the age limit
    is caught, judged from the owner's requests and the moment S3 carries it out."""
    from cefmp4.storage.memory import MemoryObjectStore
    from tests.sim.party import Ledger

    now = [100.0]
    ledger = Ledger(MemoryObjectStore(), "streams/", 64 * 1024, lambda: now[0])
    key = "streams/20260101T000000Z-0123456789/cam.mp4"
    ledger.owner_carried("upload_part", (key, "u1", 3), "etag")
    ledger.older_than = 30.0
    now[0] = 131.0
    ledger.party_carry("complete_multipart", (key, "u1", ()))
    assert ledger.violations == []
    now[0] = 140.0
    segment = f"streams/.cefmp4/tail/{key.split('/')[1]}/{0:016x}-{10:016x}"
    await ledger.s3.put_object(segment, b"0123456789", "application/octet-stream")
    ledger.owner_carried("put_object", (segment, b"0123456789"), None)
    now[0] = 150.0
    ledger.party_carry("complete_multipart", (key, "u1", ()))
    assert len(ledger.violations) == 1
    assert "(c)" in ledger.violations[0]
    # A tail segment S3 no longer holds (the stream's object consumed it) keeps nothing live.
    await ledger.s3.delete_object(segment)
    ledger.party_carry("complete_multipart", (key, "u1", ()))
    assert len(ledger.violations) == 1


@pytest.mark.parametrize("seed", sorted({*RACING_HOLES, *RACING_REGRESSION_SEEDS}))
def test_racing_seed(seed: int) -> None:
    """Seeds with a racing other party: known holes (``known.RACING_HOLES``) are strict
    xfails, the ones fixed since (``RACING_REGRESSION_SEEDS``) must run clean."""
    result = run_seed(seed, racing=True)
    if seed in RACING_HOLES:
        if not result.ok:
            pytest.xfail(RACING_HOLES[seed])
        pytest.fail(f"racing seed {seed} runs clean now: move it to RACING_REGRESSION_SEEDS")
    assert result.ok, result.report()
