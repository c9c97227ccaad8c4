"""Tail segments, the shell (SPEC §2.20): with ``RPO_SECONDS`` an active stream ships the
bytes that are not in a part yet every that many seconds, as small objects that salvage
appends after the parts when the recorder's host is lost. ``core.tail`` names them and
decides the ranges.

A stream that ends with what S3 holds (truncated, deleted) puts its segments' bytes after
its parts, as the object's last part (``upload_tail_part``): salvage does the same.

One shipment in flight per stream, at most one part's worth of bytes read at a time (held
in the global byte budget): an S3 outage makes shipments wait like parts, nothing piles up.
The multipart upload is created before the first segment, so that salvage finds the stream
through its upload even when no part was sent yet. Segments are deleted once the stream's
object is complete.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence

import crc32c
import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.core.hashing import PartDigest, crc64nvme
from cefmp4.core.tail import (
    Piece,
    Segment,
    chain,
    next_range,
    parse_segment,
    segment_key,
    tail_prefix,
)
from cefmp4.runtime.errors import CefmpError, PermanentError
from cefmp4.streams.context import Context

log = structlog.get_logger("cefmp4.streams.tail")

TAIL_CONTENT_TYPE = "application/octet-stream"


class TailShipper:
    """Ships one stream's tail segments while it is followed."""

    def __init__(
        self,
        ctx: Context,
        fd: int,
        record: Callable[[], StreamRecord],
        ensure_upload: Callable[[], Awaitable[str]],
        *,
        every: float,
        limit: int,
    ) -> None:
        self.ctx = ctx
        self.fd = fd
        self._record = record
        self._ensure_upload = ensure_upload
        self.every = every
        self.limit = limit
        self.shipped = 0  # the file's bytes [.., shipped) are in segments (or parts)
        self.segments = 0
        self._listed = False
        self._last = ctx.clock.monotonic()
        self._task: asyncio.Task[None] | None = None

    def due_in(self) -> float:
        """Seconds until the next shipment is due."""
        return max(0.0, self._last + self.every - self.ctx.clock.monotonic())

    def maybe_ship(self, durable: int, size: int) -> None:
        """Start a shipment of ``[max(durable, shipped), size)`` if one is due."""
        if self._task is not None:
            if not self._task.done():
                return  # one at a time: the next covers what this one could not
            if not self._task.cancelled() and (exc := self._task.exception()) is not None:
                # Transient errors are retried inside; anything else waits for the next tick.
                log.warning("tail_segment_failed", error=str(exc), error_class=type(exc).__name__)
            self._task = None
        now = self.ctx.clock.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        if size > max(durable, self.shipped):
            self._task = asyncio.create_task(
                self._ship(durable, size), name=f"tail-{self._record().stream_id}")

    async def _ship(self, durable: int, size: int) -> None:
        ctx, record = self.ctx, self._record()
        await self._ensure_upload()  # salvage finds a stream by its upload
        if not self._listed:
            # After a restart: what earlier segments hold is not sent again.
            self.shipped = max(self.shipped, await _shipped_before(ctx, record, durable))
            self._listed = True
        span = next_range(durable, self.shipped, size, self.limit)
        if span is None:
            return
        start, end = span
        async with ctx.budget.hold(end - start):
            body = await asyncio.to_thread(os.pread, self.fd, end - start, start)
            if not body:
                return  # the file shrank: the follow loop sees it
            end = start + len(body)
            key = segment_key(ctx.config.key_prefix, record.stream_id, start, end)
            await ctx.retry("put_tail", functools.partial(
                ctx.objects.put_object, key, body, TAIL_CONTENT_TYPE))
        self.shipped = max(self.shipped, end)
        self.segments += 1
        log.debug("tail_segment_shipped", start=start, end=end)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _shipped_before(ctx: Context, record: StreamRecord, durable: int) -> int:
    prefix = tail_prefix(ctx.config.key_prefix, record.stream_id)
    listed = await ctx.retry("list_tail", functools.partial(ctx.objects.list_objects, prefix))
    segments = [s for o in listed
                if (s := parse_segment(ctx.config.key_prefix, record.stream_id, o.key,
                                       o.size)) is not None]
    pieces = chain(segments, durable)
    return pieces[-1].end if pieces else 0


async def delete_tail(ctx: Context, stream_id: str) -> int:
    """Delete a stream's tail segments (its object is complete: they hold nothing it does
    not). A permanent failure (Object Lock's default retention, no DeleteObject) is logged,
    never the stream's: the segments stay until their retention ends or an operator acts."""
    prefix = tail_prefix(ctx.config.key_prefix, stream_id)
    deleted = 0
    try:
        keys = await ctx.retry("list_tail", functools.partial(ctx.objects.list_keys, prefix))
        for key in keys:
            await ctx.retry("delete_tail", functools.partial(ctx.objects.delete_object, key))
            deleted += 1
    except CefmpError as exc:
        log.warning("tail_segments_kept", stream_id=stream_id, error=str(exc), deleted=deleted)
    return deleted


async def list_segments(ctx: Context, stream_id: str) -> list[Segment]:
    """The stream's tail segments in S3 (input, not truth: names or sizes that do not
    parse are left out)."""
    prefix = ctx.config.key_prefix
    listed = await ctx.retry("list_tail", functools.partial(
        ctx.objects.list_objects, tail_prefix(prefix, stream_id)))
    return [s for o in listed if (s := parse_segment(prefix, stream_id, o.key, o.size))]


async def upload_tail_part(
    ctx: Context, record: StreamRecord, number: int, pieces: Sequence[Piece]
) -> PartRecord:
    """The ``pieces`` of tail segments, read from S3, as part ``number`` of the stream's
    upload (its last part: a kept object's last seconds). Checkpointed like any part."""
    upload_id = record.upload_id
    if upload_id is None or not pieces:
        raise ValueError("a tail part needs an upload and bytes")
    size = sum(p.size for p in pieces)
    async with ctx.budget.hold(size):
        chunks = []
        for piece in pieces:
            seg = piece.segment
            whole = await ctx.retry("get_tail", functools.partial(ctx.objects.get_object, seg.key))
            chunks.append(whole[piece.start - seg.start:piece.end - seg.start])
        body = b"".join(chunks)
        if len(body) != size:
            raise PermanentError(f"tail segments of {record.key} gave {len(body)} bytes, "
                                 f"expected {size}")
        digest = PartDigest(crc32c.crc32c(body), hashlib.md5(body, usedforsecurity=False).digest(),
                            crc64nvme(body))
        crc64 = await ctx.objects.part_checksum() == "crc64nvme"
        etag = await ctx.retry("upload_part", lambda: ctx.objects.upload_part(
            record.key, upload_id, number, body, digest.md5_b64, crc32c_b64=digest.crc32c_b64,
            **({"crc64nvme_b64": digest.crc64nvme_b64} if crc64 else {})))
    part = PartRecord(number, pieces[0].start, size, etag, digest.record, ctx.clock.time())
    await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_part(record.stream_id, part))
    log.info("tail_part_uploaded", part_number=number, offset=part.offset, size=size)
    return part
