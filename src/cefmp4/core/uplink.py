"""Uplink control (SPEC §2.21), the decisions: what ``UPLOAD_BWLIMIT`` says, which limit is
in force at a time of day, the token bucket's arithmetic, and who goes first when live
recordings and the backlog want the same link. Pure: no clock, no asyncio; the shells
(``storage.pacing``, ``streams.budget``, ``streams.supervisor``) ask and carry out.

The rules, in one place:

* **The limit.** ``UPLOAD_BWLIMIT`` is a rate (``4M``, ``512k``: KiB/MiB/GiB per second,
  ``B`` for bytes) or an rclone-style timetable ``"08:00,512k 19:00,8M 23:00,off"``: each
  entry holds from its time (local) to the next; the day's last entry carries over
  midnight into the next morning until the first one. ``off`` is no limit.
* **Pacing.** A token bucket (GCRA: a sender debits first and waits its debt) that holds at
  most ``BURST_S`` of the rate, so an idle or failing link never saves up a burst, and
  bodies are paced in slices of ``SLICE_S`` of the rate, so one large part does not go at
  line rate and then wait.
* **Live first.** A stream is *live* while its file grows (changed within the live window,
  ``STREAM_TIMEOUT_SECONDS``), and stays live until it ends, so its last part and its
  completion are not queued behind the backlog; every other stream is the *backlog*,
  served in ``UPLOAD_ORDER`` (its file's mtime, oldest or newest first).
* **Nothing starves.** At the byte level the backlog is owed ``BACKLOG_SHARE`` of what is
  sent (bytes counted with an exponential decay of ``SHARE_TAU_S``): while live bodies want
  more than the limit, every fifth-or-so slice goes to the backlog. At the gates (the byte
  budget, the upload slots, ``MAX_STREAMS``) a backlog waiter goes first whenever the
  backlog holds nothing there, so it always has one part (one stream) going; and live
  recordings keep a reserve at those gates while a limit is in force, so a new live part
  never waits for a backlog part to finish.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

KIB = 1024
MIB = KIB * KIB
DAY_S = 86_400

Order = Literal["oldest", "newest"]
ORDERS: tuple[Order, ...] = ("oldest", "newest")

MIN_RATE = KIB  # 1 KiB/s: below it a part would take days and time out on any server
BURST_S = 0.1  # the bucket holds at most this much of the rate (two slices)
SLICE_S = 0.05  # a body is paced in slices of this much of the rate ...
MIN_SLICE = 4 * KIB  # ... never smaller (a grant per 4 KiB at 80 KiB/s) ...
MAX_SLICE = MIB  # ... nor larger than the body's own read block
BACKLOG_SHARE = 0.2  # owed to the backlog while live bodies want more than the limit
MIN_WAIT_S = 0.005  # a smaller debt is carried, not slept: each sleep wakes the loop
LIVE_GRACE_S = 0.02  # a live body's next slice is waited for this long before the backlog's
SHARE_TAU_S = 10.0  # the decay of the bytes counted for the share


# --- UPLOAD_BWLIMIT --------------------------------------------------------------------------

_RATE = re.compile(r"(?P<num>\d+(?:\.\d+)?)(?P<unit>[bBkKmMgG])")
_ENTRY = re.compile(r"(?P<h>\d{1,2}):(?P<m>\d{2}),(?P<rate>\S+)")
_UNITS = {"b": 1, "k": KIB, "m": MIB, "g": KIB * MIB}


def parse_rate(text: str) -> int | None:
    """Bytes per second of ``4M``, ``512k``, ``1.5G``, ``100000B``; None for ``off``.
    A bare number is refused: rclone reads it as KiB/s, most people as bytes."""
    word = text.strip()
    if word.lower() == "off":
        return None
    match = _RATE.fullmatch(word)
    if match is None:
        raise ValueError(
            f"{word!r} is not a rate: a number with a unit, k, M or G (KiB, MiB, GiB per "
            "second) or B (bytes), such as 512k or 4M, or off"
        )
    rate = math.floor(float(match["num"]) * _UNITS[match["unit"].lower()])
    if rate < MIN_RATE:
        raise ValueError(f"{word!r} is below the smallest rate, 1k (use off for no limit)")
    return rate


@dataclass(frozen=True, slots=True)
class Timetable:
    """``entries``: (second of the day, bytes per second or None for off), ascending; one
    entry at 0 for a constant limit."""

    entries: tuple[tuple[int, int | None], ...]

    @property
    def constant(self) -> bool:
        return len(self.entries) == 1

    def limit_at(self, second_of_day: float) -> int | None:
        """The limit in force at that local time: the last entry at or before it, else
        the day's last entry (carried over midnight)."""
        current = self.entries[-1][1]
        for start, rate in self.entries:
            if start <= second_of_day:
                current = rate
        return current

    def next_switch(self, second_of_day: float) -> float:
        """Seconds from ``second_of_day`` to the next entry's time (``inf`` when the limit
        never changes)."""
        if self.constant:
            return math.inf
        for start, _ in self.entries:
            if start > second_of_day:
                return start - second_of_day
        return DAY_S - second_of_day + self.entries[0][0]

    def describe(self) -> str:
        """As UPLOAD_BWLIMIT says it: ``4M``, ``08:00,512k 19:00,8M 23:00,off``."""
        if self.constant and self.entries[0][0] == 0:
            return _setting_rate(self.entries[0][1])
        return " ".join(f"{s // 3600:02d}:{s // 60 % 60:02d},{_setting_rate(r)}"
                        for s, r in self.entries)


