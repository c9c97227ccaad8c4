"""The pacer itself (``cefmp4.storage.pacing``) on a real loop with short times: a cancelled
waiter never blocks the rest (aiohttp cancels a body's writer when its connection breaks),
a change of rate wakes the one waiting, off lets everything through, and a lane decides who
waits."""

from __future__ import annotations

import asyncio
import time

from cefmp4.runtime.clock import SystemClock
from cefmp4.storage.pacing import LANE, Lane, Pacer, pace, paced_write

KIB = 1024


async def test_a_waiter_cancelled_while_queued_does_not_wedge_the_pacer() -> None:
    """Found by the outage test: the task of a queued waiter is cancelled, its future with
    it, and the holder's release used to grant that cancelled future (InvalidStateError in
    the releasing task: the pacer stayed busy for ever, every upload stalled)."""
    pacer = Pacer(SystemClock(), rate=4 * KIB)  # a 4 KiB slice is a second
    holder = asyncio.create_task(pacer.take(4 * KIB, live=True))
    await asyncio.sleep(0)
    doomed = asyncio.create_task(pacer.take(4 * KIB, live=True))
    survivor = asyncio.create_task(pacer.take(4 * KIB, live=True))
    await asyncio.sleep(0.01)
    # In one step: the holder is woken (a new rate), and the waiter's task is cancelled,
    # so the holder lets go while the cancelled waiter is still in the queue.
    pacer.set_rate(1 << 30)
    doomed.cancel()
    await asyncio.wait_for(holder, 1)
    await asyncio.wait_for(survivor, 1)
    assert doomed.cancelled()
    again = asyncio.create_task(pacer.take(4 * KIB, live=True))
    await asyncio.wait_for(again, 1)


async def test_a_holder_cancelled_while_it_waits_its_debt_lets_the_next_one_go() -> None:
    pacer = Pacer(SystemClock(), rate=4 * KIB)  # a 4 KiB slice is a whole second
    holder = asyncio.create_task(pacer.take(4 * KIB, live=True))
    await asyncio.sleep(0.05)
    nxt = asyncio.create_task(pacer.take(1, live=True))
    holder.cancel()
    await asyncio.sleep(0)
    pacer.set_rate(None)  # and off: the next one goes at once
    await asyncio.wait_for(nxt, 0.5)


async def test_a_new_rate_wakes_the_one_waiting() -> None:
    pacer = Pacer(SystemClock(), rate=KIB)
    started = time.monotonic()
    waiting = asyncio.create_task(pacer.take(8 * KIB, live=True))  # 8 s at 1 KiB/s
    await asyncio.sleep(0.05)
    pacer.set_rate(None)
    await asyncio.wait_for(waiting, 1)
    assert time.monotonic() - started < 1


async def test_without_a_lane_or_a_limit_nothing_waits() -> None:
    written: list[int] = []

    async def write(data: object) -> None:
        written.append(len(data))  # type: ignore[arg-type]

    await paced_write(write, b"x" * (3 << 20))  # no lane: as it always was, one write
    assert written == [3 << 20]
    token = LANE.set(Lane(Pacer(SystemClock(), rate=None)))
    try:
        await paced_write(write, b"x" * (3 << 20))  # a lane, no limit now: one write
        assert written[-1] == 3 << 20
        await asyncio.wait_for(pace(1 << 30), 0.1)
    finally:
        LANE.reset(token)


async def test_a_limited_lane_slices_and_paces_the_body() -> None:
    written: list[int] = []

    async def write(data: object) -> None:
        written.append(len(data))  # type: ignore[arg-type]

    rate = 1 << 20
    token = LANE.set(Lane(Pacer(SystemClock(), rate=rate)))
    try:
        started = time.monotonic()
        await paced_write(write, b"x" * (rate // 4))
        elapsed = time.monotonic() - started
    finally:
        LANE.reset(token)
    assert sum(written) == rate // 4
    assert max(written) == rate // 20  # slices of 50 ms of the rate
    assert 0.2 <= elapsed <= 0.4
