"""One task per stream: follow the file, start each full part as soon as it exists, and
hand over to ``finalize`` when the file stops growing.

The worker holds the file open, so a file deleted or renamed mid-recording is still read to
its last byte; every decision is made from ``fstat`` of that descriptor, never from names.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections import deque
from dataclasses import replace

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.core.ending import CompletedBy, truncated
from cefmp4.core.follow import due_parts, next_wake
from cefmp4.core.identity import Fingerprint, Ident, fingerprint
from cefmp4.runtime import logs
from cefmp4.streams.context import Context
from cefmp4.streams.recheck import QUIET_MARGIN_S, Predigest, needs_md5
from cefmp4.streams.tail import TailShipper
from cefmp4.streams.upload import Uploader
from cefmp4.streams.writer_policy import StreamWriters, Verdict

log = structlog.get_logger("cefmp4.streams.stream")


class Outcome(enum.Enum):
    IDLE = "idle"  # no growth for the timeout: finalize
    TRUNCATED = "truncated"  # bytes already uploaded are gone: finalize what was uploaded
    SHUTDOWN = "shutdown"  # stop now, stay resumable


class Growth:
    """What the follow loop has seen of the file: size, last change, pending bytes' age."""

    def __init__(self, ctx: Context) -> None:
        self._clock = ctx.clock
        self.size = 0
        self.mtime_ns = 0
        self.last_change = self._clock.monotonic()
        # (size, wall time first seen) per observed growth: the age of the oldest byte that
        # is not in S3 yet is the recovery-point objective (oldest_pending_age_seconds).
        self._seen: deque[tuple[int, float]] = deque()
        # Set while the file has not changed since it was first seen, already settled then.
        self.quiet: Fingerprint | None = None

    def observe(self, st: os.stat_result) -> None:
        now = self._clock.time()
        if self.size == 0 and self.mtime_ns == 0:
            if now - st.st_mtime_ns / 1e9 >= QUIET_MARGIN_S:
                self.quiet = fingerprint(st)
        elif fingerprint(st) != self.quiet:
            self.quiet = None
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            if st.st_size > self.size:
                self._seen.append((st.st_size, now))
            self.size = st.st_size
            self.mtime_ns = st.st_mtime_ns
            self.last_change = self._clock.monotonic()

    def resume_from(self, st: os.stat_result, durable: int) -> None:
        """On (re)start, a file unchanged for a while is already that far into its idle wait."""
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        idle_for = max(0.0, self._clock.time() - st.st_mtime_ns / 1e9)
        self.last_change = self._clock.monotonic() - idle_for
        if self.size > durable:
            self._seen.append((self.size, st.st_mtime_ns / 1e9))

    def idle_for(self) -> float:
        return self._clock.monotonic() - self.last_change

    def pending(self, durable: int, now: float) -> tuple[int, float]:
        """(bytes on disk not yet durable in S3, age in seconds of the oldest of them)."""
        while self._seen and self._seen[0][0] <= durable:
            self._seen.popleft()
        pending = max(0, self.size - durable)
        if not pending:
            return 0, 0.0
        first_seen = self._seen[0][1] if self._seen else now
        return pending, max(0.0, now - first_seen)


