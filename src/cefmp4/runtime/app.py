"""The composition root: open the adapters, run the pipeline, shut down in order.

Only this module and ``cli`` know the concrete adapters and ``Settings``. ``App.run`` is the
daemon, in three named phases: ``startup`` → ``main_loop`` → ``shutdown``. ``App.run_burst``
(arq's "burst" mode) processes what exists, waits for it to complete and returns: it is
``cefmp4 upload``, and the fast pipeline tests' way in. Adapters (object store, checkpoint
store, prober, clock) may be injected; the defaults are built from the settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TypeVar

import structlog

from cefmp4.checkpoint import CheckpointStore, StreamRecord, StreamState
from cefmp4.checkpoint.trust import TrustedCheckpoints
from cefmp4.config.adapters import (
    open_checkpoints,
    open_objects,
    pipeline_config,
    protection_of,
)
from cefmp4.config.settings import Settings
from cefmp4.config.settings_checks import inflight_advice
from cefmp4.core.keys import upload_rel_path
from cefmp4.intake.discover import scan_stats
from cefmp4.runtime import logs
from cefmp4.runtime.clock import Clock, SystemClock
from cefmp4.runtime.errors import CefmpError
from cefmp4.runtime.failpoints import Failpoints
from cefmp4.runtime.feature_wiring import Features, open_features
from cefmp4.runtime.housekeeping import salvager, sweep_forever
from cefmp4.runtime.metrics import Metrics
from cefmp4.runtime.readiness import Readiness
from cefmp4.runtime.tasks import TaskSupervisor
from cefmp4.storage import ObjectStore
from cefmp4.storage.pacing import LANE, Lane, Pacer
from cefmp4.streams.abandoned import AbandonedStreams
from cefmp4.streams.budget import ByteBudget
from cefmp4.streams.burst import wait_idle
from cefmp4.streams.context import Context
from cefmp4.streams.evidence import Evidence
from cefmp4.streams.lease import LeaseKeeper, default_owner
from cefmp4.streams.ownership import LeasedOwnership, LocalOwnership, Ownership
from cefmp4.streams.probe import FfprobeProber, Prober
from cefmp4.streams.reconcile import abort_superseded, rebuild_from_s3
from cefmp4.streams.supervisor import StreamSupervisor
from cefmp4.streams.takeover import takeover_forever
from cefmp4.streams.uplink import Uplink

__all__ = ["App", "Stopped", "open_checkpoints", "open_objects"]

log = structlog.get_logger("cefmp4.runtime.app")

T = TypeVar("T")


class Stopped(Exception):
    """A stop signal arrived during start-up."""


# Eleven attributes: the app holds what it composes, so that tests and the status of a
# running daemon can reach them; each is set once.
class App:
    def __init__(
        self,
        settings: Settings,
        *,
        objects: ObjectStore | None = None,
        checkpoints: CheckpointStore | None = None,
        prober: Prober | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.clock = clock or SystemClock()
        self.readiness = Readiness(self.clock.monotonic)
        self.tasks = TaskSupervisor(self.readiness, self.clock)
        self.ready = asyncio.Event()
        self.ctx: Context | None = None
        self.supervisor: StreamSupervisor | None = None
        self.features = Features()  # writer signals, outbox (§2.14-§2.16)
        self._objects, self._checkpoints, self._prober = objects, checkpoints, prober

    # --- the daemon ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """``cefmp4 run``: watch, upload, finalize until ``stop`` is set. A supervised task
        that fails for good raises ``CefmpError`` after an orderly shutdown."""
        async with AsyncExitStack() as stack:
            try:
                await self.startup(stack, stop)
            except Stopped:
                log.info(logs.SHUTDOWN, phase="startup")
                await self.shutdown()
                return
            try:
                await self.main_loop(stop)
            finally:
                await self.shutdown()
        log.info(logs.STOPPED)
        if self.tasks.error is not None:
            raise CefmpError(self.tasks.error)

    async def startup(self, stack: AsyncExitStack, stop: asyncio.Event) -> None:
        settings = self.settings
        ctx = await self._open(stack, stop, daemon=True)
        supervisor = self.supervisor
        assert supervisor is not None
        if settings.abort_orphan_uploads_after_hours > 0:
            grace = settings.abort_orphan_uploads_after_hours * 3600
            interval = min(3600.0, grace / 2)
            self.tasks.start("sweeper", lambda: sweep_forever(ctx, grace, interval))
        watch_dir = ctx.config.watch_dir
        self.features.start(self.tasks, watch_dir, self.metrics)
        # Imported here: watchfiles is for the daemon only (start-up of `upload`).
        from cefmp4.intake.feed import rescan_forever, stat_scan, take_scan, watch_forever

        files = await self._until(stop, asyncio.to_thread(stat_scan, supervisor, watch_dir))
        if not supervisor.ownership.shared:
            supervisor.resume_unfinished(files.found)

        polling, every = settings.watch_force_polling, settings.rescan_interval_seconds
        self.tasks.start("watcher", lambda: watch_forever(supervisor, watch_dir, stop, polling))
        if every > 0:
            self.tasks.start("rescan", lambda: rescan_forever(supervisor, watch_dir, every))
        await self._until(stop, take_scan(supervisor, files.found))
        # The watcher registers its inotify watches on its first step; a file that
        # appeared between the scan and then would be missed, so look once more.
        await self._until(stop, self.clock.sleep(0.2))
        again = await self._until(stop, asyncio.to_thread(stat_scan, supervisor, watch_dir))
        await self._until(stop, take_scan(supervisor, again.found))
        self.ready.set()
        log.info(logs.READY, watch_dir=str(watch_dir), files=files.files)

    async def main_loop(self, stop: asyncio.Event) -> None:
        """Until a stop signal, or a supervised task that may not be restarted failed."""
        waiters = [
            asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self.tasks.failed.wait())
        ]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def shutdown(self) -> None:
        """Stop the background tasks, then let the streams drain within the grace period."""
        active = len(self.supervisor.workers) if self.supervisor is not None else 0
        log.info(logs.SHUTDOWN, active_streams=active)
        await self.tasks.aclose()
        if self.supervisor is not None:
            await self.supervisor.stop()

    # --- burst mode ------------------------------------------------------------------------

    async def run_burst(
        self, files: Sequence[Path] | None = None, *, stream_timeout: float = 0.0,
        on_start: Callable[[App], None] | None = None,
    ) -> dict[Path, StreamRecord | None]:
        """Process ``files`` (default: everything under WATCH_DIR, and unfinished streams),
        wait until every stream ended, return each file's completed record (None when it
        did not complete). ``stream_timeout``: the idle wait (none by default)."""
        stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            ctx = await self._open(
                stack, stop, daemon=False, stream_timeout=stream_timeout, trust=files is None
            )
            supervisor = self.supervisor
            assert supervisor is not None
            try:
                if files is None:
                    found = await asyncio.to_thread(
                        scan_stats, ctx.config.watch_dir, extensions=ctx.config.extensions
                    )
                    supervisor.resume_unfinished(found.found)
                    ordered = supervisor.intake_order(found.found)  # UPLOAD_ORDER (§2.21)
                    paths = [Path(name) for name, _ in ordered]
                    for path, (_, st) in zip(paths, ordered, strict=True):
                        supervisor.on_stat(path, st)  # the scan's stat: none taken again
                else:
                    paths = [path.resolve() for path in files]
                    for path in paths:
                        supervisor.on_path(path, upload_rel_path(path, ctx.config.watch_dir))
                if on_start is not None:
                    on_start(self)
                await wait_idle(supervisor)
                # Each file's result before the after-upload actions run: AFTER_UPLOAD=
                # delete|move removes the path that _completed looks the stream up by.
                results = {path: await self._completed(ctx, path) for path in paths}
                await self.features.deliver_pending()
                return results
            finally:
                await self.shutdown()

    async def _completed(self, ctx: Context, path: Path) -> StreamRecord | None:
        try:
            st = await asyncio.to_thread(path.stat)
        except OSError:
            return None
        found = await ctx.retry("checkpoint", lambda: ctx.checkpoints.find_by_inode(st.st_ino))
        for record in reversed(found):
            if record.state is StreamState.COMPLETED and record.device == st.st_dev:
                return record if record.final_size == st.st_size else None
        return None

    # --- composition -----------------------------------------------------------------------

    async def _open(
        self, stack: AsyncExitStack, stop: asyncio.Event, *, daemon: bool,
        stream_timeout: float | None = None, trust: bool = True,
    ) -> Context:
        """Every adapter opened once (closed in reverse order by ``stack``), the context
        built complete, S3 reconciled, the checkpoints loaded. ``trust``: records are read
        through ``TrustedCheckpoints`` (off only for ``upload`` of named files, which may
        lie outside WATCH_DIR)."""
        settings = self.settings
        objects: ObjectStore
        if self._objects is not None:
            objects = self._objects
        else:
            objects = await stack.enter_async_context(
                open_objects(
                    settings,
                    max_pool_connections=max(10, settings.upload_concurrency * 2),
                    storage_class=settings.s3_storage_class,
                )
            )
        checkpoints: CheckpointStore
        if self._checkpoints is not None:
            checkpoints = self._checkpoints
        else:
            checkpoints = await self._until(
                stop, stack.enter_async_context(open_checkpoints(settings, fenced=True))
            )
        ownership = self._ownership(checkpoints)
        failpoints = Failpoints(settings.cefmp4_failpoints)
        self.features = await open_features(
            settings, objects, checkpoints, clock=self.clock, failpoints=failpoints,
            metrics=self.metrics, daemon=daemon, owner=settings.instance_id or default_owner(),
            stack=stack,
        )
        config = pipeline_config(settings)
        uplink = self._uplink(stack, stream_timeout)
        inflight, slots = settings.max_inflight_bytes, settings.upload_concurrency
        if trust:
            checkpoints = TrustedCheckpoints(
                checkpoints, config.watch_dir, config.key_prefix, settings.s3_bucket_name
            )
        ctx = Context(
            config=config,
            objects=objects,
            checkpoints=checkpoints,
            prober=self._prober
            or FfprobeProber(settings.ffprobe_path, settings.probe_timeout_seconds),
            metrics=self.metrics,
            budget=ByteBudget(inflight, reserve=uplink.reserve(inflight, config.part_size)),
            upload_slots=ByteBudget(slots, reserve=uplink.reserve(slots, 1)),
            clock=self.clock,
            readiness=self.readiness,
            failpoints=failpoints,
            guard=ownership.guard(),
            **self.features.context_fields(),
            evidence=self._evidence(),
            uplink=uplink,
        )
        self.ctx = ctx
        if advice := inflight_advice(settings):
            log.warning(logs.SETTINGS_ADVICE, advice=advice)
        if daemon and settings.prom_port:
            # Imported here: aiohttp.web costs tens of ms that `upload` does not need.
            from cefmp4.runtime.health import serve_health

            await stack.enter_async_context(
                serve_health(
                    host=settings.prom_host,
                    port=settings.prom_port,
                    metrics=self.metrics,
                    checks={"s3": objects.ping, "checkpoint_store": checkpoints.ping},
                    readiness=self.readiness,
                )
            )
        await self._until(stop, ctx.retry("ensure_bucket", objects.ensure_bucket))
        if daemon:
            # S3 first: uploads the checkpoints do not know are attached or rebuilt before
            # anything reads the checkpoints (the takeover loop would otherwise resume a
            # stream without its upload id).
            await self._until(stop, rebuild_from_s3(ctx, ownership))
            grace = max(600.0, 4 * settings.lease_ttl_seconds)
            await self._until(stop, abort_superseded(ctx, grace))
        self.supervisor = StreamSupervisor(
            ctx, ownership, max_streams=settings.max_streams,
            shutdown_grace=settings.shutdown_grace_seconds, stream_timeout=stream_timeout,
        )
        self.metrics.set_pending_source(self.supervisor.pending)
        await self._until(stop, self.supervisor.load())
        if isinstance(ownership, LeasedOwnership):
            # Fatal: without its leases this instance may not upload (restarted instead).
            self.tasks.start("lease-renewal", ownership.keeper.renew_forever, fatal=True)
            if daemon:
                supervisor = self.supervisor
                interval = settings.lease_ttl_seconds / 2
                self.tasks.start("takeover", lambda: takeover_forever(supervisor, interval))
                abandoned = AbandonedStreams(supervisor, salvager(ctx, ownership.keeper.owner),
                                             interval)
                self.tasks.start("salvage-abandoned", abandoned.forever)
        return ctx

    def _uplink(self, stack: AsyncExitStack, stream_timeout: float | None) -> Uplink:
        """UPLOAD_BWLIMIT and UPLOAD_ORDER (§2.21): the pacer every body this process sends
        goes through (the app's lane, for what no stream sends), the limit in force now, and
        the task that follows the timetable."""
        settings, table = self.settings, self.settings.bwlimit
        timeout = settings.stream_timeout_seconds if stream_timeout is None else stream_timeout
        gauge = self.metrics.upload_rate_limit
        uplink = Uplink(table, Pacer(self.clock) if table is not None else None,
                        settings.upload_order, live_window=timeout,
                        on_change=lambda rate: gauge.set(rate or 0))
        uplink.apply(self.clock.time(), reason="start")
        stack.callback(LANE.reset, LANE.set(Lane(uplink.pacer)))
        if table is not None and not table.constant:
            self.tasks.start("uplink", lambda: uplink.follow(self.clock))
        return uplink

    def _evidence(self) -> Evidence:
        """The signer and protection of §2.22, said once in the log (a KMS ARN masked)."""
        evidence = Evidence(self.settings.signer(), protection_of(self.settings))
        if evidence.signer is not None or evidence.protection.active:
            log.info(logs.EVIDENCE, **evidence.protection.describe(),
                     signing_key_id=evidence.signer.key_id if evidence.signer else None)
        return evidence

    def _ownership(self, checkpoints: CheckpointStore) -> Ownership:
        """One instance on SQLite; with Redis, leases let several share the work."""
        settings = self.settings
        if not settings.redis_url.get_secret_value():
            return LocalOwnership()
        from cefmp4.checkpoint.redis import RedisCheckpointStore

        assert isinstance(checkpoints, RedisCheckpointStore)
        owner = settings.instance_id or default_owner()
        keeper = LeaseKeeper(checkpoints, owner, settings.lease_ttl_seconds)
        log.info(logs.SCALE_OUT, instance_id=owner, lease_ttl_s=settings.lease_ttl_seconds)
        return LeasedOwnership(keeper, self.clock)

    async def _until(self, stop: asyncio.Event, work: Awaitable[T]) -> T:
        """``work``, unless a stop signal comes first (start-up retries never outlast it)."""
        task = asyncio.ensure_future(work)
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise Stopped
        return task.result()
