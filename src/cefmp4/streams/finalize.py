"""drain → decide the end → verify or keep → complete → probe → metadata → completed.

The end (why the stream ended, and so what makes up the object) is checkpointed before
anything acts on it, so a restart finishes the stream the same way. Safe to run again after
a crash at any point: Complete is confirmed with HeadObject, an object already at the key is
never overwritten, and the metadata is written only after the object exists.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.core.identity import Change, end_of_source, truncated
from cefmp4.core.keys import metadata_key
from cefmp4.core.metadata import build_metadata, to_json_bytes
from cefmp4.core.parts import contiguous
from cefmp4.runtime import logs
from cefmp4.runtime.errors import ObjectExists, UploadNotFound
from cefmp4.streams.complete import (
    abort_quietly,
    complete_parts,
    existing_object,
    sha256_of_object,
)
from cefmp4.streams.completion import CompletedBy
from cefmp4.streams.context import Context
from cefmp4.streams.probe import ProbeResult
from cefmp4.streams.probing import EarlyProbe, probe_file
from cefmp4.streams.source import RunningSha256, stat_or_none
from cefmp4.streams.stream import StreamWorker
from cefmp4.streams.tail import delete_tail
from cefmp4.streams.verified_complete import TruncatedNow, complete_verified

log = structlog.get_logger("cefmp4.streams.finalize")

COMPLETE = "complete"
TRUNCATED = "truncated"
SOURCE_DELETED = "source_deleted"
_REASONS = {TRUNCATED: "truncated", SOURCE_DELETED: "deleted"}


def completed_by(status: str, judged: CompletedBy | None) -> str:
    """Metadata ``completed_by``: what ended the stream (SPEC §1.4)."""
    if status == TRUNCATED:
        return CompletedBy.TRUNCATED.value
    if status == SOURCE_DELETED:
        return CompletedBy.SOURCE_DELETED.value
    return (judged or CompletedBy.IDLE_TIMEOUT).value


def end_status(worker: StreamWorker, truncated_now: bool) -> tuple[str, str | None]:
    """(status, end_reason) from what became of the file we hold open."""
    if truncated_now:
        return TRUNCATED, "truncated"
    change = end_of_source(os.fstat(worker.fd), stat_or_none(Path(worker.record.path)))
    if change is Change.REPLACED:
        return TRUNCATED, "replaced"
    if change is Change.DELETED:
        return SOURCE_DELETED, "deleted"
    return COMPLETE, None


async def finalize(worker: StreamWorker, *, truncated_now: bool = False) -> None:
    # A truncation seen already ends with what S3 holds: no probe to win time for.
    early = None if truncated_now else EarlyProbe.start(worker.ctx, worker.fd, worker.record.path)
    try:
        await _finalize(worker, truncated_now, early)
    finally:
        if early is not None:
            await early.close()


async def _finalize(worker: StreamWorker, truncated_now: bool, early: EarlyProbe | None) -> None:
    ctx, up = worker.ctx, worker.up
    resumed = worker.record.state is StreamState.FINALIZING
    if truncated_now:
        await up.cancel_beyond(os.fstat(worker.fd).st_size)
    elif await up.drain_watching(timeout=ctx.config.drain_timeout) or (
        resumed and truncated(os.fstat(worker.fd), up.uploaded_extent())
    ):
        # While a part was held back (even if the file grew back since), or while nobody
        # watched: what was uploaded stands.
        truncated_now = True
        _log_truncated(worker)
    if not resumed or truncated_now:
        status, reason = end_status(worker, truncated_now)
        worker.record = replace(
            worker.record, state=StreamState.FINALIZING, status=status,
            completed_at=worker.record.completed_at or ctx.clock.time(),
            completed_by=completed_by(status, worker.completed_by),
        )
        record = worker.record
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
    else:  # the end decided before a restart stands
        status = worker.record.status or COMPLETE
        reason = _REASONS.get(status)
    # Only what S3 already holds makes the object when the file no longer has those bytes:
    # truncated now, or ended before a crash by something this descriptor cannot undo.
    keep = truncated_now or (resumed and status != COMPLETE)
    if keep:  # the end is checkpointed: now the parts in flight below the cut may finish
        await up.drain(timeout=ctx.config.drain_timeout)
        await finish_kept(ctx, worker.record, up.contiguous_parts(), worker.fd, up.running_sha)
        return
    while True:
        try:
            parts, sha256, mtime_ns = await complete_verified(worker)
            break
        except TruncatedNow:
            # Bytes S3 holds left the file while we verified: they make the object.
            _log_truncated(worker)
            worker.record = replace(worker.record, status=TRUNCATED)
            await ctx.retry("checkpoint", _put(ctx, worker.record))
            await up.drain(timeout=ctx.config.drain_timeout)
            await finish_kept(ctx, worker.record, up.contiguous_parts(), worker.fd, up.running_sha)
            return
        except UploadNotFound as exc:
            try:
                await up.restart(str(exc))
            except ObjectExists:
                await finish_kept(ctx, worker.record, up.contiguous_parts(), worker.fd, None)
                return
        except ObjectExists:
            # Completed before a crash: that object stands, whatever the file holds now.
            await finish_kept(ctx, worker.record, up.contiguous_parts(), worker.fd, None)
            return
    ctx.failpoints.hit("after_complete")
    if early is not None:
        probe = await early.result()
    else:
        probe = await probe_file(ctx, worker.fd, worker.record.path)
    worker.record = await publish(
        ctx, worker.record, parts, sha256=sha256, probe=probe, status=status,
        mtime_ns=mtime_ns, extra={"end_reason": reason, "parts_reuploaded": up.reuploaded},
    )


def _log_truncated(worker: StreamWorker) -> None:
    log.warning(logs.STREAM_TRUNCATED, size=os.fstat(worker.fd).st_size,
                uploaded=worker.up.uploaded_extent())


async def finish_kept(
    ctx: Context,
    record: StreamRecord,
    parts: list[PartRecord],
    fd: int | None,
    running: RunningSha256 | None,
) -> StreamRecord:
    """The object is the contiguous parts S3 holds: the file no longer has those bytes.

    Never an empty object and never over an object already there: with nothing uploaded
    the stream fails with a reason; an object at the key that these parts do not make is
    left alone and the stream fails."""
    status = record.status or SOURCE_DELETED
    if record.state is not StreamState.FINALIZING:
        record = replace(record, state=StreamState.FINALIZING, status=status,
                         completed_at=record.completed_at or ctx.clock.time(),
                         completed_by=completed_by(status, None))
        await ctx.retry("checkpoint", _put(ctx, record))
    existing = await existing_object(ctx, record.key) if status == COMPLETE else None
    if status == COMPLETE and existing is None:
        # An idle end decided before the file went away: what S3 kept is not the verified
        # file (§2.3), so the object says what ended it (checkpointed before it is made).
        status = SOURCE_DELETED if fd is None else TRUNCATED
        record = replace(record, status=status, completed_by=completed_by(status, None))
        await ctx.retry("checkpoint", _put(ctx, record))
    parts = contiguous({p.part_number: p for p in parts})
    if not parts and status != COMPLETE:
        existing = await existing_object(ctx, record.key)
    if existing is not None and existing.size == 0:
        # An empty recording whose object was written (only put_empty writes one at a
        # stream's key) before a crash: its metadata is due, whatever ended it. Parts sent
        # since are of the bytes the file got later: a new stream's (§2.4), not this one's.
        if record.upload_id is not None:
            await abort_quietly(ctx, record.key, record.upload_id)
        return await publish(
            ctx, record, [], sha256=hashlib.sha256(b"").hexdigest(),
            probe=await _kept_probe(ctx, fd, record.path, status), status=status,
            mtime_ns=None, extra={"end_reason": None},
        )
    if not parts:
        if record.upload_id is not None:
            await abort_quietly(ctx, record.key, record.upload_id)
        return await _fail(ctx, record, "the file lost its bytes before any part was uploaded")
    try:
        await complete_parts(ctx, record, parts)
    except UploadNotFound:
        info = await existing_object(ctx, record.key)
        why = ("an object not made of the checkpointed parts is already at the key"
               if info is not None else "S3 lost the uploaded parts and the file lost its bytes")
        return await _fail(ctx, record, why)
    ctx.failpoints.hit("after_complete")
    sha256 = running.hexdigest(len(parts)) if running is not None else None
    if sha256 is None:
        sha256 = await sha256_of_object(ctx, record.key, sum(p.size for p in parts))
    probe = await _kept_probe(ctx, fd, record.path, status)
    return await publish(
        ctx, record, parts, sha256=sha256, probe=probe, status=status, mtime_ns=None,
        extra={"end_reason": "deleted" if status == SOURCE_DELETED else "truncated"},
    )


async def _kept_probe(ctx: Context, fd: int | None, path: str, status: str) -> ProbeResult:
    if fd is None or status == SOURCE_DELETED:
        return ProbeResult(None, "source file gone before completion; not probed")
    return await probe_file(ctx, fd, path)


async def _fail(ctx: Context, record: StreamRecord, why: str) -> StreamRecord:
    failed = replace(record, state=StreamState.FAILED, error=why)
    await ctx.retry("checkpoint", _put(ctx, failed))
    ctx.metrics.streams_failed.inc()
    log.error(logs.STREAM_FAILED, error=why)
    return failed


def _put(ctx: Context, record: StreamRecord) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.checkpoints.put_stream(record)


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
    if ctx.config.rpo_seconds is not None:
        await delete_tail(ctx, record.stream_id)  # the object holds every byte they did
    size = sum(p.size for p in parts)
    record = replace(record, final_size=size, final_mtime_ns=mtime_ns, sha256=sha256)
    await ctx.retry("checkpoint", _put(ctx, record))
    # A record from before completed_by existed, or kept after a truncation: derive it.
    if record.completed_by is None or status != COMPLETE:
        record = replace(record, completed_by=completed_by(status, None))
    verified = bool(parts) and await ctx.objects.part_checksum() == "crc64nvme"
    evidence = ctx.evidence.fields(
        parts, started_at=record.started_at,
        completed_at=record.completed_at or ctx.clock.time(), checksum_verified=verified,
    )
    doc = build_metadata(
        record=record, parts=parts, probe=probe, status=status, processed_at=ctx.clock.time(),
        extra={**extra, **evidence, "completed_by": record.completed_by},
    )
    body = to_json_bytes(ctx.evidence.seal(doc))  # signed last: nothing is added after
    meta_key = metadata_key(record.key)
    await ctx.retry(
        "put_metadata", lambda: ctx.objects.put_object(meta_key, body, "application/json")
    )
    ctx.metrics.metadata_written.inc()
    log.info(logs.METADATA_WRITTEN, key=meta_key, status=status)
    ctx.failpoints.hit("after_metadata")
    record = replace(record, state=StreamState.COMPLETED)
    await _mark_completed(ctx, record, parts, body, status=status, meta_key=meta_key)
    ctx.metrics.streams_completed.inc()
    ctx.metrics.stream_duration.observe(
        max(0.0, (record.completed_at or ctx.clock.time()) - record.started_at)
    )
    log.info(
        logs.STREAM_COMPLETED, status=status, size=size, parts=len(parts),
        duration_s=probe.duration_seconds, sha256=sha256,
    )
    return record


async def _mark_completed(
    ctx: Context, record: StreamRecord, parts: list[PartRecord], body: bytes, *, status: str,
    meta_key: str,
) -> None:
    """Mark the stream completed and, in the same store write, record its notifications
    and after-upload intent (§2.15, §2.16): none is lost to a crash after this."""
    outbox = ctx.outbox
    items = [] if outbox is None else ctx.completion_outbox.items(
        record, parts, body, status=status, metadata_key=meta_key)
    if outbox is None or not items:
        await ctx.retry("checkpoint", _put(ctx, record))
        return
    created = ctx.clock.time()
    await ctx.retry("checkpoint", lambda: outbox.put_stream_with_outbox(record, items, created))
    ctx.failpoints.hit("after_outbox")
    ctx.outbox_poke()
