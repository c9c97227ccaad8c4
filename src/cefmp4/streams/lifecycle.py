"""One stream's life: made from a file (new, or resumed from its checkpoint), followed,
then finalized or suspended. The supervisor decides which files; this module does it.
"""

from __future__ import annotations

import asyncio
import enum
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog
from structlog.contextvars import bound_contextvars

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.core import resume as core_resume
from cefmp4.core.containers import DEFAULT_EXTENSIONS
from cefmp4.core.hashing import record_past
from cefmp4.core.identity import unchanged_since
from cefmp4.core.keys import UnkeyablePath, new_stream_id, object_key
from cefmp4.core.machine import Checkpoint, Checkpointed, Unexpected
from cefmp4.core.resume import Recording, Resumed, resuming
from cefmp4.intake.discover import printable, scan
from cefmp4.runtime import logs
from cefmp4.runtime.errors import (
    LeaseLost,
    SourceError,
    SourceGone,
    SourcePermission,
    SourceReplaced,
    UploadTaken,
)
from cefmp4.streams.context import Context
from cefmp4.streams.finalize import finalize, finish_kept, taken, with_end
from cefmp4.streams.recheck import holds, holds_body
from cefmp4.streams.reconcile import reconcile
from cefmp4.streams.runner import run_machine
from cefmp4.streams.source import OpenedSource, open_source
from cefmp4.streams.stream import Outcome, StreamWorker

log = structlog.get_logger("cefmp4.streams.lifecycle")

Bind = Callable[[int, str], None]
"""Called before a stream's first checkpoint write: ``(inode, stream_id)``; LeaseLost if
this instance must not write it."""


class Deferred(Exception):
    """The file cannot be opened right now (out of descriptors, an I/O error): try later."""


class Unkeyable:
    """Files ``start_new`` refused because their path cannot become an object key (over
    S3's 1,024 bytes, a name that is not UTF-8). Each is warned about (``file_skipped``)
    and counted (``streams_failed_total``) once, then passed by (``seen``) until it is
    renamed (a new path: looked at again) or another file takes its path."""

    def __init__(self) -> None:
        self._skipped: dict[str, int | None] = {}  # path -> inode of the file refused there

    def seen(self, path: Path, inode: int) -> bool:
        return self._skipped.get(str(path), -1) == inode

    def skip(self, ctx: Context, path: Path, inode: int | None, reason: str) -> None:
        self._skipped[str(path)] = inode
        ctx.metrics.streams_failed.inc()
        log.warning(logs.FILE_SKIPPED, path=printable(path), reason=reason)


@dataclass(frozen=True, slots=True)
class Spec:
    """How workers are made: what every new ``StreamWorker`` gets besides its file, and
    which files none can be made of."""

    ctx: Context
    shutdown: asyncio.Event
    stream_timeout: float | None
    unkeyable: Unkeyable = field(default_factory=Unkeyable)


@dataclass(frozen=True, slots=True)
class Reused:
    """The stream ended: the file found is not its recording any more (``core.resume``).
    ``fd`` is that file, open: its new stream starts from it, never from its path again
    (which may lead to yet another file by now)."""

    fd: int


class Ended(enum.Enum):
    FINISHED = "finished"  # completed (or failed for good): the file may start a new stream
    SUSPENDED = "suspended"  # shutdown or an error: resumable from its checkpoint
    RELINQUISHED = "relinquished"  # another instance owns it now


async def _open(path: Path, inode: int | None) -> OpenedSource | None:
    """Opened; None when unreadable (warned); ``Deferred`` when it may work later;
    ``SourceGone``/``SourceReplaced`` passed on (only those mean the file is not there)."""
    try:
        return await open_source(path, inode=inode)
    except (SourceGone, SourceReplaced):
        raise
    except SourcePermission as exc:
        log.warning(logs.SOURCE_UNREADABLE, path=str(path), error=str(exc))
        return None
    except SourceError as exc:
        log.warning(logs.STREAM_DEFERRED, path=str(path), error=str(exc))
        raise Deferred(str(exc)) from exc


