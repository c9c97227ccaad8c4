"""One global cap on part bytes held in memory, shared by every stream (SPEC §2.12)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ByteBudget:
    """An async semaphore counted in bytes.

    Waiters are served in arrival order so one stream with large parts cannot be starved by
    many small requests. A request larger than the whole budget waits until it is alone.
    """

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.in_use = 0
        self._cond = asyncio.Condition()
        self._queue: list[object] = []

    @asynccontextmanager
    async def hold(self, nbytes: int) -> AsyncIterator[None]:
        await self.acquire(nbytes)
        try:
            yield
        finally:
            await self.release(nbytes)

    async def acquire(self, nbytes: int) -> None:
        ticket = object()
        async with self._cond:
            self._queue.append(ticket)
            try:
                await self._cond.wait_for(lambda: self._queue[0] is ticket and self._fits(nbytes))
            finally:
                self._queue.remove(ticket)
                # The next waiter in line may fit now that the head has moved.
                self._cond.notify_all()
            self.in_use += nbytes

    async def release(self, nbytes: int) -> None:
        async with self._cond:
            self.in_use -= nbytes
            self._cond.notify_all()

    def _fits(self, nbytes: int) -> bool:
        return self.in_use == 0 or self.in_use + nbytes <= self.limit
