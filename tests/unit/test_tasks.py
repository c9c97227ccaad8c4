"""The task supervisor: a failing task is logged once per failure, reported to readiness,
restarted with backoff (or, if fatal, ends the app), and cleared once healthy again."""

from __future__ import annotations

import asyncio

import structlog.testing

from cefmp4.runtime.clock import SystemClock
from cefmp4.runtime.readiness import Readiness
from cefmp4.runtime.retry import Backoff
from cefmp4.runtime.tasks import TaskSupervisor


def _supervisor(readiness: Readiness, healthy_after: float = 0.05) -> TaskSupervisor:
    return TaskSupervisor(
        readiness, SystemClock(), backoff=Backoff(initial=0.01, maximum=0.02),
        healthy_after=healthy_after,
    )


async def test_a_failing_task_is_restarted_and_reported_until_healthy() -> None:
    readiness = Readiness()
    tasks = _supervisor(readiness)
    runs = 0
    healthy = asyncio.Event()
    failing_seen: list[dict[str, str]] = []

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError(f"boom {runs}")
        failing_seen.append(readiness.failures())
        healthy.set()
        await asyncio.Event().wait()  # a healthy long-lived task

    with structlog.testing.capture_logs() as logs:
        tasks.start("watcher", flaky)
        await asyncio.wait_for(healthy.wait(), 5)
        assert failing_seen == [{"watcher": "RuntimeError"}]
        for _ in range(500):  # healthy_after (0.05 s) past the restart clears it
            if not readiness.failures():
                break
            await asyncio.sleep(0.01)
        assert readiness.failures() == {}
        await tasks.aclose()
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert [e["error"] for e in failed] == ["RuntimeError('boom 1')", "RuntimeError('boom 2')"]
    assert all(e["exc_info"] for e in failed)
    assert not tasks.failed.is_set()


async def test_a_fatal_task_sets_failed_with_one_line_of_error() -> None:
    readiness = Readiness()
    tasks = _supervisor(readiness)

    async def broken() -> None:
        raise ValueError("disk on fire")

    tasks.start("lease-renewal", broken, fatal=True)
    await asyncio.wait_for(tasks.failed.wait(), 5)
    assert tasks.error == "lease-renewal failed: ValueError('disk on fire')"
    assert readiness.failures() == {"lease-renewal": "ValueError"}
    await tasks.aclose()


async def test_aclose_cancels_running_tasks() -> None:
    tasks = _supervisor(Readiness())
    cancelled, started = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    tasks.start("sweeper", forever)
    await asyncio.wait_for(started.wait(), 5)
    assert tasks.running() == ["sweeper"]
    await tasks.aclose()
    assert cancelled.is_set()
