"""Uplink control, the shell (SPEC §2.21): the limit in force follows the timetable in local
time, without a restart; streams get their lane (live or backlog, and their place in
``UPLOAD_ORDER``). ``core.uplink`` decides; ``storage.pacing`` paces the bodies;
``streams.budget`` and ``streams.supervisor`` keep live recordings first at the gates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from cefmp4.core.uplink import (
    Order,
    Timetable,
    format_rate,
    gate_reserve,
    is_live,
    order_key,
)
from cefmp4.runtime.clock import Clock
from cefmp4.storage.pacing import Lane, Pacer

log = structlog.get_logger("cefmp4.streams.uplink")

LIMIT_CHANGED = "upload_limit_changed"  # log event: the limit in force changed
RECHECK_S = 60.0  # the local time is looked at least this often (DST, a clock set)
_PAST_SWITCH_S = 0.01  # wake just after a switch time, never just before it


def second_of_day(unix: float) -> float:
    """Seconds since local midnight (the timetable is local time)."""
    local = time.localtime(unix)
    return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + unix % 1


@dataclass(slots=True)
class Uplink:
    """What the pipeline needs of ``UPLOAD_BWLIMIT`` and ``UPLOAD_ORDER``; the default is
    no limit, oldest first."""

    table: Timetable | None = None
    pacer: Pacer | None = None
    order: Order = "oldest"
    live_window: float = 30.0  # STREAM_TIMEOUT_SECONDS: a file unchanged longer is not live
    on_change: Callable[[int | None], None] = field(default=lambda _rate: None)

    @property
    def rate(self) -> int | None:
        return None if self.pacer is None else self.pacer.rate

    def limited(self) -> bool:
        return self.rate is not None

    def reserve(self, limit: int, unit: int) -> Callable[[], int]:
        """What live waiters keep at a gate, while a limit is in force."""
        kept = gate_reserve(limit, unit)
        return lambda: kept if self.limited() else 0

    def lane(self) -> Lane:
        """A stream's lane, backlog until ``observe`` says otherwise."""
        return Lane(self.pacer, live=False)

    def observe(self, lane: Lane, mtime: float, now: float, *, first: bool = False) -> None:
        """A stream's file was seen with ``mtime``: live once it changes within the window
        (and live until its stream ends); its backlog place is its mtime when first seen."""
        if first:
            lane.key = order_key(self.order, mtime)
        lane.live = lane.live or is_live(now - mtime, self.live_window)

    def apply(self, unix: float, *, reason: str) -> None:
        """Put the limit in force at ``unix`` into effect; one INFO line when it changes."""
        if self.table is None or self.pacer is None:
            return
        rate = self.table.limit_at(second_of_day(unix))
        if rate == self.pacer.rate and reason != "start":
            return
        previous = self.pacer.rate
        self.pacer.set_rate(rate)
        self.on_change(rate)
        log.info(LIMIT_CHANGED, limit=format_rate(rate), limit_bytes_per_second=rate or 0,
                 previous=format_rate(previous) if reason != "start" else None,
                 timetable=self.table.describe(), reason=reason)

    async def follow(self, clock: Clock) -> None:
        """Switch at the timetable's times, for ever (a supervised task)."""
        table = self.table
        if table is None or table.constant:
            return
        while True:
            now = clock.time()
            self.apply(now, reason="timetable")
            wait = table.next_switch(second_of_day(now)) + _PAST_SWITCH_S
            await clock.sleep(min(wait, RECHECK_S))
