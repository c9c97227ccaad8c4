"""The one module that knows how the pipeline is put together (today: ``Context`` and
``StreamManager``, assembled the way ``App.run`` does it). Porting the simulator to a new
pipeline API means changing this file only.

Seams the pipeline lacks, worked around here:
* ``stream`` and ``verify`` read ``time.monotonic()`` / ``time.time()`` directly: their
  ``time`` is replaced by the virtual clock for the whole run (``virtual_time``);
* ``keys.new_stream_id`` draws from the OS's randomness: seeded here, so a seed replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import types
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cefmp4.manager
import cefmp4.stream
import cefmp4.verify
from cefmp4.budget import ByteBudget
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.discover import scan
from cefmp4.housekeeping import adopt_unknown_uploads, sweep_forever
from cefmp4.keys import new_stream_id
from cefmp4.manager import StreamManager
from cefmp4.metrics import Metrics
from cefmp4.pipeline import Context, PipelineConfig
from cefmp4.probe import ProbeResult
from cefmp4.retry import Backoff
from tests.sim.faults import FaultPlan, FaultyCheckpointStore, FaultyObjectStore, Life, Shadow
from tests.sim.schedule import Schedule
from tests.sim.vloop import VirtualLoop

PREFIX = "streams/"
ORPHAN_GRACE = 48 * 3600.0  # ABORT_ORPHAN_UPLOADS_AFTER_HOURS's default, as App runs it


@contextlib.contextmanager
def virtual_time(loop: VirtualLoop, seed: int) -> Iterator[None]:
    clock = types.SimpleNamespace(monotonic=loop.time, time=loop.wall, perf_counter=loop.time)
    ids = random.Random(f"{seed}-ids")

    def seeded_stream_id(now: datetime | None = None) -> str:
        moment = datetime.fromtimestamp(loop.wall(), UTC) if now is None else now
        return new_stream_id(moment)[:-10] + f"{ids.getrandbits(40):010x}"

    patches: list[tuple[Any, str, Any]] = [
        (cefmp4.stream, "time", clock),
        (cefmp4.verify, "time", clock),
        (cefmp4.manager, "new_stream_id", seeded_stream_id),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    for module, name, value in patches:
        setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


class PeakBudget(ByteBudget):
    """The real byte budget, remembering the most it ever held (the memory invariant)."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.peak = 0
        self.over: list[int] = []  # in_use values above the cap not explained by one part

    async def acquire(self, nbytes: int) -> None:
        await super().acquire(nbytes)
        self.peak = max(self.peak, self.in_use)
        if self.in_use > self.limit and self.in_use != nbytes:
            self.over.append(self.in_use)


class NoProber:
    async def ping(self) -> None:
        return None

    async def probe(self, path: Path) -> ProbeResult:
        return ProbeResult(None, "not probed in the simulator")


class Process:
    """One lifetime of ``cefmp4 run`` on the shared state directory and bucket."""

    def __init__(
        self,
        sched: Schedule,
        *,
        watch: Path,
        state: Path,
        objects: FaultyObjectStore,
        plan: FaultPlan,
        shadow: Shadow,
        loop: VirtualLoop,
    ) -> None:
        self.life = objects.life
        self.objects = objects
        self.plan = plan
        self.shadow = shadow
        self.watch = watch
        self.state = state
        self.loop = loop
        self.budget = PeakBudget(sched.budget)
        self.config = PipelineConfig(
            watch_dir=watch,
            key_prefix=PREFIX,
            part_size=sched.part_size,
            max_parts=sched.max_parts,
            stream_timeout=sched.stream_timeout,
            poll_interval=sched.poll_interval,
            parts_in_flight=sched.parts_in_flight,
            backoff=Backoff(initial=0.2, maximum=30.0),
        )
        self.upload_slots = sched.upload_slots
        self.manager: StreamManager | None = None
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._main(), name="cefmp4-main")

    async def _main(self) -> None:
        async with open_sqlite_store(self.state) as sqlite:
            checkpoints = FaultyCheckpointStore(sqlite, self.plan, self.life, self.shadow)
            ctx = Context(
                config=self.config,
                objects=self.objects,
                checkpoints=checkpoints,
                prober=NoProber(),
                metrics=Metrics(),
                budget=self.budget,
                upload_slots=asyncio.Semaphore(self.upload_slots),
                clock=self.loop.wall,
            )
            # The order of App.run: bucket, S3's unknown uploads, checkpoints, scan, resume.
            await ctx.retry("ensure_bucket", ctx.objects.ensure_bucket)
            await adopt_unknown_uploads(ctx)
            manager = StreamManager(ctx, asyncio.Event(), shutdown_grace=20.0)
            await manager.load()
            sweeper = asyncio.create_task(
                sweep_forever(ctx, ORPHAN_GRACE, interval=min(3600.0, ORPHAN_GRACE / 2)),
                name="sweep",
            )
            files = await asyncio.to_thread(scan, self.watch)
            manager.resume_all(files)
            self.manager = manager
            for path in files:
                manager.on_path(path)
            await asyncio.sleep(0.2)  # App.run's second look, after the watcher started
            for path in await asyncio.to_thread(scan, self.watch):
                manager.on_path(path)
            self.ready.set()
            await self.stopping.wait()
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)
            await manager.stop()

    # --- what the driver sees ------------------------------------------------------------

    def notify(self, path: Path) -> None:
        """A file-system event, as the watcher would deliver it."""
        if self.life.alive and self.manager is not None:
            self.manager.on_path(path)

    def holds(self, device: int, inode: int) -> bool:
        """A stream worker holds this file open now."""
        return self.manager is not None and (device, inode) in self.manager.workers

    def busy(self) -> bool:
        """Anything left to do: starting, streaming, finalizing."""
        manager = self.manager
        return manager is None or bool(manager._tasks) or bool(manager._starting)

    def failures(self) -> int:
        return self.manager.failures if self.manager is not None else 0

    async def stop(self) -> None:
        self.stopping.set()
        await self.task

    def crash(self) -> None:
        """SIGKILL: from now on nothing this process runs reaches S3 or the store."""
        self.life.alive = False


def new_life() -> Life:
    return Life()
