"""The composition root: open the adapters, run the pipeline, shut down in order.

Only this module and ``cli`` know the concrete adapters and ``Settings``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import structlog

from cefmp4 import logs
from cefmp4.budget import ByteBudget
from cefmp4.checkpoint import CheckpointStore, StreamRecord
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.discover import scan, watch
from cefmp4.failpoints import Failpoints
from cefmp4.health import serve_health
from cefmp4.housekeeping import adopt_unknown_uploads, sweep_forever
from cefmp4.lease import LeaseKeeper, default_owner
from cefmp4.manager import StreamManager
from cefmp4.metrics import Metrics
from cefmp4.pipeline import Context, PipelineConfig
from cefmp4.probe import FfprobeProber
from cefmp4.scaleout import LeasedStreamManager
from cefmp4.settings import Settings
from cefmp4.storage.s3 import S3ObjectStore, open_s3_store

log = structlog.get_logger("cefmp4.app")


@asynccontextmanager
async def open_checkpoints(
    settings: Settings, *, read_only: bool = False
) -> AsyncIterator[CheckpointStore]:
    """Redis when REDIS_URL is set, else the embedded store. ``read_only`` skips SQLite's
    single-instance lock so ``status`` and ``check`` work beside a running daemon."""
    url = settings.redis_url.get_secret_value()
    if url:
        # Imported here: redis-py costs ~60 ms of start-up that SQLite users need not pay.
        from cefmp4.checkpoint.redis import open_redis_store

        async with open_redis_store(url, settings.redis_key_prefix) as redis_store:
            yield redis_store
    else:
        async with open_sqlite_store(settings.state_dir, read_only=read_only) as sqlite_store:
            yield sqlite_store


def open_objects(settings: Settings, **options: Any) -> AbstractAsyncContextManager[S3ObjectStore]:
    """The S3 store the settings describe (``options``: pool size, timeouts, ...)."""
    return open_s3_store(
        bucket=settings.s3_bucket_name,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key_id.get_secret_value(),
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        region=settings.s3_region_name,
        **options,
    )


@asynccontextmanager
async def open_context(
    settings: Settings, metrics: Metrics | None = None
) -> AsyncIterator[Context]:
    """Every adapter opened once, closed in reverse order."""
    async with AsyncExitStack() as stack:
        objects = await stack.enter_async_context(
            open_objects(
                settings,
                max_pool_connections=max(10, settings.upload_concurrency * 2),
                storage_class=settings.s3_storage_class,
            )
        )
        checkpoints = await stack.enter_async_context(open_checkpoints(settings))
        config = PipelineConfig(
            watch_dir=settings.watch_dir.resolve(),
            key_prefix=settings.s3_key_prefix,
            part_size=settings.part_size_bytes,
            max_parts=settings.max_parts,
            stream_timeout=settings.stream_timeout_seconds,
            poll_interval=settings.poll_interval_seconds,
            parts_in_flight=settings.upload_concurrency + 1,
        )
        yield Context(
            config=config,
            objects=objects,
            checkpoints=checkpoints,
            prober=FfprobeProber(settings.ffprobe_path, settings.probe_timeout_seconds),
            metrics=metrics or Metrics(),
            budget=ByteBudget(settings.max_inflight_bytes),
            upload_slots=asyncio.Semaphore(settings.upload_concurrency),
            failpoints=Failpoints(os.environ.get("CEFMP4_FAILPOINTS", "")),
        )


def readiness_checks(ctx: Context) -> dict[str, Callable[[], Awaitable[None]]]:
    return {"s3": ctx.objects.ping, "checkpoint_store": ctx.checkpoints.ping}


class App:
    """``cefmp4 run``: watch, upload, finalize until ``stop`` is set."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.ready = asyncio.Event()
        self.manager: StreamManager | None = None

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        async with AsyncExitStack() as stack:
            ctx = await stack.enter_async_context(open_context(settings, self.metrics))
            if settings.prom_port:
                await stack.enter_async_context(
                    serve_health(
                        host=settings.prom_host,
                        port=settings.prom_port,
                        metrics=self.metrics,
                        checks=readiness_checks(ctx),
                    )
                )
            await ctx.retry("ensure_bucket", ctx.objects.ensure_bucket)
            # S3 first: uploads the checkpoints do not know are attached or rebuilt before
            # anything reads the checkpoints (scale-out's takeover loop starts with the
            # manager and would otherwise resume a stream without its upload id).
            await adopt_unknown_uploads(ctx)
            shutdown = asyncio.Event()
            manager = self._manager(ctx, shutdown, stack)
            self.manager = manager
            self.metrics.set_pending_source(manager.pending)
            await manager.load()
            if settings.abort_orphan_uploads_after_hours > 0:
                grace = settings.abort_orphan_uploads_after_hours * 3600
                sweeper = asyncio.create_task(
                    sweep_forever(ctx, grace, interval=min(3600.0, grace / 2)), name="sweep"
                )
                stack.push_async_callback(_cancel, sweeper)
            watch_dir = ctx.config.watch_dir
            files = await asyncio.to_thread(scan, watch_dir)
            manager.resume_all(files)
            watcher = asyncio.create_task(
                self._watch(manager, watch_dir, stop), name="watch"
            )
            for path in files:
                manager.on_path(path)
            # The watcher registers its inotify watches on its first step; a file that
            # appeared between the scan and then would be missed, so look once more.
            await asyncio.sleep(0.2)
            for path in await asyncio.to_thread(scan, watch_dir):
                manager.on_path(path)
            self.ready.set()
            log.info(logs.READY, watch_dir=str(watch_dir), files=len(files))
            try:
                await stop.wait()
            finally:
                log.info(logs.SHUTDOWN, active_streams=len(manager.workers))
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
                await manager.stop()
        log.info(logs.STOPPED)

    def _manager(
        self, ctx: Context, shutdown: asyncio.Event, stack: AsyncExitStack
    ) -> StreamManager:
        """One instance on SQLite; with Redis, leases let several share the work."""
        settings = self.settings
        grace = settings.shutdown_grace_seconds
        if not settings.redis_url.get_secret_value():
            return StreamManager(ctx, shutdown, shutdown_grace=grace)
        from cefmp4.checkpoint.redis import RedisCheckpointStore

        assert isinstance(ctx.checkpoints, RedisCheckpointStore)
        owner = settings.instance_id or default_owner()
        keeper = LeaseKeeper(ctx.checkpoints, owner, settings.lease_ttl_seconds)
        manager = LeasedStreamManager(
            ctx, shutdown, keeper, max_streams=settings.max_streams, shutdown_grace=grace
        )

        async def guard(record: StreamRecord) -> None:
            await keeper.verify(record.inode)

        ctx.guard = guard
        for name, coro in (
            ("lease-renewal", keeper.renew_forever()),
            ("takeover", manager.takeover_forever(settings.lease_ttl_seconds / 2)),
        ):
            stack.push_async_callback(_cancel, asyncio.create_task(coro, name=name))
        log.info(logs.SCALE_OUT, instance_id=owner, lease_ttl_s=settings.lease_ttl_seconds)
        return manager

    async def _watch(self, manager: StreamManager, watch_dir: Path, stop: asyncio.Event) -> None:
        async for changes in watch(
            watch_dir, stop, force_polling=self.settings.watch_force_polling
        ):
            for path in changes:
                manager.on_path(path)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def upload_rel_path(path: Path, watch_dir: Path) -> str:
    """Key path of an uploaded file: relative to WATCH_DIR when inside it, else its name."""
    try:
        return path.relative_to(watch_dir).as_posix()
    except ValueError:
        return path.name


async def upload_files(
    settings: Settings,
    files: Sequence[Path],
    on_start: Callable[[StreamManager], None] | None = None,
) -> dict[Path, StreamRecord | None]:
    """``cefmp4 upload``: the same pipeline with no idle wait.

    Returns each file's completed stream record (None when it did not complete)."""
    async with open_context(settings) as ctx:
        await ctx.retry("ensure_bucket", ctx.objects.ensure_bucket)
        manager = StreamManager(ctx, asyncio.Event(), stream_timeout=0.0)
        await manager.load()
        resolved = [path.resolve() for path in files]
        for path in resolved:
            manager.start_file(path, upload_rel_path(path, ctx.config.watch_dir))
        if on_start is not None:
            on_start(manager)
        await manager.wait_idle()
        results: dict[Path, StreamRecord | None] = {}
        for path in resolved:
            st = path.stat()
            done = manager.completed.get((st.st_dev, st.st_ino))
            ok = done is not None and done.final_size == st.st_size
            results[path] = done if ok else None
        return results