def parse_bwlimit(text: str) -> Timetable | None:
    """``UPLOAD_BWLIMIT``: None when empty or ``off`` (no limit, ever); else its timetable.
    ``ValueError`` with a one-line reason otherwise."""
    words = text.split()
    if not words or (len(words) == 1 and words[0].lower() == "off"):
        return None
    if len(words) == 1 and "," not in words[0]:
        return Timetable(((0, parse_rate(words[0])),))
    entries: list[tuple[int, int | None]] = []
    for word in words:
        match = _ENTRY.fullmatch(word)
        if match is None:
            raise ValueError(
                f"{word!r} is not a timetable entry HH:MM,RATE (such as 08:00,512k); "
                "entries are separated by spaces, weekdays are not supported"
            )
        hour, minute = int(match["h"]), int(match["m"])
        if hour > 23 or minute > 59:
            raise ValueError(f"{word!r}: {hour:02d}:{minute:02d} is not a time of day")
        start = hour * 3600 + minute * 60
        if entries and start <= entries[-1][0]:
            raise ValueError(f"{word!r}: the entries' times must increase through the day")
        entries.append((start, parse_rate(match["rate"])))
    return Timetable(tuple(entries))


def _setting_rate(rate: int | None) -> str:
    if rate is None:
        return "off"
    for unit, size in (("G", KIB * MIB), ("M", MIB), ("k", KIB)):
        if rate >= size and rate % (size // 4) == 0:
            return f"{rate / size:g}{unit}"
    return f"{rate}B"


def format_rate(rate: int | float | None) -> str:
    """``4 MiB/s``, ``512 KiB/s``, ``off``."""
    if rate is None:
        return "off"
    for unit, size in (("GiB", KIB * MIB), ("MiB", MIB), ("KiB", KIB)):
        if rate >= size:
            value = rate / size
            return f"{value:.0f} {unit}/s" if value == int(value) else f"{value:.2f} {unit}/s"
    return f"{rate:.0f} B/s"


def drain_seconds(
    table: Timetable | None, second_of_day: float, nbytes: int, *, horizon_days: int = 7
) -> float | None:
    """How long ``nbytes`` take at the limits the timetable sets from ``second_of_day``
    on; None when no limit is in force now (as fast as the link: unknown here). An
    ``off`` period ahead ends the estimate there (the rest goes at the link's speed):
    the answer is then an upper bound. Live recordings' share is not counted."""
    if table is None or table.limit_at(second_of_day) is None:
        return None
    left, elapsed, now = float(nbytes), 0.0, second_of_day
    while left > 0 and elapsed < horizon_days * DAY_S:
        rate = table.limit_at(now % DAY_S)
        if rate is None:
            return elapsed
        span = table.next_switch(now % DAY_S)
        if left <= rate * span:
            return elapsed + left / rate
        left -= rate * span
        elapsed += span
        now += span
    return elapsed


# --- the token bucket ------------------------------------------------------------------------


def slice_size(rate: int) -> int:
    """Bytes per grant at ``rate``."""
    return max(MIN_SLICE, min(MAX_SLICE, int(rate * SLICE_S)))


@dataclass(slots=True)
class TokenBucket:
    """Bytes that may be sent now (``tokens``; negative: a debt the last sender waits out),
    refilled at ``rate`` up to ``BURST_S`` of it. It starts empty: nothing is saved up
    before the first byte either."""

    rate: int
    stamp: float
    tokens: float = 0.0

    @property
    def burst(self) -> float:
        return max(float(slice_size(self.rate)), self.rate * BURST_S)

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def debit(self, now: float, nbytes: int) -> float:
        """Take ``nbytes``; the seconds to wait before sending them (0: at once). A debt
        under ``MIN_WAIT_S`` is not waited for but kept: the next sender waits it out."""
        self._refill(now)
        self.tokens -= nbytes
        wait = -self.tokens / self.rate
        return wait if wait >= MIN_WAIT_S else 0.0

    def set_rate(self, now: float, rate: int) -> None:
        """A new limit from ``now``: what was earned so far at the old one is kept (up to
        the new burst), a debt stays a debt in bytes."""
        self._refill(now)
        self.rate = rate
        self.tokens = min(self.tokens, self.burst)


# --- who goes first --------------------------------------------------------------------------


def order_key(order: Order, mtime: float) -> float:
    """A backlog file's place in ``UPLOAD_ORDER``: smaller goes first."""
    return mtime if order == "oldest" else -mtime


def is_live(mtime_age: float, window: float) -> bool:
    """A file changed less than ``window`` seconds ago is being written."""
    return mtime_age < window


@dataclass(frozen=True, slots=True)
class Claim:
    """One waiter at a gate or at the pacer: live or backlog, its backlog order (smaller
    first), and its arrival."""

    live: bool
    key: float
    seq: int


def gate_rank(claim: Claim, backlog_starved: bool) -> tuple[int, float, int]:
    """The order of waiters at a gate (the byte budget, the upload slots, MAX_STREAMS):
    live first, in arrival order; then the backlog in UPLOAD_ORDER. When the backlog holds
    nothing at the gate (``backlog_starved``) its first waiter goes before the live ones."""
    if claim.live:
        return (1 if backlog_starved else 0, 0.0, claim.seq)
    return (0 if backlog_starved else 1, claim.key, claim.seq)


def gate_admits(
    claim: Claim, amount: int, *, in_use: int, backlog_in_use: int, limit: int, reserve: int
) -> bool:
    """Whether the waiter at the head of a gate may take ``amount`` of its ``limit``. A
    request larger than the whole gate waits until the gate is empty. ``reserve``: what the
    backlog must leave for live waiters (while a limit is in force), except when it holds
    nothing there: it always gets one."""
    if in_use and in_use + amount > limit:
        return False
    if claim.live or not backlog_in_use:
        return True
    return backlog_in_use + amount <= limit - reserve


def gate_reserve(limit: int, unit: int) -> int:
    """What live waiters keep at a gate of ``limit`` whose requests are ``unit`` each: one
    unit, when the gate holds two, and an eighth of a large gate (MAX_STREAMS)."""
    if limit < 2 * unit:
        return 0
    return max(unit, (limit // 8) // unit * unit)


@dataclass(slots=True)
class Shares:
    """Bytes granted to live and backlog bodies, decayed with ``SHARE_TAU_S``: the backlog
    is owed ``BACKLOG_SHARE`` of them."""

    stamp: float = 0.0
    live: float = 0.0
    backlog: float = 0.0

    def _decay(self, now: float) -> None:
        if now > self.stamp:
            factor = math.exp(-(now - self.stamp) / SHARE_TAU_S)
            self.live *= factor
            self.backlog *= factor
            self.stamp = now

    def backlog_due(self, now: float) -> bool:
        self._decay(now)
        return self.backlog <= BACKLOG_SHARE * (self.live + self.backlog)

    def granted(self, now: float, live: bool, nbytes: int) -> None:
        self._decay(now)
        if live:
            self.live += nbytes
        else:
            self.backlog += nbytes


def pick(waiting: Sequence[Claim], backlog_due: bool) -> int:
    """Index of the waiter the pacer serves next: the first live one in arrival order,
    unless the backlog is owed its share (``backlog_due``) or no live one waits; then the
    backlog's first, in arrival order (every started backlog body keeps moving: the
    UPLOAD_ORDER is kept at the gates, where parts start)."""
    first_live = first_backlog = -1
    for index, claim in enumerate(waiting):
        if claim.live:
            if first_live < 0 or claim.seq < waiting[first_live].seq:
                first_live = index
        elif first_backlog < 0 or claim.seq < waiting[first_backlog].seq:
            first_backlog = index
    if first_live < 0 or (backlog_due and first_backlog >= 0):
        return first_backlog
    return first_live


def backlog_holds_off(now: float, live_released: float, backlog_due: bool) -> float:
    """Seconds the backlog's next slice waits for a live body that just had its slice: a
    body asks for its next slice only once it wrote the last, so without this grace the
    backlog would take every other slice from a live recording that wants them all."""
    if backlog_due:
        return 0.0
    return max(0.0, live_released + LIVE_GRACE_S - now)


def stream_may_open(
    live: bool, *, open_live: int, open_backlog: int, max_streams: int, reserve: int
) -> bool:
    """MAX_STREAMS with live first: a live file may take any free room, a backlog file
    only outside the live reserve, unless no backlog stream is open at all."""
    total = open_live + open_backlog
    if total >= max_streams:
        return False
    return live or not open_backlog or total < max_streams - reserve


# --- what `status` says ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pending:
    """One file's bytes not in S3 yet (its size less what its stream uploaded), and its
    mtime."""

    nbytes: int
    mtime: float


@dataclass(frozen=True, slots=True)
class Backlog:
    nbytes: int = 0
    files: int = 0
    live_bytes: int = 0
    live_files: int = 0


def split_backlog(pending: Sequence[Pending], now: float, window: float) -> Backlog:
    """The backlog (files not growing) and the live recordings' part of ``pending``."""
    nbytes = files = live_bytes = live_files = 0
    for item in pending:
        if item.nbytes <= 0:
            continue
        if is_live(now - item.mtime, window):
            live_bytes += item.nbytes
            live_files += 1
        else:
            nbytes += item.nbytes
            files += 1
    return Backlog(nbytes, files, live_bytes, live_files)


def format_bytes(nbytes: int) -> str:
    for unit, size in (("GiB", KIB * MIB), ("MiB", MIB), ("KiB", KIB)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} B"


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def limit_summary(table: Timetable | None, second_of_day: float) -> str:
    """The limit in force now and, with a timetable, the next one and when."""
    if table is None:
        return "upload limit: none (UPLOAD_BWLIMIT is empty)"
    now = format_rate(table.limit_at(second_of_day))
    if table.constant:
        return f"upload limit: {now}"
    after = (second_of_day + table.next_switch(second_of_day)) % DAY_S
    then = format_rate(table.limit_at(after))
    at = f"{int(after) // 3600:02d}:{int(after) // 60 % 60:02d}"
    return f"upload limit now: {now}, {then} from {at} (timetable {table.describe()})"


def backlog_summary(
    backlog: Backlog, table: Timetable | None, second_of_day: float, *, label: str = "backlog"
) -> str:
    """The backlog's bytes and how long they take to drain at the limits to come."""
    text = f"{label}: {format_bytes(backlog.nbytes)} in {backlog.files} file(s) not growing"
    if backlog.live_files:
        text += (f"; live: {format_bytes(backlog.live_bytes)} in {backlog.live_files} "
                 "recording(s), served first")
    if not backlog.nbytes:
        return text
    drain = drain_seconds(table, second_of_day, backlog.nbytes + backlog.live_bytes)
    if drain is None:
        return text + "; no limit now: it drains as fast as the link allows"
    rate_now = table.limit_at(second_of_day) if table is not None else None
    bound = rate_now is not None and drain < (backlog.nbytes + backlog.live_bytes) / rate_now
    ends = " at most (the limit goes off before)" if bound and table is not None else ""
    return text + f"; drains in about {format_duration(drain)}{ends} at the limits in force"
