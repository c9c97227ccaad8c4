"""drain → decide the end → verify or keep → complete → probe → metadata → completed.

Every turn of a stream's ending is decided in ``core``: ``core.verified`` (the object is
the verified file, or the ending turns to what S3 holds) and ``core.kept`` (the object is
what S3 holds). This module is their runner: it carries out one action at a time (fstat,
hashing, parts, HeadObject, Complete, checkpoints) and sends back what it saw, so a
checkpoint is written before the next step starts and a restart finishes the stream the
same way. Safe to run again after a crash at any point: Complete is confirmed with
HeadObject, an object already at the key is never overwritten, and the metadata is written
only after the object exists.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.core import kept, verified
from cefmp4.core.ending import CompletedBy, End, Status, truncated
from cefmp4.core.identity import Fingerprint, fingerprint, ident_of
from cefmp4.core.kept import kept_ending
from cefmp4.core.keys import metadata_key
from cefmp4.core.machine import Checkpoint, Checkpointed, Unexpected
from cefmp4.core.metadata import ProbeResult, build_metadata, to_json_bytes
from cefmp4.core.parts import part_bounds
from cefmp4.core.verified import verified_ending
from cefmp4.runtime import logs
from cefmp4.runtime.clock import wait_tasks
from cefmp4.runtime.errors import ObjectExists, UploadNotFound
from cefmp4.streams.context import Context
from cefmp4.streams.objects import (
    FileChanged,
    abort_quietly,
    complete_parts,
    object_at,
    put_empty,
    sha256_of_object,
)
from cefmp4.streams.recheck import digest_now, needs_md5, settled
from cefmp4.streams.runner import run_machine
from cefmp4.streams.source import RunningSha256, stat_or_none
from cefmp4.streams.stream import StreamWorker
from cefmp4.streams.tail import delete_tail, list_segments, upload_tail_part

log = structlog.get_logger("cefmp4.streams.finalize")


def with_end(record: StreamRecord, end: End, now: float) -> StreamRecord:
    """``record`` finalizing with ``end`` (what is checkpointed before acting on it)."""
    return replace(record, state=StreamState.FINALIZING, status=end.status.value,
                   completed_at=record.completed_at or now,
                   completed_by=end.completed_by.value)


async def finalize(worker: StreamWorker, *, truncated_now: bool = False) -> None:
    # A truncation seen already ends with what S3 holds: no probe to win time for.
    early = None if truncated_now else EarlyProbe.start(worker.ctx, worker.fd, worker.record.path)
    try:
        await _finalize(worker, truncated_now, early)
    finally:
        if early is not None:
            await early.close()


async def _finalize(worker: StreamWorker, truncated_now: bool, early: EarlyProbe | None) -> None:
    """Runs ``core.verified.verified_ending``, which decides every turn; this carries out
    its actions one at a time, so a checkpoint is written before the next step starts."""
    ctx, up, record = worker.ctx, worker.up, worker.record
    machine = verified_ending(
        resumed=record.state is StreamState.FINALIZING, truncated_now=truncated_now,
        recorded=End.recorded(record.status, record.completed_by), judged=worker.completed_by,
    )

    async def carry_out(action: verified.Action) -> verified.Observation:
        try:
            return await _step(worker, action)
        except ObjectExists:
            return verified.ObjectThere()
        except UploadNotFound as exc:
            return verified.UploadGone(str(exc))

    outcome = await run_machine(machine, carry_out)
    if isinstance(outcome, verified.Keep):
        if not outcome.standing:  # the end is checkpointed: parts in flight below the cut finish
            await up.drain(timeout=ctx.config.drain_timeout)
        await finish_kept(ctx, worker.record, up.all_parts(), worker.fd,
                          None if outcome.standing else up.running_sha)
        return
    ctx.failpoints.hit("after_complete")
    if early is not None:
        probe = await early.result()
    else:
        probe = await probe_file(ctx, worker.fd, worker.record.path)
    made = outcome.made
    worker.record = await publish(
        ctx, worker.record, list(made.parts), sha256=made.sha256, probe=probe,
        end=outcome.end, mtime_ns=made.mtime_ns, extra={"parts_reuploaded": up.reuploaded},
    )


async def _step(worker: StreamWorker, action: verified.Action) -> verified.Observation:
    """One action of ``verified_ending``. ``ObjectExists`` and ``UploadNotFound`` raised by
    a step that talks to S3 are its answer too (the caller turns them into observations);
    ``Settle`` is before the end is decided, so what it raises suspends the stream."""
    ctx, up, fd = worker.ctx, worker.up, worker.fd
    match action:
        case Checkpoint():
            if action.seen_truncated:
                log.warning(logs.STREAM_TRUNCATED, size=os.fstat(fd).st_size,
                            uploaded=up.uploaded_extent())
            worker.record = with_end(worker.record, action.end, ctx.clock.time())
            await ctx.retry("checkpoint", _put(ctx, worker.record))
            return Checkpointed()
        case verified.CancelBeyond():
            await up.cancel_beyond(os.fstat(fd).st_size)
            return verified.Done()
        case verified.Settle():  # before the end is decided: what fails here suspends
            try:
                shrunk = await up.drain_watching(timeout=ctx.config.drain_timeout)
            except (ObjectExists, UploadNotFound) as exc:
                raise _Suspend(str(exc)) from exc
            return verified.Shrunk() if shrunk else verified.Drained()
        case verified.Drain():
            return verified.Shrunk() if await up.drain_watching() else verified.Drained()
        case verified.TakePredigest():
            return verified.Digested(await worker.predigest.take())
        case verified.DigestNow():
            watch = _Watch(worker)
            digest = await watch.run(
                digest_now(fd, up.schedule, ctx.clock, md5=needs_md5(up.parts)))
            return verified.Shrunk() if watch.shrunk else verified.Digested(digest)
        case verified.PutEmpty():
            await put_empty(ctx, worker.record)
            return verified.Completed()
        case verified.Complete():
            return await _complete_watching(worker, list(action.parts), action.unchanged)
        case verified.Restart():
            await up.restart(action.why)
            return verified.Done()
    seen = _look_or_start(worker, action)
    if seen is None:
        raise Unexpected(f"no step for {action!r}")
    return seen


def _look_or_start(worker: StreamWorker, action: verified.Action) -> verified.Observation | None:
    """The steps that only look at the file or start parts (they do not wait)."""
    up, fd = worker.up, worker.fd
    match action:
        case verified.LookFate():
            held = os.fstat(fd)
            at_path = stat_or_none(Path(worker.record.path))
            return verified.FateSeen(held.st_nlink, ident_of(held),
                                     None if at_path is None else ident_of(at_path))
        case verified.Look():
            st = os.fstat(fd)
            return verified.Looked(st.st_size, fingerprint(st), up.uploaded_extent(),
                                   dict(up.parts))
        case verified.QuickStart():
            return verified.Done() if _quick_start(worker) else verified.NotQuick()
        case verified.QuickFinish():
            return _quick_finish(worker)
        case verified.Resend():
            up.forget_parts_beyond(action.keep)
            for number, offset, size in action.ranges:
                up.start_part(number, offset, size)
            return verified.Done()
    return None


class _Suspend(Exception):
    """Raised out of finalize: the stream suspends and resumes later from its checkpoint."""


async def _complete_watching(
    worker: StreamWorker, parts: list[PartRecord], unchanged: Fingerprint
) -> verified.Observation:
    """``complete_parts`` on condition that the file is still as verified, watched
    (``_Watch``): a Complete that goes through meanwhile stands, it is of verified bytes;
    one retried after a truncation is not sent."""
    fd, watch = worker.fd, _Watch(worker)

    def still() -> bool:
        # A retry may come sooner than the next look: it looks itself.
        watch.look()
        return not watch.shrunk and fingerprint(os.fstat(fd)) == unchanged

    try:
        await watch.run(complete_parts(worker.ctx, worker.record, parts, still=still))
    except (FileChanged, UploadNotFound) as exc:
        # Seen shorter meanwhile: the recording ended there, whatever else happened to the
        # upload (a purge is the kept ending's to judge, not a restart of the regrown file).
        if watch.shrunk:
            return verified.Shrunk()
        if isinstance(exc, FileChanged):
            return verified.Changed()
        raise
    return verified.Completed()


_T = TypeVar("_T")


class _Watch:
    """A look at the held file every poll interval while a long step runs, as
    ``drain_watching`` does for parts: an outage can hold a Complete back for minutes, and
    hashing a large file takes seconds, and a truncation in that time is the recording's
    end even when the file grows back before the step returns (simulator seed 11006656:
    verifying the regrown file re-sent part 1 over the bytes S3 held)."""

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker
        self.shrunk = False

    async def run(self, step: Awaitable[_T]) -> _T:
        ctx = self.worker.ctx
        task = asyncio.ensure_future(step)
        try:
            while await wait_tasks(ctx.clock, [task], ctx.config.poll_interval):
                self.look()
            self.look()
            return task.result()
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    def look(self) -> None:
        size = os.fstat(self.worker.fd).st_size
        self.shrunk = self.shrunk or truncated(size, self.worker.up.uploaded_extent())


def _quick_start(worker: StreamWorker) -> bool:
    """A file that was complete before we read it needs no second read: every part's MD5
    was taken from the bytes we uploaded, and the SHA-256 was built as they were read. Its
    missing parts are sent; False for any other file."""
    up = worker.up
    st = os.fstat(worker.fd)
    if up.running_sha is None or not worker.quiet_since_start(st):
        return False
    for number, offset, size in part_bounds(up.schedule, st.st_size):
        if number not in up.parts and not up.is_inflight(number):
            up.start_part(number, offset, size)
    return True


def _quick_finish(worker: StreamWorker) -> verified.Verified | verified.NotQuick:
    up = worker.up
    after = os.fstat(worker.fd)
    bounds = part_bounds(up.schedule, after.st_size)
    sha256 = up.running_sha.hexdigest(len(bounds)) if up.running_sha is not None else None
    parts = [up.parts.get(n) for n in range(1, len(bounds) + 1)]
    if sha256 is None or not worker.quiet_since_start(after) or None in parts:
        return verified.NotQuick()
    return verified.Verified(tuple(p for p in parts if p is not None), sha256,
                             after.st_mtime_ns, fingerprint(after))


# --- the object of what S3 holds -----------------------------------------------------------


async def finish_kept(
    ctx: Context,
    record: StreamRecord,
    parts: list[PartRecord],
    fd: int | None,
    running: RunningSha256 | None,
) -> StreamRecord:
    """The object is what S3 holds: the file no longer has those bytes. Runs
    ``core.kept.kept_ending``, which decides every turn; this carries out its actions one
    at a time, so a checkpoint is written before the next request starts."""
    end = End.recorded(record.status or Status.SOURCE_DELETED.value, record.completed_by)
    machine = kept_ending(
        end, parts, finalizing=record.state is StreamState.FINALIZING,
        file_open=fd is not None, has_upload=record.upload_id is not None,
        segments=ctx.config.rpo_seconds is not None, running_sha=running is not None,
    )
    current = [record]  # the record as the actions leave it

    async def carry_out(action: kept.Action) -> kept.Observation:
        current[0], seen = await _carry_out(ctx, current[0], action)
        return seen

    outcome = await run_machine(machine, carry_out)
    record = current[0]
    match outcome:
        case kept.Publish():
            ctx.failpoints.hit("after_complete")
            sha256 = (running.hexdigest(len(outcome.parts))
                      if running is not None and outcome.running_sha else None)
            if sha256 is None:
                sha256 = await sha256_of_object(ctx, record.key,
                                                sum(p.size for p in outcome.parts))
            extra: dict[str, object] | None = (
                None if outcome.tail_bytes is None else {"tail_bytes": outcome.tail_bytes})
            return await publish(
                ctx, record, list(outcome.parts), sha256=sha256,
                probe=await _kept_probe(ctx, fd, record.path, outcome.end),
                end=outcome.end, mtime_ns=None, extra=extra)
        case kept.PublishEmpty():
            return await publish(
                ctx, record, [], sha256=hashlib.sha256(b"").hexdigest(),
                probe=await _kept_probe(ctx, fd, record.path, outcome.end), end=outcome.end,
                mtime_ns=None)
        case kept.Taken():
            return await taken(ctx, record)
        case kept.Fail():
            if outcome.release:
                log.warning(logs.UPLOAD_RELEASED, key=record.key, upload_id=record.upload_id)
                record = replace(record, upload_id=None)
            return await _fail(ctx, record, outcome.why)


async def _carry_out(
    ctx: Context, record: StreamRecord, action: kept.Action
) -> tuple[StreamRecord, kept.Observation]:
    """One action of ``kept_ending``, with its retries: (the record, what was seen)."""
    upload_id = record.upload_id
    match action:
        case Checkpoint():
            record = with_end(record, action.end, ctx.clock.time())
            await ctx.retry("checkpoint", _put(ctx, record))
            return record, Checkpointed()
        case kept.Head():
            return record, kept.HeadSaid(await object_at(ctx, record, action.parts))
        case kept.ListSegments():
            return record, kept.SegmentsListed(tuple(await list_segments(ctx, record.stream_id)))
        case kept.ListParts() if upload_id is not None:
            try:
                listed = await ctx.retry("list_parts", functools.partial(
                    ctx.objects.list_parts, record.key, upload_id))
            except UploadNotFound:
                listed = []
            return record, kept.PartsListed(len(listed))
        case kept.Abort() if upload_id is not None:
            await abort_quietly(ctx, record.key, upload_id)
            return record, kept.Aborted()
        case kept.SendPiece():
            try:
                part = await upload_tail_part(ctx, record, action.number, action.pieces)
            except UploadNotFound:
                return record, kept.UploadGone()
            return record, kept.PieceSent(part)
        case kept.Complete():
            try:
                await complete_parts(ctx, record, list(action.parts))
            except UploadNotFound:
                return record, kept.UploadGone()
            return record, kept.Completed()
    raise Unexpected(f"{action!r} for a record without an upload")


async def taken(ctx: Context, record: StreamRecord) -> StreamRecord:
    """Another party made an object of this stream's upload (``Resume.TAKEN``): that object
    and its metadata stand; the stream is recorded as salvaged and over. Its final size is
    left unknown, so the file is never taken for uploaded: its bytes go on as a new stream."""
    done = replace(record, state=StreamState.COMPLETED, status=Status.SALVAGED.value,
                   completed_by=CompletedBy.SALVAGE.value,
                   completed_at=record.completed_at or ctx.clock.time(),
                   final_size=None, final_mtime_ns=None)
    await ctx.retry("checkpoint", _put(ctx, done))
    log.warning(logs.STREAM_TAKEN, key=record.key, upload_id=record.upload_id)
    return done


async def _kept_probe(ctx: Context, fd: int | None, path: str, end: End) -> ProbeResult:
    if fd is None or end.status is Status.SOURCE_DELETED:
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
    end: End,
    mtime_ns: int | None,
    extra: dict[str, object] | None = None,
) -> StreamRecord:
    """The object is complete: checkpoint it, write the metadata, mark the stream completed."""
    if ctx.config.rpo_seconds is not None:
        await delete_tail(ctx, record.stream_id)  # the object holds every byte they did
    size = sum(p.size for p in parts)
    record = replace(record, final_size=size, final_mtime_ns=mtime_ns, sha256=sha256)
    await ctx.retry("checkpoint", _put(ctx, record))
    status = end.status.value
    record = replace(record, completed_by=end.completed_by.value)
    verified = bool(parts) and await ctx.objects.part_checksum() == "crc64nvme"
    evidence = ctx.evidence.fields(
        parts, started_at=record.started_at,
        completed_at=record.completed_at or ctx.clock.time(), checksum_verified=verified,
    )
    doc = build_metadata(
        record=record, parts=parts, probe=probe, status=status, processed_at=ctx.clock.time(),
        extra={"end_reason": end.reason, **(extra or {}), **evidence,
               "completed_by": record.completed_by},
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


# --- ffprobe of the file, through its descriptor, early where that is safe ------------------
# The probe reads the held descriptor through /proc (the bytes even of a deleted or renamed
# file). ``EarlyProbe`` starts it when finalize begins, so it runs beside the last parts and
# the Complete instead of after them.


async def probe_file(ctx: Context, fd: int, path: str) -> ProbeResult:
    """Probe the file now; a failure is logged and counted once."""
    return _counted(ctx, await ctx.prober.probe(_probe_target(fd, path)))


def _probe_target(fd: int, path: str) -> Path:
    # /proc/<pid>/fd/<n> reaches the bytes even when the file was deleted or renamed.
    target = Path(f"/proc/{os.getpid()}/fd/{fd}")
    return target if os.path.exists(target) else Path(path)


def _counted(ctx: Context, result: ProbeResult) -> ProbeResult:
    if result.duration_seconds is None:
        ctx.metrics.failed_operations.labels(operation="probe").inc()
        log.warning(logs.PROBE_FAILED, error=result.error)
    return result


class EarlyProbe:
    """ffprobe of the file from the moment finalize begins, beside the last parts and the
    Complete; after them, its ~0.08 s (a subprocess) was the tail of every stream, and all
    of `upload`'s wait once the bytes were sent. Its answer stands only if the (settled)
    file did not change from before it began until the object was made; otherwise the file
    is probed again, so the metadata always describes the object's bytes."""

    def __init__(self, ctx: Context, fd: int, path: str, before: os.stat_result) -> None:
        self._ctx, self._fd, self._path = ctx, fd, path
        self._before = fingerprint(before)
        self._task = asyncio.create_task(self._run(), name="early-probe")

    @classmethod
    def start(cls, ctx: Context, fd: int, path: str) -> EarlyProbe | None:
        """Probing now, or None for a file not settled: its fingerprint could then miss a
        write within the mtime granularity (``recheck.settled``, the predigest's rule too)."""
        st = os.fstat(fd)
        return cls(ctx, fd, path, st) if settled(st, ctx.clock.time()) else None

    async def _run(self) -> tuple[ProbeResult, Fingerprint]:
        result = await self._ctx.prober.probe(_probe_target(self._fd, self._path))
        return result, fingerprint(os.fstat(self._fd))

    async def result(self) -> ProbeResult:
        """The probe of the file as it is now, which is the object's bytes."""
        result, after = await self._task
        if after == self._before == fingerprint(os.fstat(self._fd)):
            return _counted(self._ctx, result)
        log.debug(logs.PROBE_REPEATED)
        return await probe_file(self._ctx, self._fd, self._path)

    async def close(self) -> None:
        """Stop a probe no path used (a kept object is probed after its own checks)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
