"""Time, injected: wall time, monotonic time, sleeping and waiting with a timeout.

Every pipeline module takes its time from the ``Clock`` in the ``Context``, never from
``time`` or ``asyncio.sleep`` directly, so a simulator can drive a 30 s idle timeout in
milliseconds with a virtual clock that implements the same four methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from typing import Any, Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock UNIX time (compared with file mtimes and written to metadata)."""

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (intervals, idle timeouts)."""

    async def sleep(self, seconds: float) -> None: ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Until ``event`` is set (True) or ``timeout`` seconds passed (False)."""


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        if timeout is not None and timeout <= 0:
            return event.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        return event.is_set()


async def wait_tasks(
    clock: Clock, tasks: Iterable[asyncio.Future[Any]], timeout: float | None
) -> set[asyncio.Future[Any]]:
    """Wait until every task is done or ``timeout`` passed on ``clock``; the ones still
    pending (not cancelled: the caller decides)."""
    pending = {t for t in tasks if not t.done()}
    if not pending:
        return set()
    all_done = asyncio.Event()
    left = set(pending)

    def done(task: asyncio.Future[Any]) -> None:
        left.discard(task)
        if not left:
            all_done.set()

    for task in pending:
        task.add_done_callback(done)
    try:
        await clock.wait(all_done, timeout)
    finally:
        for task in pending:
            task.remove_done_callback(done)
    return {t for t in pending if not t.done()}
