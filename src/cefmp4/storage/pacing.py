"""Pacing at the transport's body (SPEC §2.21): every body byte this process sends to S3
(parts, PutObject bodies: metadata, tail segments) passes ``paced_write`` or ``pace`` as it
goes on the wire, in slices, through one ``Pacer`` per process. Retries and re-sent parts
are bytes sent like any other, so the limit holds whatever is resent. The decisions (the
bucket, who goes next) are ``cefmp4.core.uplink``'s.

Who is sending is the task's ``Lane`` (a context variable, as structlog's bound fields
are): the stream task sets its own, so its part tasks, tail segments, metadata and the
aiohttp task that writes each body inherit it; the app sets one for everything else.
Without a lane, or with a lane whose pacer has no limit now, a body is written as it
always was: no slice, no wait, one attribute test per block.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass

from cefmp4.core.uplink import (
    Claim,
    Shares,
    TokenBucket,
    backlog_holds_off,
    pick,
    slice_size,
)
from cefmp4.runtime.clock import Clock

_Bytes = bytes | bytearray | memoryview


class Pacer:
    """The process's token bucket, shared by every body; ``rate`` None: no limit now.

    One sender at a time holds the bucket: it debits its slice and waits out any debt,
    then the next waiter is picked (``core.uplink.pick``: live first, the backlog's share
    kept). A change of rate wakes the one paying at once. Time is the loop's (its timers),
    as ``clock.monotonic`` is for every Clock cefmp4 runs on."""

    def __init__(self, clock: Clock, rate: int | None = None) -> None:
        self._clock = clock
        self.rate: int | None = None
        self._bucket: TokenBucket | None = None
        self._shares = Shares(clock.monotonic())
        self._waiting: list[tuple[Claim, asyncio.Future[None]]] = []
        self._busy = False
        self._live_released = -math.inf  # when a live body last let go of the bucket
        self._timer: asyncio.TimerHandle | None = None
        self._seq = itertools.count()
        self._sleeper: asyncio.Future[None] | None = None  # the holder paying its debt
        self.sent = 0  # bytes granted while a limit was in force (tests, the bench)
        self.set_rate(rate)

    def set_rate(self, rate: int | None) -> None:
        now = self._clock.monotonic()
        if rate is not None:
            if self._bucket is None:
                self._bucket = TokenBucket(rate, now)
            else:
                self._bucket.set_rate(now, rate)
        self.rate = rate
        if self._sleeper is not None:
            _wake(self._sleeper)  # the one paying a debt at the old rate stops now
        self._grant_next()

    def slice(self) -> int:
        """Bytes per grant at the rate in force (the whole block when there is none)."""
        return slice_size(self.rate) if self.rate is not None else 1 << 62

    async def take(self, nbytes: int, live: bool) -> None:
        """Wait until ``nbytes`` (at most one ``slice``) may be sent."""
        if self.rate is None:
            return
        if self._busy or self._waiting:
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((Claim(live, 0.0, next(self._seq)), future))
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(live)  # granted in the same instant: pass it on
                else:
                    self._waiting = [w for w in self._waiting if w[1] is not future]
                raise
        else:
            self._busy = True
        try:
            await self._pay(nbytes, live)
        finally:
            self._release(live)

    async def _pay(self, nbytes: int, live: bool) -> None:
        bucket = self._bucket
        if self.rate is None or bucket is None:
            return
        now = self._clock.monotonic()
        self._shares.granted(now, live, nbytes)
        self.sent += nbytes
        delay = bucket.debit(now, nbytes)
        if delay > 0:
            # A bare timer on a future: ``Clock.wait`` (asyncio.timeout around an Event)
            # cost 200 us a slice, 10 % of the CPU of an upload at 100 MiB/s (measured).
            loop = asyncio.get_running_loop()
            self._sleeper = loop.create_future()
            timer = loop.call_later(delay, _wake, self._sleeper)
            try:
                await self._sleeper
            finally:
                timer.cancel()
                self._sleeper = None

    def _release(self, live: bool) -> None:
        self._busy = False
        if live:
            self._live_released = self._clock.monotonic()
        self._grant_next()

    def _grant_next(self) -> None:
        # A waiter cancelled meanwhile (aiohttp cancels a body's writer when its connection
        # breaks) has a cancelled future until its task runs again: never granted.
        self._waiting = [w for w in self._waiting if not w[1].done()]
        if self._busy or not self._waiting or self._timer is not None:
            return
        now = self._clock.monotonic()
        due = self._shares.backlog_due(now)
        index = pick([claim for claim, _ in self._waiting], due)
        claim, future = self._waiting[index]
        if not claim.live and (wait := backlog_holds_off(now, self._live_released, due)) > 0:
            # The live body that just had a slice is writing it: its next ask comes first.
            self._timer = asyncio.get_running_loop().call_later(wait, self._hold_off_over)
            return
        del self._waiting[index]
        self._busy = True
        future.set_result(None)

    def _hold_off_over(self) -> None:
        self._timer = None
        self._grant_next()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(slots=True, eq=False)
class Lane:
    """Who sends: a live recording or the backlog (and where in ``UPLOAD_ORDER``: smaller
    ``key`` first), and the process's pacer (None: no ``UPLOAD_BWLIMIT``)."""

    pacer: Pacer | None = None
    live: bool = True
    key: float = 0.0


LANE: ContextVar[Lane | None] = ContextVar("cefmp4_uplink_lane", default=None)


def pacer_in_force() -> tuple[Lane, Pacer] | None:
    """The task's lane and pacer when a limit is in force now, else None."""
    lane = LANE.get()
    if lane is None or lane.pacer is None or lane.pacer.rate is None:
        return None
    return lane, lane.pacer


async def paced_write(write: Callable[[_Bytes], Awaitable[None]], data: _Bytes) -> None:
    """``write(data)``, in slices each granted by the pacer first when a limit is in force."""
    paced = pacer_in_force()
    if paced is None:
        await write(data)
        return
    lane, pacer = paced
    view = memoryview(data)
    while view:
        step = pacer.slice()
        await pacer.take(min(step, len(view)), lane.live)
        await write(view[:step])
        view = view[step:]


async def pace(nbytes: int) -> None:
    """Wait until ``nbytes`` may go (a body sent whole by the layer below)."""
    while nbytes > 0 and (paced := pacer_in_force()) is not None:
        lane, pacer = paced
        step = min(pacer.slice(), nbytes)
        await pacer.take(step, lane.live)
        nbytes -= step