class StreamWorker:
    def __init__(
        self,
        ctx: Context,
        record: StreamRecord,
        fd: int,
        parts: list[PartRecord],
        shutdown: asyncio.Event,
        *,
        stream_timeout: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.fd = fd
        self.shutdown = shutdown
        self.timeout = ctx.config.stream_timeout if stream_timeout is None else stream_timeout
        self.wake = asyncio.Event()
        self.up = Uploader(ctx, record, fd, parts, on_part_done=self.wake.set)
        self.growth = Growth(ctx)
        self.predigest = Predigest(
            fd, self.up.schedule, ctx.clock, record.stream_id, lambda: needs_md5(self.up.parts)
        )
        rpo = ctx.config.rpo_seconds
        self.tail = None if rpo is None else TailShipper(
            ctx, fd, lambda: self.up.record, self.up.ensure_upload, every=rpo,
            limit=record.part_size)
        # Live or backlog, and its place in UPLOAD_ORDER (§2.21): the supervisor makes it
        # the stream task's lane, so every byte the stream sends is paced as its own.
        self.lane = ctx.uplink.lane()
        ctx.uplink.observe(self.lane, os.fstat(fd).st_mtime, ctx.clock.time(), first=True)
        self.lease_lost = False  # another instance took the stream over (scale-out)
        self.completed_by: CompletedBy | None = None  # set when follow() judges it complete

    # --- observation ---------------------------------------------------------------------

    @property
    def record(self) -> StreamRecord:
        return self.up.record

    @record.setter
    def record(self, value: StreamRecord) -> None:
        self.up.record = value

    @property
    def ident(self) -> Ident:
        return (self.up.record.device, self.up.record.inode)

    @property
    def stream_id(self) -> str:
        return self.up.record.stream_id

    def pending(self, now: float) -> tuple[int, float]:
        """Bytes not in S3 yet and the age of the oldest: a tail segment counts as in S3."""
        durable = self.up.durable_bytes()
        if self.tail is not None:
            durable = max(durable, self.tail.shipped)
        return self.growth.pending(durable, now)

    def notice_path(self, path: str) -> None:
        """The file was seen under ``path`` (a rename keeps the stream)."""
        if path != self.record.path:
            log.info(logs.STREAM_RENAMED, old_path=self.record.path, path=path)
            self.record = replace(self.record, path=path)
        self.wake.set()

    def start_idle_clock(self, st: os.stat_result) -> None:
        self.growth.resume_from(st, self.up.durable_bytes())

    def quiet_since_start(self, st: os.stat_result) -> bool:
        """The file was already finished when the stream began and has not changed since."""
        return self.growth.quiet == fingerprint(st)

    # --- the follow loop -----------------------------------------------------------------

    async def follow(self) -> Outcome:
        """Upload full parts while the file grows; return why following stopped."""
        try:
            return await self._follow_watching()
        finally:
            await self._stop_tail()  # what it shipped stays until the object is complete

    async def _stop_tail(self) -> None:
        if self.tail is not None:
            await self.tail.stop()

    async def _follow_watching(self) -> Outcome:
        policy = self.ctx.writers
        if policy is None or not policy.enabled:
            return await self._follow(None)
        ident = (self.record.device, self.record.inode)
        writers = policy.track(ident, self.record.path, self.wake.set, self.fd)
        try:
            return await self._follow(writers)
        finally:
            policy.untrack(writers)

    async def _judge(self, writers: StreamWriters | None, idle_for: float) -> Verdict:
        """Whether the stream is complete now, and what completed it (§2.14)."""
        policy = self.ctx.writers
        if writers is None or policy is None:
            if idle_for < self.timeout:
                return Verdict(None)
            by = CompletedBy.UPLOAD_COMMAND if self.ctx.upload_command else CompletedBy.IDLE_TIMEOUT
            return Verdict(by)
        fp = (self.growth.size, self.growth.mtime_ns)
        return await policy.decide(writers, fingerprint=fp, idle_for=idle_for,
                                   timeout=self.timeout)

    async def _follow(self, writers: StreamWriters | None) -> Outcome:
        while True:
            st = os.fstat(self.fd)
            extent = self.up.uploaded_extent()
            if truncated(st.st_size, extent):
                log.warning(logs.STREAM_TRUNCATED, size=st.st_size, uploaded=extent)
                await self.up.cancel_beyond(st.st_size)
                return Outcome.TRUNCATED
            self.growth.observe(st)
            self.ctx.uplink.observe(self.lane, st.st_mtime, self.ctx.clock.time())
            await self.up.reap()
            if self.shutdown.is_set():
                return Outcome.SHUTDOWN
            self._start_ready_parts()
            if self.tail is not None:
                self.tail.maybe_ship(self.up.durable_bytes(), self.growth.size)
            idle_for = self.growth.idle_for()
            verdict = await self._judge(writers, idle_for)
            if verdict.complete is not None:
                self.completed_by = verdict.complete
                log.info(logs.STREAM_IDLE, idle_s=round(idle_for, 2), size=self.growth.size,
                         completed_by=verdict.complete.value)
                return Outcome.IDLE
            if not self.up.inflight():
                # The horizon is when the stream may complete: a writer's close can bring it
                # nearer than the idle timeout, and the pass must be done by then.
                horizon = self.timeout
                if verdict.recheck_in is not None:
                    horizon = min(horizon, idle_for + verdict.recheck_in)
                self.predigest.maybe_start(idle_for, horizon, self.quiet_since_start(st))
            self.wake.clear()
            wait = next_wake(
                poll=self.ctx.config.poll_interval, idle_for=idle_for, timeout=self.timeout,
                recheck_in=verdict.recheck_in,
                tail_due_in=None if self.tail is None else self.tail.due_in(),
            )
            await self.ctx.clock.wait(self.wake, wait)

    def _start_ready_parts(self) -> None:
        up = self.up
        for number, offset, size in due_parts(
            up.schedule, self.growth.size, up.parts, up.inflight_numbers(),
            limit=self.ctx.config.parts_in_flight,
        ):
            up.start_part(number, offset, size)

    async def stop(self) -> None:
        """Cancel everything this stream has running (the descriptor is the caller's)."""
        await self.predigest.cancel()
        await self._stop_tail()
        await self.up.cancel_inflight()


def pending_total(workers: list[StreamWorker], now: float) -> tuple[int, float]:
    """(bytes on disk not yet in S3, age of the oldest of them) over ``workers``."""
    total, oldest = 0, 0.0
    for worker in workers:
        nbytes, age = worker.pending(now)
        total += nbytes
        oldest = max(oldest, age)
    return total, oldest
