"""Which file is which stream: start, resume and supervise one worker per stream.

Files are identified by (device, inode), never by name, so a rename keeps its stream and a
completed, unchanged file is recognised without asking S3. At most ``max_streams`` streams
are open at once (in both store modes); files beyond wait in ``_deferred`` and are looked
at again when a stream ends and on every rescan, so none is dropped: live recordings first,
then the backlog in ``UPLOAD_ORDER`` (§2.21, ``deferred_order``). Whether a file may be
worked on at all is the ``Ownership``'s call (local, or leased in scale-out).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any

import structlog
from structlog.contextvars import bound_contextvars

from cefmp4.checkpoint import UNFINISHED, MalformedRecord, StreamRecord, StreamState
from cefmp4.core import claim
from cefmp4.core.claim import Claimed, claiming
from cefmp4.core.identity import Ident, ident_of
from cefmp4.core.machine import Unexpected
from cefmp4.core.uplink import Claim, gate_rank, gate_reserve, is_live, order_key, stream_may_open
from cefmp4.intake.discover import Scanned, check_file
from cefmp4.runtime import logs
from cefmp4.runtime.clock import wait_tasks
from cefmp4.runtime.errors import LeaseLost
from cefmp4.storage.pacing import LANE
from cefmp4.streams import lifecycle
from cefmp4.streams.context import Context
from cefmp4.streams.history import History
from cefmp4.streams.lifecycle import Bind, Deferred, Ended, Spec, resume, run_to_end, start_new
from cefmp4.streams.ownership import Ownership
from cefmp4.streams.runner import run_machine
from cefmp4.streams.source import stat_or_none
from cefmp4.streams.stream import StreamWorker, pending_total

log = structlog.get_logger("cefmp4.streams.supervisor")


# Fourteen attributes: the maps below are the supervisor's whole state, each with one job.
class StreamSupervisor:
    def __init__(
        self,
        ctx: Context,
        ownership: Ownership,
        *,
        max_streams: int,
        shutdown_grace: float = 20.0,
        stream_timeout: float | None = None,
    ) -> None:
        self.ctx = ctx
        self.ownership = ownership
        self.max_streams = max_streams
        self.shutdown_grace = shutdown_grace
        self.shutdown = asyncio.Event()
        self._spec = Spec(ctx, self.shutdown, stream_timeout)
        self.workers: dict[Ident, StreamWorker] = {}
        self.completed = History()
        self.unfinished: dict[Ident, StreamRecord] = {}
        self._starting: set[Ident] = set()
        self._starting_live: set[Ident] = set()  # of those, the files being written (§2.21)
        self._deferred: dict[Ident, Path] = {}  # waiting for room, a descriptor or a lease
        self._mtimes: dict[Ident, float] = {}  # a waiting file's mtime when last seen
        self._tasks: dict[asyncio.Task[None], StreamWorker | None] = {}
        self.failures = 0

    # --- start-up --------------------------------------------------------------------------

    async def load(self) -> None:
        """Read the unfinished streams (through the store's state index) and the completed
        ones' fingerprints: no S3 request per completed file, no record of one held."""
        checkpoints = self.ctx.checkpoints
        records = await self.ctx.retry("checkpoint", lambda: checkpoints.list_streams(UNFINISHED))
        for rec in sorted(records, key=lambda r: r.started_at):
            self.unfinished[(rec.device, rec.inode)] = rec
        await self.completed.load(self.ctx)

    def resume_unfinished(self, scanned: Iterable[Scanned]) -> None:
        """Resume unfinished streams; a file renamed while we were down is found by inode
        (among the scan's stats: nothing is looked at again when none is unfinished)."""
        if not self.unfinished:
            return
        by_ident: dict[Ident, Path] = {}
        mtimes: dict[Ident, float] = {}
        for name, st in scanned:
            if st is not None and ident_of(st) in self.unfinished:
                by_ident[ident_of(st)] = Path(name)
                mtimes[ident_of(st)] = st.st_mtime
        for ident, rec in list(self.unfinished.items()):
            self.consider(ident, by_ident.get(ident, Path(rec.path)), mtime=mtimes.get(ident))

    # --- events ----------------------------------------------------------------------------

    def on_path(self, path: Path, rel: str | None = None) -> None:
        """A file-system event, scan result or command-line file; cheap, never blocks
        (one stat). ``rel``: the key path, for files outside WATCH_DIR (``upload``)."""
        if self.shutdown.is_set():
            return
        st = check_file(path, self.ctx.config.watch_dir) if rel is None else stat_or_none(path)
        self.on_stat(path, st, rel)

    def known_unchanged(self, st: os.stat_result) -> bool:
        """A completed stream's file, still as it was uploaded: nothing to do."""
        return self.completed.unchanged(st) and ident_of(st) not in self.unfinished

    def on_stat(self, path: Path, st: os.stat_result | None, rel: str | None = None) -> None:
        """``on_path`` with the stat already taken (the rescan stats off the event loop)."""
        if self.shutdown.is_set():
            return
        if st is None:
            # Deleted or moved away: the worker holding it open notices through fstat.
            for other in self.workers.values():
                if other.record.path == str(path):
                    other.wake.set()
            return
        ident = ident_of(st)
        worker = self.workers.get(ident)
        if worker is not None:
            worker.notice_path(str(path))
            return
        if ident in self._starting:
            return
        if self.known_unchanged(st) or self._spec.unkeyable.seen(path, st.st_ino):
            return
        self.consider(ident, path, rel, mtime=st.st_mtime)

    def retry_deferred(self) -> int:
        """Look again at files that had to wait, live recordings first, then the backlog
        in UPLOAD_ORDER (§2.21); how many were started."""
        started = 0
        for ident in self.deferred_order():
            path = self._deferred[ident]
            if self.at_capacity() or self.shutdown.is_set():
                break
            if self.ownership.busy(ident) or not self._may_open(self._is_live(ident)):
                continue
            del self._deferred[ident]
            before = len(self._starting)
            if ident in self.unfinished:
                self.consider(ident, path, mtime=self._mtimes.get(ident))  # no stat first
            else:
                self.on_path(path)
            started += len(self._starting) - before
        return started

    def deferred_order(self) -> list[Ident]:
        """The waiting files in the order they get room: live first (in arrival order),
        then the backlog in UPLOAD_ORDER; the backlog's first goes first while no backlog
        stream is open (``core.uplink.gate_rank``: nothing waits for ever)."""
        uplink = self.ctx.uplink
        starved = not self._open_counts()[1]
        claims = {}
        for seq, ident in enumerate(self._deferred):
            mtime = self._mtimes.get(ident)
            key = math.inf if mtime is None else order_key(uplink.order, mtime)
            claims[ident] = Claim(self._is_live(ident), key, seq)
        return sorted(claims, key=lambda i: gate_rank(claims[i], starved))

    def intake_order(self, found: list[Scanned]) -> list[Scanned]:
        """A scan's files in the order they should get room (live recordings first, then
        UPLOAD_ORDER), so that MAX_STREAMS takes the right ones first."""
        uplink, now = self.ctx.uplink, self.ctx.clock.time()

        def rank(item: tuple[int, Scanned]) -> tuple[int, float, int]:
            seq, (_, st) = item
            if st is None:
                return (2, 0.0, seq)
            live = is_live(now - st.st_mtime, uplink.live_window)
            return gate_rank(Claim(live, order_key(uplink.order, st.st_mtime), seq), False)

        return [scanned for _, scanned in sorted(enumerate(found), key=rank)]

    def _is_live(self, ident: Ident) -> bool:
        mtime = self._mtimes.get(ident)
        uplink = self.ctx.uplink
        return mtime is not None and is_live(self.ctx.clock.time() - mtime, uplink.live_window)

    def _open_counts(self) -> tuple[int, int]:
        """(live, backlog) streams running or being started."""
        live = sum(1 for w in self.workers.values() if w.lane.live) + len(self._starting_live)
        return live, self.open_streams() - live

    def _may_open(self, live: bool) -> bool:
        """Room for one more stream: live recordings keep a reserve of MAX_STREAMS while
        a limit is in force (``core.uplink.stream_may_open``)."""
        open_live, open_backlog = self._open_counts()
        reserve = gate_reserve(self.max_streams, 1) if self.ctx.uplink.limited() else 0
        return stream_may_open(live, open_live=open_live, open_backlog=open_backlog,
                               max_streams=self.max_streams, reserve=reserve)

    def open_streams(self) -> int:
        """Streams running or being started now."""
        return len(self.workers) + len(self._starting)

    def at_capacity(self) -> bool:
        return self.open_streams() >= self.max_streams

    def is_claimed(self, ident: Ident) -> bool:
        return ident in self._starting or ident in self.workers

    def consider(
        self, ident: Ident, path: Path, rel: str | None = None, *, mtime: float | None = None
    ) -> None:
        """``mtime``: the file's, when known (whether it is live, its UPLOAD_ORDER)."""
        if mtime is not None:
            self._mtimes[ident] = mtime
        live = self._is_live(ident)
        room = self._may_open(live)
        if not room or self.ownership.busy(ident):
            if not room and ident not in self._deferred:  # once per waiting file
                log.warning(logs.STREAM_DEFERRED, path=str(path), max_streams=self.max_streams)
            self._deferred[ident] = path
            return
        self._deferred.pop(ident, None)
        self._spawn(self._claim(path, ident, rel), ident, live=live)

    def _spawn(self, coro: Coroutine[Any, Any, None], ident: Ident, *, live: bool = False) -> None:
        self._starting.add(ident)
        if live:
            self._starting_live.add(ident)

        async def starter() -> None:
            try:
                await coro
            finally:
                self._starting.discard(ident)
                self._starting_live.discard(ident)
                if ident not in self._deferred:
                    self._mtimes.pop(ident, None)

        self._track(asyncio.create_task(starter(), name=f"start-{ident}"), None)

    def _track(self, task: asyncio.Task[None], worker: StreamWorker | None) -> None:
        self._tasks[task] = worker
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and (exc := task.exception()) is not None:
            # Streams handle their own errors; reaching here is a bug worth shouting about.
            self.failures += 1
            log.error(logs.ERROR, task=task.get_name(), error=repr(exc), exc_info=exc)

    # --- claiming a file -------------------------------------------------------------------

    async def _claim(
        self, path: Path, ident: Ident, rel: str | None, held: int | None = None
    ) -> None:
        """Runs ``core.claim.claiming``, which decides every turn, carrying out its actions.
        ``held``: a descriptor of the file, which no path reaches (``lifecycle.held_fd``)."""
        machine = claiming(held=held is not None, shared=self.ownership.shared,
                           known=self.unfinished.get(ident))
        step = _ClaimStep(self, path, ident, rel, held)
        try:
            claimed = await run_machine(machine, step.carry_out)
            if claimed is Claimed.DEFER:
                self._deferred[ident] = path
            elif claimed is Claimed.RUN and step.worker is not None:
                self._run(step.worker)
        except LeaseLost as exc:
            log.warning(logs.STREAM_RELINQUISHED, path=str(path), error=str(exc))
        finally:
            if step.held is not None:  # the claim failed before a stream took it
                os.close(step.held)
            # Only a lease this claim took: a refused one may be this instance's for another
            # file with the same inode number (another device), whose fence it must keep.
            if step.acquired and not any(w.ident == ident for w in self.workers.values()):
                await self.ownership.release(ident[1])

    def _bind(self, ident: Ident) -> Bind:
        return lambda inode, stream_id: self.ownership.bind(
            inode, stream_id, lambda: self._lose(ident)
        )

    def _run(self, worker: StreamWorker) -> None:
        ident = worker.ident
        try:
            self.ownership.bind(worker.record.inode, worker.stream_id, lambda: self._lose(ident))
        except LeaseLost:
            # Lost while claiming (a stall longer than the lease): the new owner has it.
            log.warning(logs.STREAM_RELINQUISHED, stream_id=worker.stream_id)
            os.close(worker.fd)
            return
        self.workers[ident] = worker
        self.ctx.metrics.active_streams.set(len(self.workers))
        task = asyncio.create_task(self._supervise(worker), name=f"stream-{worker.stream_id}")
        self._track(task, worker)

    def _lose(self, ident: Ident) -> None:
        """Another instance owns this file now: stop its worker at once, touch nothing."""
        for task, worker in self._tasks.items():
            if worker is not None and worker.ident == ident:
                worker.lease_lost = True
                task.cancel()

    # --- one stream, from follow to completed ----------------------------------------------

    async def _supervise(self, worker: StreamWorker) -> None:
        ident = worker.ident
        ended = Ended.SUSPENDED
        # The stream's lane: every byte it sends (parts, tail segments, metadata) is paced
        # and queued as its own (§2.21); its tasks inherit it.
        LANE.set(worker.lane)
        with bound_contextvars(stream_id=worker.stream_id, path=worker.record.path):
            try:
                ended = await run_to_end(worker, self.shutdown_grace)
            finally:
                rec = worker.record
                if rec.state is StreamState.COMPLETED:
                    self.completed.remember(rec)
                elif ended is Ended.SUSPENDED:
                    self.unfinished[ident] = rec
                again = ended is Ended.FINISHED and not self.shutdown.is_set()
                held = lifecycle.held_fd(worker) if again else None
                with contextlib.suppress(OSError):
                    os.close(worker.fd)
                self.workers.pop(ident, None)
                self.ctx.metrics.active_streams.set(len(self.workers))
                if ended is not Ended.RELINQUISHED:
                    await self.ownership.release(rec.inode)
                self.retry_deferred()
        # A truncated or regrown file starts a new stream of what it holds now.
        if held is not None:
            self._spawn(self._claim(Path(rec.path), ident, rec.rel_path, held), ident)
        elif again:
            self.on_path(Path(rec.path))

    # --- status and stopping ---------------------------------------------------------------

    def pending(self) -> tuple[int, float]:
        return pending_total(list(self.workers.values()), self.ctx.clock.time())

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks)

    def startable(self) -> list[Ident]:
        """Files waiting that may start now (not another instance's)."""
        return [i for i in self._deferred if not self.ownership.busy(i)]

    async def stop(self) -> None:
        """Stop intake, let workers drain within the grace period, then cancel the rest."""
        self.shutdown.set()
        for worker in self.workers.values():
            worker.wake.set()
        pending = await wait_tasks(self.ctx.clock, list(self._tasks), self.shutdown_grace + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class _ClaimStep:
    """Carries out ``core.claim``'s actions for one claim: what it holds between them (the
    descriptor handed over, the worker made) stays here, out of the machine."""

    def __init__(
        self, sup: StreamSupervisor, path: Path, ident: Ident, rel: str | None, held: int | None
    ) -> None:
        self.sup, self.path, self.ident, self.rel, self.held = sup, path, ident, rel, held
        self.worker: StreamWorker | None = None
        self.acquired = False

    async def carry_out(self, action: claim.Action) -> claim.Observation:
        sup, ctx, ident = self.sup, self.sup.ctx, self.ident
        match action:
            case claim.Acquire():
                ok = await ctx.retry(
                    "checkpoint", lambda: sup.ownership.acquire(ident, lambda: sup._lose(ident)))
                self.acquired = bool(ok)
                return claim.Acquired(self.acquired)
            case claim.CloseHeld() if self.held is not None:
                os.close(self.held)  # a peer owns the file now
                self.held = None
                return claim.Done()
            case claim.FindByInode():
                found = await ctx.retry(
                    "checkpoint", lambda: ctx.checkpoints.find_by_inode(ident[1]))
                return claim.Found(found[-1] if found else None)
            case claim.Remember():
                sup.completed.remember(action.record)
                return claim.Done()
            case claim.StatPath():
                st = stat_or_none(self.path)
                return claim.AtPath(None if st is None else (st.st_size, st.st_mtime_ns))
            case claim.AskRunning():
                return claim.RunningHere(frozenset(w.stream_id for w in sup.workers.values()))
            case claim.Forget():
                sup.unfinished.pop(ident, None)
                return claim.Done()
            case claim.Resume():
                return await self._resume(action)
            case claim.StartNew():
                return await self._start(action)
        raise Unexpected(f"no step for {action!r}")

    async def _resume(self, action: claim.Resume) -> claim.Observation:
        if action.taken_over:
            log.info(logs.STREAM_TAKEN_OVER, stream_id=action.record.stream_id,
                     path=str(self.path))
        try:
            made = await resume(self.sup._spec, action.record, self.path,
                                self.sup._bind(self.ident))
        except Deferred:
            return claim.Deferred()
        except MalformedRecord:  # quarantined (warned once by the store): never acted on
            return claim.Malformed()
        match made:
            case StreamWorker():
                self.worker = made
                return claim.Resumed()
            case lifecycle.Reused():
                self.held = made.fd  # the file found is a new stream (never reopened by path)
                return claim.Reused()
            case Ended():
                return claim.EndedHere()
        return claim.Unreadable()

    async def _start(self, action: claim.StartNew) -> claim.Observation:
        del action  # ``from_found`` or handed over: either way, ``held`` is that descriptor
        try:
            self.worker = await start_new(self.sup._spec, self.path, self.rel,
                                          self.sup._bind(self.ident), inode=self.ident[1],
                                          held=self.held)
        except Deferred:
            return claim.Deferred()
        finally:
            self.held = None  # start_new took it, whatever happened
        return claim.Started() if self.worker is not None else claim.NotStarted()