async def start_new(
    spec: Spec, path: Path, rel: str | None, bind: Bind, *,
    inode: int | None = None, held: int | None = None,
) -> StreamWorker | None:
    """A new stream of the file at ``path`` (the one with ``inode``: the one claimed, not
    a file that took its place since), or of the descriptor ``held`` (it takes it).
    None for a path that cannot become an object key: skipped before the file is opened
    or anything is written (``spec.unkeyable``)."""
    ctx = spec.ctx
    try:
        stream_id = new_stream_id()
        rel = rel if rel is not None else path.relative_to(ctx.config.watch_dir).as_posix()
        key = object_key(ctx.config.key_prefix, stream_id, rel,
                         template=ctx.config.key_template, started_at=ctx.clock.time(),
                         instance=ctx.config.instance)
    except UnkeyablePath as exc:
        if held is not None:
            os.close(held)
        spec.unkeyable.skip(ctx, path, inode, str(exc))
        return None
    except BaseException:
        if held is not None:
            os.close(held)
        raise
    try:
        source = await _open(path, inode) if held is None else OpenedSource(held, os.fstat(held))
    except (SourceGone, SourceReplaced) as exc:
        log.info(logs.SOURCE_CHANGED, path=str(path), error=str(exc))
        return None
    if source is None:
        return None
    fd, st = source.fd, source.st
    try:
        bind(st.st_ino, stream_id)
        now = ctx.clock.time()
        record = StreamRecord(
            stream_id=stream_id, path=str(path), rel_path=rel,
            device=st.st_dev, inode=st.st_ino, bucket=ctx.objects.bucket, key=key,
            part_size=ctx.config.part_size, max_parts=ctx.config.max_parts,
            state=StreamState.ACTIVE, started_at=now, last_activity_at=now,
        )
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
    except BaseException:
        os.close(fd)
        raise
    # A new file waits the full timeout from discovery, whatever its mtime says.
    worker = StreamWorker(ctx, record, fd, [], spec.shutdown, stream_timeout=spec.stream_timeout)
    ctx.metrics.streams_started.inc()
    log.info(logs.STREAM_STARTED, stream_id=stream_id, path=str(path), key=record.key)
    return worker


async def resume(
    spec: Spec, rec: StreamRecord, path: Path, bind: Bind
) -> StreamWorker | Ended | Reused | None:
    """A worker for an unfinished stream; ``Ended.FINISHED`` when it ended here (its file
    is gone); ``Reused`` when the file found is a new stream; None when it cannot be read
    now (it stays unfinished: nothing is lost). Runs ``core.resume.resuming``, which decides
    every turn, carrying out its actions (``_Resuming``)."""
    step = _Resuming(spec.ctx, rec, path, bind)
    try:
        with bound_contextvars(stream_id=rec.stream_id, path=rec.path):
            resumed = await run_machine(resuming(), step.carry_out)
    except BaseException:
        if step.fd is not None:
            os.close(step.fd)
        raise
    match resumed:
        case Resumed.ENDED:
            return Ended.FINISHED
        case Resumed.UNREADABLE:
            return None
        case Resumed.REUSED if step.fd is not None:
            return Reused(step.fd)
    if step.fd is None or step.st is None:
        raise Unexpected("a stream goes on without its file open")
    ctx, rec, parts = spec.ctx, step.rec, step.parts
    worker = StreamWorker(ctx, rec, step.fd, parts, spec.shutdown,
                          stream_timeout=spec.stream_timeout)
    worker.start_idle_clock(step.st)
    ctx.metrics.streams_resumed.inc()
    log.info(logs.STREAM_RESUMED, stream_id=rec.stream_id, path=str(path), parts=len(parts))
    return worker


class _Resuming:
    """Carries out ``core.resume.resuming``'s actions for one stream, holding what they
    read between them: the descriptor of the file found, the record and its parts."""

    def __init__(self, ctx: Context, rec: StreamRecord, path: Path, bind: Bind) -> None:
        self.ctx, self.rec, self.path, self.bind = ctx, rec, path, bind
        self.fd: int | None = None
        self.st: os.stat_result | None = None
        self.parts: list[PartRecord] = []

    async def carry_out(self, action: core_resume.ResumeAction) -> core_resume.ResumeObservation:
        ctx, rec = self.ctx, self.rec
        match action:
            case core_resume.Open():
                return await self._open()
            case core_resume.SayGone():
                if action.reason is None:
                    log.warning(logs.SOURCE_GONE)
                else:
                    log.warning(logs.SOURCE_GONE, found=str(self.path), reason=action.reason)
                return core_resume.Done()
            case core_resume.Bind():
                self.bind(rec.inode, rec.stream_id)
                return core_resume.Done()
            case core_resume.GetParts():
                self.parts = await ctx.retry(
                    "checkpoint", lambda: ctx.checkpoints.get_parts(rec.stream_id))
                return core_resume.PartsRead(len(self.parts), len(self.parts) == 1
                                 and record_past(self.parts[0].md5) is not None)
            case core_resume.Ask():
                return core_resume.Holds(await self._ask(action.question))
            case core_resume.Reconcile():
                return await self._reconcile(action.with_file)
            case Checkpoint():
                self.rec = with_end(rec, action.end, ctx.clock.time())
                ended = self.rec
                await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(ended))
                return Checkpointed()
            case core_resume.FinishKept():
                await finish_kept(ctx, rec, self.parts, None, None)
                return core_resume.Done()
            case core_resume.MarkTaken():
                await taken(ctx, rec)
                return core_resume.Done()
        raise Unexpected(f"no step for {action!r}")

    async def _open(self) -> core_resume.ResumeObservation:
        rec = self.rec
        try:
            source = await _open(self.path, rec.inode)
        except (SourceGone, SourceReplaced):
            return core_resume.FileGone()
        if source is None:
            return core_resume.CannotRead()
        self.fd, self.st = source.fd, source.st
        here = str(self.path) in (rec.path, str(self.ctx.config.watch_dir / rec.rel_path))
        return core_resume.Opened(here)

    async def _ask(self, question: Recording) -> bool:
        fd, parts = self.fd, self.parts
        if fd is None:
            raise Unexpected("asked of a file not open")
        try:
            if question is Recording.ASK_LAST:
                return await asyncio.to_thread(holds, fd, parts[-1])
            if question is Recording.ASK_BODY:
                return await asyncio.to_thread(holds_body, fd, parts[0])
            return await asyncio.to_thread(lambda: any(holds(fd, p) for p in parts[:2]))
        except SourceError as exc:  # an I/O error says nothing of the bytes: look again later
            log.warning(logs.STREAM_DEFERRED, path=str(self.path), error=str(exc))
            raise Deferred(str(exc)) from exc

    async def _reconcile(self, with_file: bool) -> core_resume.ResumeObservation:
        rec = self.rec
        if with_file:
            if self.st is None:
                raise Unexpected("reconciled with a file not open")
            # The device number is this host's: on a shared volume another host's differs.
            rec = replace(rec, path=str(self.path), device=self.st.st_dev)
        try:
            self.rec, self.parts = await reconcile(self.ctx, rec, self.parts,
                                                   self.fd if with_file else None)
        except UploadTaken:
            return core_resume.Taken()
        return core_resume.Reconciled()


