"""Which file is which stream: start, resume and supervise one worker per stream.

Files are identified by (device, inode), never by name, so a rename keeps its stream and a
completed, unchanged file is recognised without asking S3.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Coroutine, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from cefmp4 import logs
from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.discover import check_file
from cefmp4.errors import LeaseLost
from cefmp4.finalize import finalize, finalize_orphan
from cefmp4.keys import new_stream_id, object_key
from cefmp4.pipeline import Context
from cefmp4.resume import reconcile
from cefmp4.stream import Outcome, StreamWorker

log = structlog.get_logger("cefmp4.manager")

Identity = tuple[int, int]

UNFINISHED = frozenset({StreamState.ACTIVE, StreamState.FINALIZING})


class StreamManager:
    def __init__(
        self,
        ctx: Context,
        shutdown: asyncio.Event,
        *,
        shutdown_grace: float = 20.0,
        stream_timeout: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.shutdown = shutdown
        self.shutdown_grace = shutdown_grace
        self.stream_timeout = stream_timeout
        self.workers: dict[Identity, StreamWorker] = {}
        self.completed: dict[Identity, StreamRecord] = {}
        self.unfinished: dict[Identity, StreamRecord] = {}
        self._starting: set[Identity] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stream_tasks: dict[Identity, asyncio.Task[None]] = {}
        self.failures = 0

    # --- start-up --------------------------------------------------------------------------

    async def load(self) -> None:
        """Read every known stream once: no S3 request per completed file."""
        records = await self.ctx.retry("checkpoint", self.ctx.checkpoints.list_streams)
        for rec in sorted(records, key=lambda r: r.started_at):
            ident = (rec.device, rec.inode)
            if rec.state is StreamState.COMPLETED:
                self.completed[ident] = rec
            elif rec.state in UNFINISHED:
                self.unfinished[ident] = rec

    def resume_all(self, scanned: Iterable[Path]) -> None:
        """Resume unfinished streams; a file renamed while we were down is found by inode."""
        by_inode: dict[Identity, Path] = {}
        for path in scanned:
            st = check_file(path, self.ctx.config.watch_dir)
            if st is not None:
                by_inode[(st.st_dev, st.st_ino)] = path
        for ident, rec in list(self.unfinished.items()):
            path = by_inode.get(ident, Path(rec.path))
            self._spawn(self._resume(rec, path), ident)

    # --- events ----------------------------------------------------------------------------

    def on_path(self, path: Path) -> None:
        """A file-system event or scan result for ``path``; cheap, never blocks."""
        if self.shutdown.is_set():
            return
        st = check_file(path, self.ctx.config.watch_dir)
        if st is None:
            # Deleted or moved away: the worker holding it open notices through fstat.
            for other in self.workers.values():
                if other.record.path == str(path):
                    other.wake.set()
            return
        ident = (st.st_dev, st.st_ino)
        worker = self.workers.get(ident)
        if worker is not None:
            worker.notice_path(str(path))
            return
        if ident in self._starting:
            return
        self._unknown_file(path, st, ident)

    def _unknown_file(self, path: Path, st: os.stat_result, ident: Identity) -> None:
        """No worker follows this file: resume its stream, start one, or leave it."""
        if ident in self.unfinished:
            self._spawn(self._resume(self.unfinished[ident], path), ident)
            return
        done = self.completed.get(ident)
        if done is not None and unchanged(done, st):
            return
        self._spawn(self._start_new(path), ident)

    def _spawn(self, coro: Coroutine[Any, Any, None], ident: Identity) -> None:
        self._starting.add(ident)

        async def starter() -> None:
            try:
                await coro
            finally:
                self._starting.discard(ident)

        self._track(asyncio.create_task(starter(), name=f"start-{ident}"))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Workers handle their own errors; reaching here is a bug worth shouting about.
            self.failures += 1
            log.error(logs.ERROR, task=task.get_name(), error=repr(exc), exc_info=exc)

    # --- streams ---------------------------------------------------------------------------

    def start_file(self, path: Path, rel_path: str) -> bool:
        """Upload ``path`` under ``rel_path`` unless it is already uploaded and unchanged
        (``cefmp4 upload``; the file may live outside WATCH_DIR). False if skipped."""
        st = os.stat(path)
        ident = (st.st_dev, st.st_ino)
        done = self.completed.get(ident)
        if ident in self.workers or ident in self._starting:
            return True
        if ident in self.unfinished:
            self._spawn(self._resume(self.unfinished[ident], path), ident)
            return True
        if done is not None and unchanged(done, st):
            return False
        self._spawn(self._start_new(path, rel_path), ident)
        return True

    async def _start_new(self, path: Path, rel: str | None = None) -> None:
        ctx = self.ctx
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning(logs.SOURCE_CHANGED, path=str(path), error=str(exc))
            return
        st = os.fstat(fd)
        if rel is None:
            rel = path.relative_to(ctx.config.watch_dir).as_posix()
        stream_id = new_stream_id()
        try:
            self._before_first_write(st.st_ino, stream_id)
        except LeaseLost:
            os.close(fd)
            raise
        now = ctx.clock()
        record = StreamRecord(
            stream_id=stream_id, path=str(path), rel_path=rel,
            device=st.st_dev, inode=st.st_ino, bucket=ctx.objects.bucket,
            key=object_key(ctx.config.key_prefix, stream_id, rel),
            part_size=ctx.config.part_size, max_parts=ctx.config.max_parts,
            state=StreamState.ACTIVE, started_at=now, last_activity_at=now,
        )
        try:
            await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
        except BaseException:
            os.close(fd)
            raise
        # A new file waits the full timeout from discovery, whatever its mtime says.
        worker = StreamWorker(
            ctx, record, fd, [], self.shutdown, stream_timeout=self.stream_timeout
        )
        ctx.metrics.streams_started.inc()
        log.info(logs.STREAM_STARTED, stream_id=stream_id, path=str(path), key=record.key)
        self._run(worker)

    async def _resume(self, rec: StreamRecord, path: Path) -> None:
        ident = (rec.device, rec.inode)
        fd: int | None = None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            st = os.fstat(fd)
            # By inode only: on a shared volume the device number is each host's own.
            if st.st_ino != rec.inode:
                os.close(fd)
                fd = None
        except OSError:
            fd = None
        if fd is None:
            # Deleted while we were down: complete what was uploaded (source_deleted).
            self.unfinished.pop(ident, None)
            with bound_contextvars(stream_id=rec.stream_id, path=rec.path):
                log.warning(logs.SOURCE_GONE)
                parts = await self.ctx.retry(
                    "checkpoint", lambda: self.ctx.checkpoints.get_parts(rec.stream_id)
                )
                rec, parts = await reconcile(self.ctx, rec, parts, None)
                await finalize_orphan(self.ctx, rec, parts)
            return
        try:
            self._before_first_write(rec.inode, rec.stream_id)
            parts = await self.ctx.retry(
                "checkpoint", lambda: self.ctx.checkpoints.get_parts(rec.stream_id)
            )
            # The device number is this host's: on a shared volume another host's differs.
            local = replace(rec, path=str(path), device=st.st_dev)
            rec, parts = await reconcile(self.ctx, local, parts, fd)
        except BaseException:
            os.close(fd)
            raise
        self.unfinished.pop(ident, None)
        worker = StreamWorker(
            self.ctx, rec, fd, parts, self.shutdown, stream_timeout=self.stream_timeout
        )
        worker.start_idle_clock(st)
        log.info(logs.STREAM_RESUMED, stream_id=rec.stream_id, path=str(path), parts=len(parts))
        self._run(worker)

    def _run(self, worker: StreamWorker) -> None:
        ident = (worker.record.device, worker.record.inode)
        try:
            self._on_worker_start(worker)
        except LeaseLost:
            # Lost while claiming (a stall longer than the lease): the new owner has it.
            log.warning(logs.STREAM_RELINQUISHED, stream_id=worker.stream_id)
            os.close(worker.fd)
            return
        self.workers[ident] = worker
        self.ctx.metrics.active_streams.set(len(self.workers))
        task = asyncio.create_task(self._supervise(worker), name=f"stream-{worker.stream_id}")
        self._stream_tasks[ident] = task
        self._track(task)

    def _before_first_write(self, inode: int, stream_id: str) -> None:
        """Hook: about to write the stream's checkpoints (scale-out fences them here)."""

    def _on_worker_start(self, worker: StreamWorker) -> None:
        """Hook: a worker is about to run; LeaseLost if it must not."""

    async def _on_worker_end(self, worker: StreamWorker) -> None:
        """Hook: a worker has stopped, whatever the reason."""

    def _lose(self, ident: Identity) -> None:
        """Another instance owns this file now: stop its worker at once, touch nothing."""
        worker = self.workers.get(ident)
        task = self._stream_tasks.get(ident)
        if worker is not None and task is not None:
            worker.lease_lost = True
            task.cancel()

    async def _supervise(self, worker: StreamWorker) -> None:
        ident = (worker.record.device, worker.record.inode)
        with bound_contextvars(stream_id=worker.stream_id, path=worker.record.path):
            try:
                if worker.record.state is StreamState.FINALIZING:
                    outcome = Outcome.IDLE
                else:
                    outcome = await worker.follow()
                if outcome is Outcome.SHUTDOWN:
                    await worker.drain(timeout=self.shutdown_grace)
                    self.unfinished[ident] = worker.record
                    log.info(logs.STREAM_SUSPENDED, durable_bytes=worker.durable_bytes())
                    return
                await finalize(worker, truncated=outcome is Outcome.TRUNCATED)
                self.completed[ident] = worker.record
            except asyncio.CancelledError:
                if not worker.lease_lost:
                    self.unfinished[ident] = worker.record
                    raise
                log.warning(logs.STREAM_RELINQUISHED)
            except LeaseLost as exc:
                worker.lease_lost = True
                log.warning(logs.STREAM_RELINQUISHED, error=str(exc))
            except Exception as exc:
                # Leave the checkpoint as it is: a later event or restart resumes the stream.
                self.failures += 1
                self.unfinished[ident] = worker.record
                self.ctx.metrics.streams_failed.inc()
                log.error(logs.STREAM_FAILED, error=str(exc), exc_info=exc)
            finally:
                await worker.cancel_inflight()
                with contextlib.suppress(OSError):
                    os.close(worker.fd)
                self.workers.pop(ident, None)
                self._stream_tasks.pop(ident, None)
                self.ctx.metrics.active_streams.set(len(self.workers))
                await self._on_worker_end(worker)
        # A truncated or regrown file starts a new stream of what it holds now.
        if (
            not self.shutdown.is_set()
            and not worker.lease_lost
            and worker.record.state is StreamState.COMPLETED
        ):
            self.on_path(Path(worker.record.path))

    # --- status ----------------------------------------------------------------------------

    def pending(self) -> tuple[int, float]:
        now = self.ctx.clock()
        total, oldest = 0, 0.0
        for worker in list(self.workers.values()):
            nbytes, age = worker.pending(now)
            total += nbytes
            oldest = max(oldest, age)
        return total, oldest

    async def wait_idle(self) -> None:
        """Until no stream is starting or running (for ``upload`` and tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        """Stop intake, let workers drain within the grace period, then cancel the rest."""
        self.shutdown.set()
        for worker in self.workers.values():
            worker.wake.set()
        tasks = list(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


def unchanged(done: StreamRecord, st: os.stat_result) -> bool:
    return st.st_size == done.final_size and st.st_mtime_ns == done.final_mtime_ns
