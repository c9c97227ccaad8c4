"""Who may work on a file: this instance alone, or whoever holds its lease (SPEC §2.11).

The supervisor is given one of these and asks it before it touches a file; it never knows
which. ``LocalOwnership``: one instance owns every file (SQLite). ``LeasedOwnership``:
several instances share one Redis and one watch directory; a file is worked on by the
instance holding its lease (``cefmp4.streams.lease``), and every checkpoint write of its stream is
fenced with the lease's token.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from cefmp4.checkpoint import StreamRecord
from cefmp4.core.identity import Ident
from cefmp4.runtime.clock import Clock
from cefmp4.streams.lease import LeaseKeeper


class Ownership(Protocol):
    # True: other instances share the checkpoint store, so what it says about a file must
    # be read again before acting on it, and unfinished streams are claimed periodically.
    shared: bool

    async def acquire(self, ident: Ident, on_lost: Callable[[], None]) -> bool:
        """Own the file now (True), or another instance does (False: ask again later)."""

    def busy(self, ident: Ident) -> bool:
        """Another instance owned it when last asked, and asking again is pointless yet."""

    def bind(self, inode: int, stream_id: str, on_lost: Callable[[], None]) -> None:
        """About to write the stream's checkpoints; ``LeaseLost`` if it must not."""

    async def release(self, inode: int) -> None: ...

    def guard(self) -> Callable[[StreamRecord], Awaitable[None]] | None:
        """Checked before an irreversible step (Complete); None when nothing can be lost."""


class LocalOwnership:
    """A single instance: every file is ours."""

    shared = False

    async def acquire(self, ident: Ident, on_lost: Callable[[], None]) -> bool:
        return True

    def busy(self, ident: Ident) -> bool:
        return False

    def bind(self, inode: int, stream_id: str, on_lost: Callable[[], None]) -> None:
        return None

    async def release(self, inode: int) -> None:
        return None

    def guard(self) -> Callable[[StreamRecord], Awaitable[None]] | None:
        return None


class LeasedOwnership:
    """Scale-out: a file is ours while we hold its lease."""

    shared = True

    def __init__(self, keeper: LeaseKeeper, clock: Clock) -> None:
        self.keeper = keeper
        self._clock = clock
        # Files another instance owns, and until when we stop asking (monotonic time).
        self._foreign: dict[Ident, float] = {}

    async def acquire(self, ident: Ident, on_lost: Callable[[], None]) -> bool:
        token = await self.keeper.acquire(ident[1], on_lost)
        if token is None:
            # Its lease cannot expire sooner than one TTL from now.
            self._foreign[ident] = self._clock.monotonic() + self.keeper.ttl
            return False
        self._foreign.pop(ident, None)
        return True

    def busy(self, ident: Ident) -> bool:
        return self._foreign.get(ident, 0.0) > self._clock.monotonic()

    def bind(self, inode: int, stream_id: str, on_lost: Callable[[], None]) -> None:
        self.keeper.set_on_lost(inode, on_lost)
        self.keeper.bind(inode, stream_id)

    async def release(self, inode: int) -> None:
        await self.keeper.release(inode)

    def guard(self) -> Callable[[StreamRecord], Awaitable[None]] | None:
        async def verify(record: StreamRecord) -> None:
            await self.keeper.verify(record.inode)

        return verify
