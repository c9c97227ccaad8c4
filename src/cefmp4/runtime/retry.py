"""Retry policy: transient errors are retried without limit, everything else is raised (§2.7).

Errors are classified at the IO boundary (``storage``, ``checkpoint``) into
:class:`~cefmp4.runtime.errors.TransientError` or
:class:`~cefmp4.runtime.errors.PermanentError`; this module
only waits and tries again. There is no attempt limit on purpose: an S3 or Redis outage of an
hour must not fail a recording, it must delay it. Cancellation is never caught, so shutdown
interrupts a backoff sleep at once.

Tests make retries instant by injecting ``sleep`` (and ``backoff``), not by a global switch.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from cefmp4.runtime.errors import TransientError

T = TypeVar("T")

OnRetry = Callable[[str, int, float, BaseException], None]
"""Hook called before each backoff sleep: ``(operation, attempt, delay, exc)``."""


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter and a floor.

    The ``retry``-th wait (0 for the first) is drawn uniformly from
    ``[0, min(maximum, initial * multiplier ** retry)]`` (full jitter spreads out the
    reconnect stampede after an outage), then raised to at least ``initial / 2`` so that a
    run of unlucky draws can never turn into a hot loop against a failing server.
    """

    initial: float = 0.2
    maximum: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError(f"initial must be > 0, got {self.initial}")
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({self.maximum}) must be >= initial ({self.initial})")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {self.multiplier}")

    @property
    def floor(self) -> float:
        """The shortest wait ever returned."""
        return self.initial / 2

    def ceiling(self, retry: int) -> float:
        """The longest wait the ``retry``-th retry may draw."""
        try:
            grown = self.initial * self.multiplier ** max(retry, 0)
        except OverflowError:  # float overflow after thousands of retries: long past the cap
            return self.maximum
        return min(self.maximum, grown)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry`` (0-based)."""
        uniform = rng.uniform if rng is not None else random.uniform
        return max(self.floor, uniform(0.0, self.ceiling(retry)))


def is_transient_error(exc: BaseException) -> bool:
    """The default classification: only cefmp4's own :class:`TransientError` is retried."""
    return isinstance(exc, TransientError)


async def retry_transient(
    op: Callable[[], Awaitable[T]],
    *,
    operation: str,
    backoff: Backoff = Backoff(),  # frozen, so one shared default is safe
    on_retry: OnRetry | None = None,
    is_transient: Callable[[BaseException], bool] = is_transient_error,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Await ``op()`` until it succeeds, retrying transient errors without limit.

    ``operation`` is a fixed name (``"upload_part"``, ``"checkpoint_save"``…) passed to
    ``on_retry``, which is where callers log and count ``video_failed_operations_total``.
    Attempts are numbered from 1; ``on_retry`` gets the number of the attempt that failed.
    Non-transient errors propagate at once. ``asyncio.CancelledError`` is a BaseException
    and is never caught here, so cancelling the caller cancels the op or the sleep.
    """
    attempt = 1
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc):
                raise
            wait = backoff.delay(attempt - 1, rng)
            if on_retry is not None:
                on_retry(operation, attempt, wait, exc)
        # Sleep outside the except block, so the handled exception is not chained onto
        # (or kept alive by) whatever the next attempt raises.
        await sleep(wait)
        attempt += 1
