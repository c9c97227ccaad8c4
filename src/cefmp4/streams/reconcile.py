"""Bring the checkpoints in line with what S3 really holds (SPEC §2.6, §2.13).

* ``reconcile``: one stream being resumed. A part that reached S3 but not the checkpoint (a
  crash between UploadPart and the write) is adopted when its size and MD5 match the local
  bytes; a part S3 lost is uploaded again; an upload S3 no longer knows is either already
  complete (HeadObject) or restarted from byte 0.
* ``rebuild_from_s3``: at start-up, checkpoints lost whole (a wiped Redis, a deleted SQLite
  file) are rebuilt from the uploads under the prefix, part by part, each verified against
  the local bytes; an upload created just before a crash is attached to its stream.
* ``abort_superseded``: an upload of a stream that has moved on to another upload.

All three judge a part with the one function ``verified_parts``; what each answer means is
decided in ``core.resume`` and ``core.ending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.checkpoint.trust import held_upload_ids
from cefmp4.core.ending import Resume, when_upload_gone
from cefmp4.core.identity import Ident
from cefmp4.core.keys import parse_key, within_prefix
from cefmp4.core.parts import PartSchedule
from cefmp4.core.resume import Unknown, plan_parts, superseded, unknown_upload
from cefmp4.runtime import logs
from cefmp4.runtime.errors import LeaseLost, SourceError, UploadNotFound, UploadTaken
from cefmp4.storage import MultipartUpload, UploadedPart
from cefmp4.streams.context import Context
from cefmp4.streams.objects import object_at
from cefmp4.streams.ownership import Ownership
from cefmp4.streams.source import OpenedSource, digest_range, open_source

log = structlog.get_logger("cefmp4.streams.reconcile")


async def verified_parts(
    ctx: Context,
    schedule: PartSchedule,
    remote: list[UploadedPart],
    known: list[PartRecord],
    fd: int | None,
) -> tuple[list[PartRecord], list[PartRecord]]:
    """(parts to keep, parts newly adopted) out of what S3 lists for an upload
    (``core.resume.plan_parts`` decides; a candidate is adopted when the file's MD5 of its
    bytes is its ETag: ``fd`` None adopts nothing)."""
    plan = plan_parts(schedule, remote, known, file_open=fd is not None)
    for number in plan.mismatched:
        log.warning(logs.PART_MISMATCH, part_number=number)  # adopted below if it fits
    adopted: list[PartRecord] = []
    for c in plan.candidates:
        if fd is None:
            break
        try:
            digest = await asyncio.to_thread(digest_range, fd, c.offset, c.size, md5=True)
        except SourceError:
            continue
        if digest.md5_hex == c.etag:
            adopted.append(PartRecord(c.number, c.offset, c.size, c.etag, digest.record,
                                      ctx.clock.time()))
    for number in plan.missing:
        log.warning(logs.PART_MISSING, part_number=number)
    kept = sorted([*plan.kept, *adopted], key=lambda p: p.part_number)
    return kept, adopted


async def reconcile(
    ctx: Context, record: StreamRecord, parts: list[PartRecord], fd: int | None
) -> tuple[StreamRecord, list[PartRecord]]:
    """The record and the parts to resume with. ``fd`` None: the file is gone.
    ``UploadTaken`` when another party made an object of the upload (salvage)."""
    if record.upload_id is None:
        return record, parts
    upload_id = record.upload_id
    try:
        remote = await ctx.retry(
            "list_parts", lambda: ctx.objects.list_parts(record.key, upload_id)
        )
    except UploadNotFound:
        return await _upload_gone(ctx, record, parts)
    schedule = PartSchedule(record.part_size, record.max_parts)
    kept, adopted = await verified_parts(ctx, schedule, remote, parts, fd)
    for part in adopted:
        await ctx.retry("checkpoint", _put_part(ctx, record.stream_id, part))
        log.info(logs.PART_ADOPTED, part_number=part.part_number, size=part.size)
    ctx.metrics.parts_adopted.inc(len(adopted))
    return record, kept


async def _upload_gone(
    ctx: Context, record: StreamRecord, parts: list[PartRecord]
) -> tuple[StreamRecord, list[PartRecord]]:
    at = await object_at(ctx, record, parts)
    gone = when_upload_gone(at, resuming=True, finalizing=record.state is StreamState.FINALIZING)
    if gone is Resume.TAKEN:
        raise UploadTaken(f"{record.key} was made by another party")
    if gone is Resume.ADOPT:
        # Completed before the crash; finalize confirms it and writes the metadata.
        return record, list(at.parts)
    log.warning(logs.UPLOAD_RESTARTED, reason="upload id unknown to S3", parts_lost=len(parts))
    record = replace(record, upload_id=None)
    await ctx.retry("checkpoint", lambda: ctx.checkpoints.delete_parts(record.stream_id))
    await ctx.retry("checkpoint", _put_stream(ctx, record))
    return record, []


async def unknown_uploads(ctx: Context) -> list[MultipartUpload]:
    """Uploads under the prefix whose upload id no checkpoint records."""
    # A completed stream's upload is no longer in progress: reading the completed records
    # (nearly all of them, 100,000 take ~30 s in Redis) would find no id to keep.
    records = await ctx.retry("checkpoint", lambda: ctx.checkpoints.list_streams(_NOT_DONE))
    known = {r.upload_id for r in records if r.upload_id}
    prefix = ctx.config.key_prefix
    uploads = await ctx.retry("list_uploads", lambda: ctx.objects.list_multipart_uploads(prefix))
    unknown = [u for u in uploads if u.upload_id not in known and within_prefix(prefix, u.key)]
    # Quarantined and untrusted records are not acted on, nor are their uploads aborted.
    ids = frozenset(u.upload_id for u in unknown)
    held = await ctx.retry("checkpoint", lambda: held_upload_ids(ctx.checkpoints, ids))
    return [u for u in unknown if u.upload_id not in held]


async def rebuild_from_s3(ctx: Context, ownership: Ownership) -> list[StreamRecord]:
    """Attach or rebuild the checkpoints of unknown uploads of files that are still here,
    each only while holding the file (its lease, in scale-out: a peer that just created the
    upload owns it and will checkpoint it itself).

    Returns the records rebuilt from scratch (the checkpoint store lost them)."""
    rebuilt: list[StreamRecord] = []
    for upload in await unknown_uploads(ctx):
        parsed = parse_key(ctx.config.key_prefix, upload.key, ctx.config.key_template)
        known = await _record(ctx, parsed[0]) if parsed is not None else None
        verdict = unknown_upload(upload.key, parsed[0] if parsed else None, known)
        if verdict is Unknown.REBUILD and parsed is not None:
            record = await _rebuild(ctx, ownership, upload, parsed[0], parsed[1])
            if record is not None:
                rebuilt.append(record)
        elif verdict is Unknown.ATTACH and known is not None:
            ident = (known.device, known.inode)
            if not await _hold(ctx, ownership, ident, known.stream_id):
                continue
            try:
                attached = replace(known, upload_id=upload.upload_id)
                await ctx.retry("checkpoint", _put_stream(ctx, attached))
            finally:
                await ownership.release(known.inode)
            log.info(logs.UPLOAD_ATTACHED, stream_id=known.stream_id, upload_id=upload.upload_id)
    return rebuilt


# Every state whose record may still name an upload in progress.
_NOT_DONE = frozenset(StreamState) - {StreamState.COMPLETED}


async def _record(ctx: Context, stream_id: str) -> StreamRecord | None:
    """One record by id (a look-up per unknown upload, not a read of every record)."""
    return await ctx.retry("checkpoint", lambda: ctx.checkpoints.get_stream(stream_id))


async def _hold(ctx: Context, ownership: Ownership, ident: Ident, stream_id: str) -> bool:
    """Own the file for a moment (fencing ``stream_id``'s writes), or False."""
    if not await ctx.retry("checkpoint", lambda: ownership.acquire(ident, _nothing)):
        return False
    try:
        ownership.bind(ident[1], stream_id, _nothing)
    except LeaseLost:
        return False
    return True


def _nothing() -> None:
    return None


async def abort_superseded(ctx: Context, grace_seconds: float) -> list[MultipartUpload]:
    """Abort unknown uploads of streams that have moved on to another upload id, once
    older than ``grace_seconds`` (never one a peer has just created and not checkpointed
    yet; what is younger is left to the sweeper)."""
    aborted: list[MultipartUpload] = []
    now = ctx.clock.time()
    for upload in await unknown_uploads(ctx):
        parsed = parse_key(ctx.config.key_prefix, upload.key, ctx.config.key_template)
        known = await _record(ctx, parsed[0]) if parsed is not None else None
        if not superseded(upload.upload_id, upload.initiated.timestamp(), known, now=now,
                          grace=grace_seconds):
            continue
        with contextlib.suppress(UploadNotFound):
            await ctx.retry("abort", _abort(ctx, upload))
        aborted.append(upload)
        ctx.metrics.orphan_uploads_aborted.inc()
        log.info(logs.ORPHAN_ABORTED, key=upload.key, upload_id=upload.upload_id,
                 reason="stream moved on to another upload")
    return aborted


async def _rebuild(
    ctx: Context, ownership: Ownership, upload: MultipartUpload, stream_id: str, rel_path: str
) -> StreamRecord | None:
    path = ctx.config.watch_dir / rel_path
    try:
        source = await open_source(path)
    except SourceError:
        return None
    ident = (source.st.st_dev, source.st.st_ino)
    try:
        held = await _hold(ctx, ownership, ident, stream_id)
    except BaseException:
        os_close(source.fd)
        raise
    if not held:
        os_close(source.fd)
        return None
    try:
        return await _rebuild_held(
            ctx, upload, stream_id, path, rel_path=rel_path, source=source
        )
    finally:
        await ownership.release(ident[1])


async def _rebuild_held(
    ctx: Context, upload: MultipartUpload, stream_id: str, path: Path, *, rel_path: str,
    source: OpenedSource,
) -> StreamRecord | None:
    try:
        try:
            remote = await ctx.retry(
                "list_parts", lambda: ctx.objects.list_parts(upload.key, upload.upload_id)
            )
        except UploadNotFound:
            return None
        first = [p for p in remote if p.part_number == 1]
        if not first:
            return None
        schedule = PartSchedule(first[0].size, ctx.config.max_parts)
        parts, _ = await verified_parts(ctx, schedule, remote, [], source.fd)
    finally:
        os_close(source.fd)
    if not parts:
        return None
    st = source.st
    record = StreamRecord(
        stream_id=stream_id, path=str(path), rel_path=rel_path, device=st.st_dev,
        inode=st.st_ino, bucket=ctx.objects.bucket, key=upload.key,
        part_size=schedule.base_size, max_parts=schedule.max_parts, state=StreamState.ACTIVE,
        started_at=upload.initiated.timestamp(), last_activity_at=ctx.clock.time(),
        upload_id=upload.upload_id,
    )
    await ctx.retry("checkpoint", _put_stream(ctx, record))
    for part in parts:
        await ctx.retry("checkpoint", _put_part(ctx, stream_id, part))
    ctx.metrics.parts_adopted.inc(len(parts))
    log.warning(
        logs.STREAM_REBUILT, stream_id=stream_id, path=str(path), parts=len(parts),
        upload_id=upload.upload_id,
    )
    return record


def os_close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _put_part(ctx: Context, stream_id: str, part: PartRecord) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.checkpoints.put_part(stream_id, part)


def _put_stream(ctx: Context, record: StreamRecord) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.checkpoints.put_stream(record)


def _abort(ctx: Context, upload: MultipartUpload) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.objects.abort_multipart(upload.key, upload.upload_id)
