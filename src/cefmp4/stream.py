"""One task per stream: follow the file, upload each full part as soon as it exists, and
hand over to ``finalize`` when the file stops growing.

The worker holds the file open, so a file deleted or renamed mid-recording is still read to
its last byte; every decision is made from ``fstat`` of that descriptor, never from names.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import time
from collections import deque
from dataclasses import replace

import structlog

from cefmp4 import logs
from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.errors import ContentChanged, SourceError, UploadNotFound
from cefmp4.parts import PartSchedule
from cefmp4.pipeline import Context
from cefmp4.upload import FileRange, RunningSha256, hash_range
from cefmp4.verify import QUIET_MARGIN_S, Predigest

log = structlog.get_logger("cefmp4.stream")



class Outcome(enum.Enum):
    IDLE = "idle"  # no growth for the timeout: finalize
    TRUNCATED = "truncated"  # bytes already uploaded are gone: finalize what was uploaded
    SHUTDOWN = "shutdown"  # stop now, stay resumable


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
        self.record = record
        self.fd = fd
        self.schedule = PartSchedule(record.part_size, record.max_parts)
        self.parts: dict[int, PartRecord] = {p.part_number: p for p in parts}
        self.shutdown = shutdown
        self.timeout = ctx.config.stream_timeout if stream_timeout is None else stream_timeout
        self.wake = asyncio.Event()
        self.size = 0
        self.mtime_ns = 0
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._create_lock = asyncio.Lock()
        self._last_change = time.monotonic()
        # (size, wall time first seen) per observed growth: the age of the oldest byte that
        # is not in S3 yet is the recovery-point objective (oldest_pending_age_seconds).
        self._growth: deque[tuple[int, float]] = deque()
        self.reuploaded = 0
        self.lease_lost = False  # another instance took the stream over (scale-out)
        # SHA-256 built while parts are read; with a quiet file it spares finalize a pass.
        self.running_sha: RunningSha256 | None = None if parts else RunningSha256()
        self._hash_lock = asyncio.Lock()  # parts are hashed one at a time, in order
        self.predigest = Predigest(self)
        self.quiet_stat: tuple[int, int, int] | None = None  # (size, mtime_ns, ctime_ns)

    # --- observation ---------------------------------------------------------------------

    @property
    def stream_id(self) -> str:
        return self.record.stream_id

    def durable_bytes(self) -> int:
        """Length of the contiguous prefix of the file that is uploaded and checkpointed."""
        n, end = 1, 0
        while (part := self.parts.get(n)) is not None:
            end = part.offset + part.size
            n += 1
        return end

    def pending(self, now: float) -> tuple[int, float]:
        """(bytes on disk not yet durable in S3, age in seconds of the oldest of them)."""
        durable = self.durable_bytes()
        while self._growth and self._growth[0][0] <= durable:
            self._growth.popleft()
        pending = max(0, self.size - durable)
        if not pending:
            return 0, 0.0
        first_seen = self._growth[0][1] if self._growth else now
        return pending, max(0.0, now - first_seen)

    def notice_path(self, path: str) -> None:
        """The file was seen under ``path`` (a rename keeps the stream)."""
        if path != self.record.path:
            log.info(logs.STREAM_RENAMED, old_path=self.record.path, path=path)
            self.record = replace(self.record, path=path)
        self.wake.set()

    def _observe(self, st: os.stat_result) -> None:
        fingerprint = (st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if self.size == 0 and self.mtime_ns == 0:
            if self.ctx.clock() - st.st_mtime_ns / 1e9 >= QUIET_MARGIN_S:
                self.quiet_stat = fingerprint
        elif fingerprint != self.quiet_stat:
            self.quiet_stat = None
        if st.st_size != self.size or st.st_mtime_ns != self.mtime_ns:
            if st.st_size > self.size:
                self._growth.append((st.st_size, self.ctx.clock()))
            self.size = st.st_size
            self.mtime_ns = st.st_mtime_ns
            self._last_change = time.monotonic()

    def start_idle_clock(self, st: os.stat_result) -> None:
        """On (re)start, a file unchanged for a while is already that far into its idle wait."""
        self.size, self.mtime_ns = st.st_size, st.st_mtime_ns
        idle_for = max(0.0, self.ctx.clock() - st.st_mtime_ns / 1e9)
        self._last_change = time.monotonic() - idle_for
        if self.size > self.durable_bytes():
            self._growth.append((self.size, st.st_mtime_ns / 1e9))

    # --- the follow loop -----------------------------------------------------------------

    async def follow(self) -> Outcome:
        """Upload full parts while the file grows; return why following stopped."""
        while True:
            st = os.fstat(self.fd)
            if st.st_size < self.uploaded_extent():
                log.warning(logs.STREAM_TRUNCATED, size=st.st_size, uploaded=self.uploaded_extent())
                return Outcome.TRUNCATED
            self._observe(st)
            await self._reap_parts()
            if self.shutdown.is_set():
                return Outcome.SHUTDOWN
            self._start_ready_parts()
            idle_for = time.monotonic() - self._last_change
            if idle_for >= self.timeout:
                log.info(logs.STREAM_IDLE, idle_s=round(idle_for, 2), size=self.size)
                return Outcome.IDLE
            if not self._inflight:
                self.predigest.maybe_start(idle_for)
            self.wake.clear()
            wait = min(self.ctx.config.poll_interval, self.timeout - idle_for)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()

    def quiet_since_start(self, st: os.stat_result) -> bool:
        """The file was already finished when the stream began and has not changed since."""
        return self.quiet_stat == (st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def contiguous_parts(self) -> list[PartRecord]:
        parts: list[PartRecord] = []
        while (part := self.parts.get(len(parts) + 1)) is not None:
            parts.append(part)
        return parts

    def uploaded_extent(self) -> int:
        """End of the furthest uploaded part (not necessarily contiguous)."""
        return max((p.offset + p.size for p in self.parts.values()), default=0)

    def _start_ready_parts(self) -> None:
        n = 1
        limit = self.ctx.config.parts_in_flight
        while len(self._inflight) < limit and n <= self.record.max_parts:
            offset, size = self.schedule.offset_of(n), self.schedule.size_of(n)
            if offset + size > self.size:
                return  # only full parts go up while the stream is active
            if n not in self.parts and n not in self._inflight:
                self.start_part(n, offset, size)
            n += 1

    def start_part(self, number: int, offset: int, size: int) -> asyncio.Task[None]:
        task = asyncio.create_task(
            self._upload_part(number, offset, size), name=f"part-{self.stream_id}-{number}"
        )
        self._inflight[number] = task
        task.add_done_callback(lambda _t: self.wake.set())
        return task

    async def _reap_parts(self) -> None:
        """Surface failures of finished part tasks (they must never vanish silently)."""
        for number, task in list(self._inflight.items()):
            if task.done():
                del self._inflight[number]
                exc = task.exception()
                if isinstance(exc, UploadNotFound):
                    await self.restart_upload(str(exc))
                elif isinstance(exc, SourceError):
                    # The file shrank between fstat and read; the next turn sees it.
                    log.warning(logs.SOURCE_CHANGED, part_number=number, error=str(exc))
                elif exc is not None:
                    raise exc

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for every part in flight (cancel what is left after ``timeout``)."""
        if not self._inflight:
            return
        numbers = {task: n for n, task in self._inflight.items()}
        _done, pending = await asyncio.wait(numbers, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            for task in pending:
                self._inflight.pop(numbers[task], None)
        await self._reap_parts()

    async def cancel_inflight(self) -> None:
        await self.predigest.cancel()
        for task in self._inflight.values():
            task.cancel()
        await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        self._inflight.clear()

    # --- parts -----------------------------------------------------------------------------

    async def ensure_upload(self) -> str:
        """The multipart upload id, created (and checkpointed) on first use."""
        async with self._create_lock:
            if self.record.upload_id is None:
                ctx = self.ctx
                upload_id = await ctx.retry(
                    "create",
                    lambda: ctx.objects.create_multipart(self.record.key, "video/mp4"),
                )
                ctx.failpoints.hit("after_create")
                self.record = replace(self.record, upload_id=upload_id)
                await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(self.record))
                log.info(logs.UPLOAD_CREATED, key=self.record.key, upload_id=upload_id)
                return upload_id
            return self.record.upload_id

    async def _upload_part(self, number: int, offset: int, size: int) -> None:
        ctx = self.ctx
        reupload = number in self.parts
        async with ctx.budget.hold(size):
            md5_hex, md5_b64 = await self._hash_part(number, offset, size)
            upload_id = await self.ensure_upload()
            md5 = [md5_hex, md5_b64]

            async def attempt() -> str:
                try:
                    return await ctx.objects.upload_part(
                        self.record.key, upload_id, number, FileRange(self.fd, offset, size),
                        md5[1],
                    )
                except ContentChanged:
                    # The recorder rewrote these bytes after we hashed them: hash again.
                    if self.running_sha is not None:
                        self.running_sha.invalidate()
                    md5[:] = await asyncio.to_thread(hash_range, self.fd, offset, size)
                    raise

            async with ctx.upload_slots:
                started = time.monotonic()
                etag = await ctx.retry("upload_part", attempt)
                ctx.metrics.chunk_upload_seconds.observe(time.monotonic() - started)
            md5_hex = md5[0]
        ctx.failpoints.hit("after_upload_part")
        part = PartRecord(number, offset, size, etag, md5_hex, ctx.clock())
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_part(self.stream_id, part))
        self.parts[number] = part
        ctx.metrics.chunks_uploaded.inc()
        ctx.metrics.bytes_uploaded.inc(size)
        if reupload:
            self.reuploaded += 1
            ctx.metrics.parts_reuploaded.inc()
        log.info(
            logs.PART_REUPLOADED if reupload else logs.PART_UPLOADED,
            part_number=number, offset=offset, size=size, etag=etag,
        )

    async def _hash_part(self, number: int, offset: int, size: int) -> tuple[str, str]:
        """Content-MD5 of the part, feeding the running SHA-256 when it is next in order."""
        running = self.running_sha
        async with self._hash_lock:
            sha = running.for_part(number) if running is not None else None
            try:
                digest = await asyncio.to_thread(hash_range, self.fd, offset, size, sha)
            except BaseException:
                if running is not None and sha is not None:
                    running.invalidate()  # the digest may hold part of this range
                raise
            if running is not None and sha is not None:
                running.fed(number)
            return digest

    async def restart_upload(self, reason: str) -> None:
        """S3 forgot the upload (expired, aborted): start this stream again from byte 0."""
        log.warning(logs.UPLOAD_RESTARTED, reason=reason, parts_lost=len(self.parts))
        await self.cancel_inflight()
        ctx = self.ctx
        self.ctx.metrics.parts_reuploaded.inc(len(self.parts))
        self.parts.clear()
        self.running_sha = RunningSha256()
        self.record = replace(self.record, upload_id=None)
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.delete_parts(self.stream_id))
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(self.record))
