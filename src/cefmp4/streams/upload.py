"""One stream's multipart upload: create it, send parts with retry, checkpoint each part,
restart it when S3 forgot it. The byte budget (``cefmp4.streams.budget``) bounds what all streams
hold in flight; ``upload_slots`` bounds the UploadPart calls running at once. Both serve
live recordings first (the stream's lane, ``streams.uplink``).
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Collection
from dataclasses import replace

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.core.containers import content_type
from cefmp4.core.ending import Resume, truncated, when_upload_gone
from cefmp4.core.follow import doomed_parts, durable_bytes, uploaded_extent
from cefmp4.core.hashing import PartDigest, header_window
from cefmp4.core.parts import PartSchedule
from cefmp4.runtime import logs
from cefmp4.runtime.clock import wait_tasks
from cefmp4.runtime.errors import (
    ContentChanged,
    ObjectExists,
    SourceError,
    UploadNotFound,
    UploadTaken,
)
from cefmp4.streams.context import Context
from cefmp4.streams.objects import object_at
from cefmp4.streams.source import FileRange, RunningSha256, digest_range

log = structlog.get_logger("cefmp4.streams.upload")


class Uploader:
    """The S3 side of one stream: its record (key, upload id), its parts, the part tasks.

    The record lives here because the upload id is part of it; ``StreamWorker`` and
    ``finalize`` read and replace it through ``record``. Eleven attributes: the upload's
    state is this much, and splitting it would hand the same record to two owners.
    """

    def __init__(
        self,
        ctx: Context,
        record: StreamRecord,
        fd: int,
        parts: list[PartRecord],
        on_part_done: Callable[[], None],
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.fd = fd
        self.schedule = PartSchedule(record.part_size, record.max_parts)
        self.parts: dict[int, PartRecord] = {p.part_number: p for p in parts}
        self.reuploaded = 0
        # SHA-256 built while parts are read; with a quiet file it spares finalize a pass.
        self.running_sha: RunningSha256 | None = None if parts else RunningSha256()
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._sent: set[int] = set()  # in flight, S3 has the part: only its checkpoint is due
        self._create_lock = asyncio.Lock()
        self._hash_lock = asyncio.Lock()  # parts are hashed one at a time, in order
        self._on_part_done = on_part_done

    # --- what is uploaded ------------------------------------------------------------------

    def all_parts(self) -> list[PartRecord]:
        """Every checkpointed part, by number: an object kept of what S3 holds decides
        itself which it uses (a gap may be filled from tail segments)."""
        return [self.parts[n] for n in sorted(self.parts)]

    def durable_bytes(self) -> int:
        """Length of the contiguous prefix of the file that is uploaded and checkpointed."""
        return durable_bytes(self.parts)

    def uploaded_extent(self) -> int:
        """End of the furthest uploaded part (not necessarily contiguous)."""
        return uploaded_extent(self.parts)

    def inflight(self) -> int:
        return len(self._inflight)

    def inflight_numbers(self) -> Collection[int]:
        return self._inflight.keys()

    def is_inflight(self, number: int) -> bool:
        return number in self._inflight

    def forget_parts_beyond(self, count: int) -> None:
        """The file is shorter than parts we uploaded: they will not be part of the object."""
        for number in [n for n in self.parts if n > count]:
            del self.parts[number]

    # --- part tasks ------------------------------------------------------------------------

    def start_part(self, number: int, offset: int, size: int) -> asyncio.Task[None]:
        task = asyncio.create_task(
            self._upload_part(number, offset, size),
            name=f"part-{self.record.stream_id}-{number}",
        )
        self._inflight[number] = task
        task.add_done_callback(lambda _t: self._on_part_done())
        return task

    async def reap(self) -> None:
        """Take finished part tasks out and surface their failures (never silently).

        The finished tasks are removed before any of them is acted on: a restart clears
        the tasks still in flight, and must not pull them from under this loop.
        """
        finished = [(n, t) for n, t in self._inflight.items() if t.done()]
        for number, _task in finished:
            del self._inflight[number]
        restart: UploadNotFound | None = None
        for number, task in finished:
            exc = None if task.cancelled() else task.exception()
            if isinstance(exc, UploadNotFound):
                restart = restart or exc
            elif isinstance(exc, SourceError):
                # The file shrank between fstat and read; the follow loop sees it next.
                log.warning(logs.SOURCE_CHANGED, part_number=number, error=str(exc))
            elif exc is not None:
                raise exc
        if restart is not None:
            await self.restart(str(restart))

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for every part in flight (cancel what is left after ``timeout``)."""
        if self._inflight:
            pending = await wait_tasks(self.ctx.clock, list(self._inflight.values()), timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        await self.reap()

    async def drain_watching(self, timeout: float | None = None) -> bool:
        """``drain``, with a look at the file every poll interval meanwhile: an outage can
        hold a part back for minutes, and a truncation in that time must be seen even when
        the file grows back before the part goes through. True at once on a truncation
        (the parts past it cancelled, the rest left running: the end is checkpointed
        first, so that a crash meanwhile cannot forget it)."""
        clock = self.ctx.clock
        deadline = None if timeout is None else clock.monotonic() + timeout
        while self._inflight:
            step = self.ctx.config.poll_interval
            if deadline is not None:
                step = min(step, max(0.0, deadline - clock.monotonic()))
            pending = await wait_tasks(clock, list(self._inflight.values()), step)
            if truncated((st := os.fstat(self.fd)).st_size, self.uploaded_extent()):
                await self.cancel_beyond(st.st_size)
                return True
            if not pending or (deadline is not None and clock.monotonic() >= deadline):
                break
        await self.drain(timeout=0 if deadline is not None else None)
        return False

    async def cancel_beyond(self, size: int) -> None:
        """Cancel the parts in flight that reach past ``size`` (the file was truncated):
        they cannot succeed, and must not be waited for (``core.follow.doomed_parts``)."""
        doomed = doomed_parts(self.schedule, self._inflight, self._sent, size)
        tasks = [self._inflight.pop(n) for n in doomed]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def cancel_inflight(self) -> None:
        tasks = list(self._inflight.values())
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- S3 --------------------------------------------------------------------------------

    async def ensure_upload(self) -> str:
        """The multipart upload id, created (and checkpointed) on first use."""
        async with self._create_lock:
            if self.record.upload_id is not None:
                return self.record.upload_id
            ctx = self.ctx
            key = self.record.key
            ctype = content_type(self.record.rel_path)
            upload_id = await ctx.retry(
                "create", lambda: ctx.objects.create_multipart(key, ctype)
            )
            ctx.failpoints.hit("after_create")
            self.record = replace(self.record, upload_id=upload_id)
            record = self.record
            await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
            log.info(logs.UPLOAD_CREATED, key=key, upload_id=upload_id)
            return upload_id

    async def _upload_part(self, number: int, offset: int, size: int) -> None:
        ctx = self.ctx
        reupload = number in self.parts
        async with ctx.budget.hold(size):
            # MD5 only where the store verifies nothing cheaper (Content-MD5).
            mode = await ctx.objects.part_checksum()
            md5 = mode == "md5"
            # A FULL_OBJECT upload's parts carry their CRC64NVME (§2.22).
            crc64 = mode == "crc64nvme"
            digest = [await self._hash_part(number, offset, size, md5)]
            upload_id = await self.ensure_upload()
            key = self.record.key

            async def attempt() -> str:
                # Every attempt looks at the file first: a truncation while a part was in
                # flight (the body reader's error may reach us as a transport error) must
                # end the part, never send other bytes under the old part number.
                if os.fstat(self.fd).st_size < offset + size:
                    raise SourceError(f"file shrank below byte {offset + size}")
                try:
                    return await ctx.objects.upload_part(
                        key, upload_id, number, FileRange(self.fd, offset, size),
                        digest[0].md5_b64, crc32c_b64=digest[0].crc32c_b64,
                        **({"crc64nvme_b64": digest[0].crc64nvme_b64} if crc64 else {}),
                    )
                except ContentChanged:
                    # The recorder rewrote these bytes after we hashed them: hash again.
                    if self.running_sha is not None:
                        self.running_sha.invalidate()
                    digest[0] = await asyncio.to_thread(functools.partial(
                        digest_range, self.fd, offset, size, md5=md5,
                        past=header_window(number, offset, size)))
                    raise

            async with ctx.upload_slots.hold(1):
                started = ctx.clock.monotonic()
                etag = await ctx.retry("upload_part", attempt)
                ctx.metrics.chunk_upload_seconds.observe(ctx.clock.monotonic() - started)
        ctx.failpoints.hit("after_upload_part")
        part = PartRecord(number, offset, size, etag, digest[0].record, ctx.clock.time())
        stream_id = self.record.stream_id
        self._sent.add(number)
        try:
            await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_part(stream_id, part))
        finally:
            self._sent.discard(number)
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

    async def _hash_part(self, number: int, offset: int, size: int, md5: bool) -> PartDigest:
        """The part's digest, feeding the running SHA-256 when it is next in order."""
        running = self.running_sha
        async with self._hash_lock:
            sha = running.for_part(number) if running is not None else None
            try:
                digest = await asyncio.to_thread(functools.partial(
                    digest_range, self.fd, offset, size, sha, md5=md5,
                    past=header_window(number, offset, size)))
            except BaseException:
                if running is not None and sha is not None:
                    running.invalidate()  # the digest may hold part of this range
                raise
            if running is not None and sha is not None:
                running.fed(number)
            return digest

    async def restart(self, reason: str) -> None:
        """S3 forgot the upload (expired, aborted): start this stream again from byte 0.

        ``ObjectExists`` instead when the key already holds an object: Complete happened
        (before a crash), and a new upload would overwrite it."""
        await self.cancel_inflight()
        ctx = self.ctx
        at = await object_at(ctx, self.record, list(self.parts.values()))
        finalizing = self.record.state is StreamState.FINALIZING
        gone = when_upload_gone(at, resuming=False, finalizing=finalizing)
        if gone is Resume.TAKEN:
            raise UploadTaken(f"{self.record.key} was made by another party")
        if gone is not Resume.RESTART:
            raise ObjectExists(f"{self.record.key} is already complete")
        log.warning(logs.UPLOAD_RESTARTED, reason=reason, parts_lost=len(self.parts))
        ctx.metrics.parts_reuploaded.inc(len(self.parts))
        self.parts.clear()
        self.running_sha = RunningSha256()
        self.record = replace(self.record, upload_id=None)
        record = self.record
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.delete_parts(record.stream_id))
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