async def run_to_end(worker: StreamWorker, shutdown_grace: float) -> Ended:
    """Follow, then finalize or suspend. Errors of the stream are handled here; the
    checkpoint is left as it is so that a later event or restart resumes the stream."""
    ctx = worker.ctx
    try:
        outcome = Outcome.IDLE
        if worker.record.state is not StreamState.FINALIZING:
            outcome = await worker.follow()
        if outcome is Outcome.SHUTDOWN:
            await worker.up.drain(timeout=shutdown_grace)
            log.info(logs.STREAM_SUSPENDED, durable_bytes=worker.up.durable_bytes())
            return Ended.SUSPENDED
        await finalize(worker, truncated_now=outcome is Outcome.TRUNCATED)
        return Ended.FINISHED
    except asyncio.CancelledError:
        if not worker.lease_lost:
            raise
        log.warning(logs.STREAM_RELINQUISHED)
        return Ended.RELINQUISHED
    except LeaseLost as exc:
        worker.lease_lost = True
        log.warning(logs.STREAM_RELINQUISHED, error=str(exc))
        return Ended.RELINQUISHED
    except UploadTaken:
        # The file goes on as a new stream: the supervisor looks at its path (or its
        # descriptor, unlinked) again once this one is finished.
        await worker.up.cancel_inflight()
        worker.record = await taken(ctx, worker.record)
        return Ended.FINISHED
    except Exception as exc:
        ctx.metrics.streams_failed.inc()
        log.error(logs.STREAM_FAILED, error=str(exc), exc_info=exc)
        return Ended.SUSPENDED
    finally:
        await worker.stop()


def held_fd(worker: StreamWorker) -> int | None:
    """A copy of the finished stream's descriptor when the file holds bytes its object does
    not and no path leads to it any more (deleted or replaced while a truncated stream
    finalized, or grown after Complete): its writer may still write there, and no event
    will ever name it again. The successor stream follows it from the copy (SPEC §2.4)."""
    st = os.fstat(worker.fd)
    rec = worker.record
    if st.st_nlink > 0 or st.st_size == 0:
        return None  # still linked: an event or rescan finds it at its path
    if rec.state is StreamState.COMPLETED and unchanged_since(
        rec.final_size, rec.final_mtime_ns, st
    ):
        return None
    return os.dup(worker.fd)


def locate(watch_dir: Path, record: StreamRecord) -> Path | None:
    """Where the stream's file is now, by inode: its last path, else its original one."""
    for candidate in (Path(record.path), watch_dir / record.rel_path):
        try:
            if os.stat(candidate).st_ino == record.inode:
                return candidate
        except OSError:
            continue
    return None


def scan_by_inode(
    watch_dir: Path, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> dict[int, Path]:
    """Blocking (a thread): every candidate file under ``watch_dir`` by inode."""
    found: dict[int, Path] = {}
    for path in scan(watch_dir, extensions=extensions):
        try:
            found[os.stat(path).st_ino] = path
        except OSError:
            continue
    return found
