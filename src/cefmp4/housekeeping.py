"""Multipart uploads under the prefix that no checkpoint knows (SPEC §2.6, §2.13).

At start-up, ``adopt_unknown_uploads`` rebuilds lost checkpoints (a wiped Redis, a deleted
SQLite file) from S3: an upload whose key names a local file is adopted part by part, each
part verified against the local bytes. What nobody claims is aborted by ``sweep`` once it is
older than the grace period; nothing outside ``S3_KEY_PREFIX`` is ever touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog

from cefmp4 import logs
from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.errors import SourceError, UploadNotFound
from cefmp4.keys import parse_key, within_prefix
from cefmp4.parts import PartSchedule
from cefmp4.pipeline import Context
from cefmp4.storage import MultipartUpload, UploadedPart
from cefmp4.upload import hash_range

log = structlog.get_logger("cefmp4.housekeeping")

_UNFINISHED = frozenset({StreamState.ACTIVE, StreamState.FINALIZING})


@dataclass(frozen=True, slots=True)
class Orphan:
    upload: MultipartUpload
    age_seconds: float


async def unknown_uploads(ctx: Context) -> list[Orphan]:
    """Uploads under the prefix whose upload id no checkpoint records."""
    records = await ctx.retry("checkpoint", ctx.checkpoints.list_streams)
    known = {r.upload_id for r in records if r.upload_id}
    prefix = ctx.config.key_prefix
    uploads = await ctx.retry("list_parts", lambda: ctx.objects.list_multipart_uploads(prefix))
    now = ctx.clock()
    return [
        Orphan(u, max(0.0, now - u.initiated.timestamp()))
        for u in uploads
        if u.upload_id not in known and within_prefix(prefix, u.key)
    ]


async def adopt_unknown_uploads(ctx: Context) -> list[StreamRecord]:
    """Rebuild checkpoints for unknown uploads of files that are still here.

    Returns the records rebuilt from scratch (the checkpoint store lost them). An upload
    created just before a crash, before its id reached the checkpoint, is attached to its
    stream; one of a stream that has moved on to another upload is aborted at once.
    """
    records = {r.stream_id: r for r in await ctx.retry("checkpoint", ctx.checkpoints.list_streams)}
    adopted: list[StreamRecord] = []
    for orphan in await unknown_uploads(ctx):
        upload = orphan.upload
        parsed = parse_key(ctx.config.key_prefix, upload.key)
        if parsed is None:
            continue  # not a key we make: leave it to the sweeper's grace period
        known = records.get(parsed[0])
        if known is None:
            record = await _adopt(ctx, upload, parsed[0], parsed[1])
            if record is not None:
                adopted.append(record)
        elif known.upload_id is None and known.state in _UNFINISHED and known.key == upload.key:
            attached = replace(known, upload_id=upload.upload_id)
            await ctx.retry("checkpoint", _put_stream(ctx, attached))
            records[known.stream_id] = attached
            log.info(logs.UPLOAD_ATTACHED, stream_id=known.stream_id, upload_id=upload.upload_id)
        elif known.upload_id != upload.upload_id:
            with contextlib.suppress(UploadNotFound):
                await ctx.retry("abort", _abort(ctx, upload))
            ctx.metrics.orphan_uploads_aborted.inc()
            log.info(logs.ORPHAN_ABORTED, key=upload.key, upload_id=upload.upload_id,
                     reason="stream moved on to another upload")
    return adopted


async def _adopt(
    ctx: Context, upload: MultipartUpload, stream_id: str, rel_path: str
) -> StreamRecord | None:
    path = ctx.config.watch_dir / rel_path
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        try:
            remote = await ctx.retry(
                "list_parts", lambda: ctx.objects.list_parts(upload.key, upload.upload_id)
            )
        except UploadNotFound:
            return None
        full = [p for p in remote if p.part_number == 1]
        if not full:
            return None
        schedule = PartSchedule(full[0].size, ctx.config.max_parts)
        parts = await _verified_parts(ctx, fd, schedule, remote)
    finally:
        os.close(fd)
    if not parts:
        return None
    now = ctx.clock()
    record = StreamRecord(
        stream_id=stream_id, path=str(path), rel_path=rel_path, device=st.st_dev,
        inode=st.st_ino, bucket=ctx.objects.bucket, key=upload.key,
        part_size=schedule.base_size, max_parts=schedule.max_parts, state=StreamState.ACTIVE,
        started_at=upload.initiated.timestamp(), last_activity_at=now,
        upload_id=upload.upload_id,
    )
    await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
    for part in parts:
        await ctx.retry("checkpoint", _put_part(ctx, stream_id, part))
    ctx.metrics.parts_adopted.inc(len(parts))
    log.warning(
        logs.STREAM_REBUILT, stream_id=stream_id, path=str(path), parts=len(parts),
        upload_id=upload.upload_id,
    )
    return record


def _put_part(
    ctx: Context, stream_id: str, part: PartRecord
) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.checkpoints.put_part(stream_id, part)


def _put_stream(ctx: Context, record: StreamRecord) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.checkpoints.put_stream(record)


def _abort(ctx: Context, upload: MultipartUpload) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.objects.abort_multipart(upload.key, upload.upload_id)


async def _verified_parts(
    ctx: Context, fd: int, schedule: PartSchedule, remote: list[UploadedPart]
) -> list[PartRecord]:
    """Parts whose size fits the schedule and whose MD5 matches the local bytes."""
    parts: list[PartRecord] = []
    for s3_part in sorted(remote, key=lambda p: p.part_number):
        number = s3_part.part_number
        offset, size = schedule.offset_of(number), schedule.size_of(number)
        if s3_part.size != size:
            continue
        try:
            md5_hex, _ = await asyncio.to_thread(hash_range, fd, offset, size)
        except SourceError:
            continue
        if md5_hex == s3_part.etag:
            parts.append(PartRecord(number, offset, size, s3_part.etag, md5_hex, ctx.clock()))
    return parts


async def sweep(ctx: Context, grace_seconds: float) -> list[MultipartUpload]:
    """Abort unknown uploads under the prefix older than ``grace_seconds``."""
    aborted: list[MultipartUpload] = []
    for orphan in await unknown_uploads(ctx):
        if orphan.age_seconds < grace_seconds:
            continue
        upload = orphan.upload
        try:
            await ctx.retry("abort", _abort(ctx, upload))
        except UploadNotFound:
            continue
        aborted.append(upload)
        ctx.metrics.orphan_uploads_aborted.inc()
        log.warning(
            logs.ORPHAN_ABORTED, key=upload.key, upload_id=upload.upload_id,
            age_h=round(orphan.age_seconds / 3600, 1),
        )
    return aborted


async def sweep_forever(ctx: Context, grace_seconds: float, interval: float) -> None:
    """Sweep now and then every ``interval`` seconds; errors are logged, never fatal."""
    while True:
        try:
            await sweep(ctx, grace_seconds)
        except Exception as exc:  # a permanent S3 error must not stop the daemon
            log.error(logs.ERROR, operation="sweep", error=str(exc))
        await asyncio.sleep(interval)
