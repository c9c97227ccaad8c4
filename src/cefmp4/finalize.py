"""tail → verify → complete → probe → metadata → mark completed.

Safe to run again after a crash at any point: Complete is confirmed with HeadObject when
S3 no longer knows the upload, and the metadata is written only after the object exists.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from dataclasses import replace
from pathlib import Path

import structlog

from cefmp4 import logs
from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.errors import UploadNotFound
from cefmp4.hashing import multipart_etag
from cefmp4.keys import metadata_key
from cefmp4.metadata import build_metadata, to_json_bytes
from cefmp4.pipeline import Context
from cefmp4.probe import ProbeResult
from cefmp4.stream import StreamWorker
from cefmp4.verify import upload_rest_verified

log = structlog.get_logger("cefmp4.finalize")

COMPLETE = "complete"
TRUNCATED = "truncated"
SOURCE_DELETED = "source_deleted"


def final_status(worker: StreamWorker, truncated: bool) -> tuple[str, str | None]:
    """(status, end_reason) from what became of the file we hold open."""
    if truncated:
        return TRUNCATED, "truncated"
    if os.fstat(worker.fd).st_nlink == 0:
        try:
            st = os.stat(worker.record.path)
        except OSError:
            return SOURCE_DELETED, "deleted"
        if (st.st_dev, st.st_ino) != (worker.record.device, worker.record.inode):
            return TRUNCATED, "replaced"
        return SOURCE_DELETED, "deleted"
    return COMPLETE, None


async def finalize(worker: StreamWorker, *, truncated: bool = False) -> None:
    ctx = worker.ctx
    await worker.drain()
    status, reason = final_status(worker, truncated)
    if worker.record.state is not StreamState.FINALIZING:
        worker.record = replace(
            worker.record, state=StreamState.FINALIZING, status=status, completed_at=ctx.clock()
        )
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(worker.record))
    status = worker.record.status or status

    keep_uploaded = status == TRUNCATED and reason == "truncated"
    while True:
        try:
            if keep_uploaded:
                parts = worker.contiguous_parts()
                await complete_parts(ctx, worker.record, parts)
                sha256 = await _sha256_of_object(ctx, worker.record.key)
            else:
                parts, sha256 = await upload_rest_verified(worker)
                await complete_parts(ctx, worker.record, parts)
            break
        except UploadNotFound as exc:
            if keep_uploaded:
                raise  # the uploaded bytes are gone from S3 and from the file
            await worker.restart_upload(str(exc))
    ctx.failpoints.hit("after_complete")
    probe = await _probe(worker)
    worker.record = await publish(
        ctx, worker.record, parts, sha256=sha256, probe=probe, status=status,
        mtime_ns=os.fstat(worker.fd).st_mtime_ns,
        extra={"end_reason": reason, "parts_reuploaded": worker.reuploaded},
    )


async def finalize_orphan(ctx: Context, record: StreamRecord, parts: list[PartRecord]) -> None:
    """The file vanished while we were down: the object is what was uploaded of it."""
    record = replace(
        record, state=StreamState.FINALIZING, status=record.status or SOURCE_DELETED,
        completed_at=record.completed_at or ctx.clock(),
    )
    await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
    contiguous: list[PartRecord] = []
    for part in parts:
        if part.part_number != len(contiguous) + 1:
            break
        contiguous.append(part)
    if not contiguous:
        if record.upload_id is not None:
            await _abort_quietly(ctx, record.key, record.upload_id)
        failed = replace(
            record, state=StreamState.FAILED, error="source file gone before any part was uploaded"
        )
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(failed))
        ctx.metrics.streams_failed.inc()
        log.error(logs.STREAM_FAILED, error=failed.error)
        return
    await complete_parts(ctx, record, contiguous)
    sha256 = await _sha256_of_object(ctx, record.key)
    await publish(
        ctx, record, contiguous, sha256=sha256,
        probe=ProbeResult(None, "source file gone before completion; not probed"),
        status=record.status or SOURCE_DELETED, mtime_ns=None, extra={"end_reason": "deleted"},
    )


async def publish(
    ctx: Context,
    record: StreamRecord,
    parts: list[PartRecord],
    *,
    sha256: str,
    probe: ProbeResult,
    status: str,
    mtime_ns: int | None,
    extra: dict[str, object],
) -> StreamRecord:
    """The object is complete: checkpoint it, write the metadata, mark the stream completed."""
    size = sum(p.size for p in parts)
    record = replace(record, final_size=size, final_mtime_ns=mtime_ns, sha256=sha256)
    await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
    doc = build_metadata(
        record=record, parts=parts, probe=probe, status=status, processed_at=ctx.clock(),
        extra=extra,
    )
    body = to_json_bytes(doc)
    meta_key = metadata_key(record.key)
    await ctx.retry(
        "put_metadata", lambda: ctx.objects.put_object(meta_key, body, "application/json")
    )
    log.info(logs.METADATA_WRITTEN, key=meta_key, status=status)
    ctx.failpoints.hit("after_metadata")
    record = replace(record, state=StreamState.COMPLETED)
    await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
    ctx.metrics.streams_completed.inc()
    ctx.metrics.stream_duration.observe(
        max(0.0, (record.completed_at or ctx.clock()) - record.started_at)
    )
    log.info(
        logs.STREAM_COMPLETED, status=status, size=size, parts=len(parts),
        duration_s=probe.duration_seconds, sha256=sha256,
    )
    return record


async def _sha256_of_object(ctx: Context, key: str) -> str:
    """The file no longer holds the uploaded bytes, so hash what S3 holds."""
    data = await ctx.retry("get", lambda: ctx.objects.get_object(key))
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


async def _abort_quietly(ctx: Context, key: str, upload_id: str) -> None:
    with contextlib.suppress(UploadNotFound):  # already gone: nothing to clean up
        await ctx.retry("abort", lambda: ctx.objects.abort_multipart(key, upload_id))


async def complete_parts(ctx: Context, record: StreamRecord, parts: list[PartRecord]) -> None:
    """CompleteMultipartUpload, confirmed by HeadObject when S3 forgot the upload id."""
    key = record.key
    if not parts:
        # An empty recording: S3 has no empty multipart object, so write it directly.
        if record.upload_id is not None:
            await _abort_quietly(ctx, key, record.upload_id)
        await ctx.retry("put_object", lambda: ctx.objects.put_object(key, b"", "video/mp4"))
        return
    upload_id = record.upload_id
    if upload_id is None:
        raise UploadNotFound("parts without an upload id")
    pairs = [(p.part_number, p.etag) for p in parts]
    if ctx.guard is not None:
        await ctx.guard(record)
    try:
        await ctx.retry("complete", lambda: ctx.objects.complete_multipart(key, upload_id, pairs))
    except UploadNotFound:
        # Completed before (a crash or a lost response after Complete), or the upload expired.
        if await _already_complete(ctx, key, parts):
            log.info(logs.COMPLETE_CONFIRMED, key=key)
            return
        raise


async def _already_complete(ctx: Context, key: str, parts: list[PartRecord]) -> bool:
    info = await ctx.retry("head", lambda: ctx.objects.head_object(key))
    if info is None:
        return False
    if info.size != sum(p.size for p in parts):
        return False
    if "-" in info.etag:
        return info.etag == multipart_etag([p.md5 for p in parts])
    return True


async def _probe(worker: StreamWorker) -> ProbeResult:
    # /proc/<pid>/fd/<n> reaches the bytes even when the file was deleted or renamed.
    path = Path(f"/proc/{os.getpid()}/fd/{worker.fd}")
    if not os.path.exists(path):  # noqa: ASYNC240  (a /proc lookup, never blocks)
        path = Path(worker.record.path)
    result = await worker.ctx.prober.probe(path)
    if result.duration_seconds is None:
        worker.ctx.metrics.failed_operations.labels(operation="probe").inc()
        log.warning(logs.PROBE_FAILED, error=result.error)
    return result
