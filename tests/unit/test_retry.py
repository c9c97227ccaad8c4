"""retry: unlimited retries of transient errors, with capped, jittered backoff (§2.7)."""

from __future__ import annotations

import asyncio
import random
import statistics
from collections.abc import Awaitable, Callable

import pytest

from cefmp4.runtime.errors import PermanentError, TransientError
from cefmp4.runtime.retry import Backoff, retry_transient

FAST = Backoff(initial=0.01, maximum=0.04)


class Recorder:
    """Collects on_retry calls and sleeps instead of waiting."""

    def __init__(self) -> None:
        self.retries: list[tuple[str, int, float, BaseException]] = []
        self.sleeps: list[float] = []

    def on_retry(self, operation: str, attempt: int, delay: float, exc: BaseException) -> None:
        self.retries.append((operation, attempt, delay, exc))

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def failing(
    n: int, exc: type[Exception] = TransientError
) -> tuple[list[int], Callable[[], Awaitable[str]]]:
    """An op that fails ``n`` times with ``exc``, then returns "done"; and its call log."""
    calls: list[int] = []

    async def op() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= n:
            raise exc(f"failure {len(calls)}")
        return "done"

    return calls, op


async def test_succeeds_after_transient_failures() -> None:
    rec = Recorder()
    calls, op = failing(5)
    result = await retry_transient(
        op,
        operation="upload_part",
        backoff=FAST,
        on_retry=rec.on_retry,
        sleep=rec.sleep,
    )
    assert result == "done"
    assert calls == [1, 2, 3, 4, 5, 6]
    assert [(op_name, attempt) for op_name, attempt, _, _ in rec.retries] == [
        ("upload_part", n) for n in range(1, 6)
    ]
    assert [str(exc) for *_, exc in rec.retries] == [f"failure {n}" for n in range(1, 6)]
    # The hook is told the delay that is then slept.
    assert [delay for _, _, delay, _ in rec.retries] == rec.sleeps
    assert all(FAST.floor <= d <= FAST.maximum for d in rec.sleeps)


async def test_no_failure_means_no_retry() -> None:
    rec = Recorder()
    calls, op = failing(0)
    result = await retry_transient(op, operation="x", on_retry=rec.on_retry, sleep=rec.sleep)
    assert result == "done"
    assert calls == [1]
    assert rec.retries == []
    assert rec.sleeps == []


async def test_retries_far_more_than_a_few_times() -> None:
    rec = Recorder()
    calls, op = failing(500)
    assert await retry_transient(op, operation="x", sleep=rec.sleep) == "done"
    assert len(calls) == 501
    assert max(rec.sleeps) <= Backoff().maximum


@pytest.mark.parametrize("exc", [PermanentError, ValueError, OSError])
async def test_non_transient_error_is_raised_at_once(exc: type[Exception]) -> None:
    rec = Recorder()
    calls, op = failing(1, exc)
    with pytest.raises(exc, match="failure 1"):
        await retry_transient(op, operation="x", on_retry=rec.on_retry, sleep=rec.sleep)
    assert calls == [1]
    assert rec.retries == []
    assert rec.sleeps == []


async def test_custom_classifier() -> None:
    rec = Recorder()
    calls, op = failing(2, ConnectionError)
    result = await retry_transient(
        op,
        operation="x",
        is_transient=lambda e: isinstance(e, ConnectionError),
        sleep=rec.sleep,
    )
    assert result == "done"
    assert len(calls) == 3


async def test_cancellation_during_the_sleep_propagates() -> None:
    started = asyncio.Event()
    attempts = 0

    async def op() -> None:
        nonlocal attempts
        attempts += 1
        started.set()
        raise TransientError("down")

    task = asyncio.create_task(
        retry_transient(op, operation="x", backoff=Backoff(initial=60, maximum=60))
    )
    await started.wait()
    await asyncio.sleep(0.01)  # the task is now in its 30..60 s backoff sleep
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
    assert attempts == 1


async def test_cancellation_inside_the_op_is_not_retried() -> None:
    attempts = 0

    async def op() -> None:
        nonlocal attempts
        attempts += 1
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await retry_transient(op, operation="x", is_transient=lambda e: True)
    assert attempts == 1


def test_delays_are_capped_by_maximum_and_jittered() -> None:
    backoff = Backoff(initial=0.2, maximum=30.0, multiplier=2.0)
    rng = random.Random(1234)
    for retry in range(40):
        draws = [backoff.delay(retry, rng) for _ in range(400)]
        cap = min(30.0, 0.2 * 2.0**retry)
        assert all(backoff.floor <= d <= max(cap, backoff.floor) for d in draws)
        if cap > 1:
            # Full jitter: spread over [0, cap], mean near cap / 2, not bunched at one value.
            assert len(set(draws)) > 0.9 * len(draws)
            assert statistics.mean(draws) == pytest.approx(cap / 2, rel=0.1)
            assert min(draws) < cap * 0.1
            assert max(draws) > cap * 0.9
    late = [backoff.delay(retry, rng) for retry in range(20, 60)]
    assert max(late) <= 30.0


def test_delays_never_fall_below_the_floor() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0)
    rng = random.Random(7)
    draws = [backoff.delay(0, rng) for _ in range(1000)]
    assert min(draws) == 0.5  # about half the draws land under the floor and are raised
    assert max(draws) <= 1.0


def test_huge_attempt_numbers_do_not_overflow() -> None:
    backoff = Backoff(multiplier=1e10)
    assert backoff.ceiling(10_000) == backoff.maximum
    assert backoff.floor <= backoff.delay(10**9) <= backoff.maximum


def test_seeded_rng_is_reproducible() -> None:
    a = [Backoff().delay(n, random.Random(5)) for n in range(10)]
    b = [Backoff().delay(n, random.Random(5)) for n in range(10)]
    assert a == b


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0}, {"initial": -1}, {"initial": 2, "maximum": 1}, {"multiplier": 0.5}],
)
def test_invalid_backoff_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011  (any message naming the field will do)
        Backoff(**kwargs)
