"""One global cap on part bytes held in memory, shared by every stream (SPEC §2.12); the
same gate, counted in calls, bounds the UploadPart calls running at once."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from cefmp4.core.uplink import Claim, gate_admits, gate_rank
from cefmp4.storage.pacing import LANE


def _no_reserve() -> int:
    return 0


class ByteBudget:
    """An async semaphore counted in bytes (or calls), live recordings first (§2.21).

    Who waits is the task's lane (``storage.pacing.LANE``; none: served as live). Live
    waiters go first, in arrival order, then the backlog in ``UPLOAD_ORDER``; a backlog
    waiter goes first while the backlog holds nothing here, and live waiters keep
    ``reserve()`` for themselves (``core.uplink.gate_admits``). Without lanes this is the
    arrival order it always was. A request larger than the whole budget waits until it is
    alone.
    """

    def __init__(self, limit: int, *, reserve: Callable[[], int] = _no_reserve) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.in_use = 0
        self.backlog_in_use = 0
        self._reserve = reserve
        self._cond = asyncio.Condition()
        self._queue: list[tuple[Claim, int]] = []
        self._seq = itertools.count()
        self._changes = 0  # queue entries added or removed
        self._cached: tuple[tuple[int, int, int, int], tuple[Claim, int]] | None = None

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        lane = LANE.get()
        claim = Claim(lane is None or lane.live, 0.0 if lane is None else lane.key,
                      next(self._seq))
        await self._acquire(claim, nbytes)
        try:
            yield
        finally:
            await self._release(claim, nbytes)

    async def acquire(self, nbytes: int) -> None:
        """Take ``nbytes`` as a live waiter (``hold`` is the way in for streams)."""
        await self._acquire(Claim(True, 0.0, next(self._seq)), nbytes)

    async def release(self, nbytes: int) -> None:
        await self._release(Claim(True, 0.0, 0), nbytes)

    async def _acquire(self, claim: Claim, nbytes: int) -> None:
        entry = (claim, nbytes)
        async with self._cond:
            self._queue.append(entry)
            self._changes += 1
            try:
                await self._cond.wait_for(lambda: self._admits(entry))
            finally:
                self._queue.remove(entry)
                self._changes += 1
                # The next waiter in line may fit now that the head has moved.
                self._cond.notify_all()
            self.in_use += nbytes
            if not claim.live:
                self.backlog_in_use += nbytes

    async def _release(self, claim: Claim, nbytes: int) -> None:
        async with self._cond:
            self.in_use -= nbytes
            if not claim.live:
                self.backlog_in_use -= nbytes
            self._cond.notify_all()

    def _head(self) -> tuple[Claim, int]:
        # Every waiter asks after each change: the head is found once per change, not
        # once per waiter (hundreds of parts may wait with MAX_STREAMS in the hundreds).
        state = (len(self._queue), self.in_use, self.backlog_in_use, self._changes)
        if self._cached is None or self._cached[0] != state:
            starved = not self.backlog_in_use
            self._cached = (state, min(self._queue, key=lambda e: gate_rank(e[0], starved)))
        return self._cached[1]

    def _admits(self, entry: tuple[Claim, int]) -> bool:
        if self._head() is not entry:
            return False
        claim, nbytes = entry
        return gate_admits(claim, nbytes, in_use=self.in_use, backlog_in_use=self.backlog_in_use,
                           limit=self.limit, reserve=self._reserve())
