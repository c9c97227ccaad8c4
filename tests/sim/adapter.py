"""The one module that knows how the pipeline is put together: the real ``App`` (daemon
mode) with injected adapters — the faulty object store, the faulty SQLite store, a fake
prober and a virtual ``Clock``. Porting the simulator to a new pipeline API means
changing this file only.

Seams the App lacks, worked around here by replacing a name in ``cefmp4.runtime.app``:
* the part size and byte budget come only from ``Settings``, which (rightly) refuse
  < 5 MiB: ``pipeline_config`` and ``ByteBudget`` are swapped for S3 scaled down to
  64 KiB parts (same rules, a thousand times fewer bytes to hash);
* the file-system watcher is not injectable (and watchfiles runs a real-time thread):
  ``watch_forever`` is swapped for an intake fed by the simulated recorders' events;
* ``keys.new_stream_id`` draws from the OS's randomness: seeded, so a seed replays;
* salvage's idea of S3's smallest part (``core.salvage.MIN_PART_BYTES``) is scaled down with
  S3, else it would cut every salvaged object after its first 64 KiB part;
* ``cefmp4 salvage`` (``cli.salvage``) opens a real S3 client and reads the real clock:
  ``OtherHost`` runs the command's own code with the simulated bucket and virtual time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cefmp4.cli.salvage
import cefmp4.core.salvage
import cefmp4.intake.feed
import cefmp4.runtime.app
import cefmp4.streams.lifecycle
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.config.settings import Settings, load_settings
from cefmp4.core.keys import new_stream_id
from cefmp4.runtime.app import App
from cefmp4.runtime.clock import SystemClock
from cefmp4.runtime.metrics import Metrics
from cefmp4.runtime.retry import Backoff
from cefmp4.streams.budget import ByteBudget
from cefmp4.streams.context import PipelineConfig
from cefmp4.streams.probe import ProbeResult
from cefmp4.streams.salvage import Outcome
from cefmp4.streams.supervisor import StreamSupervisor
from tests.sim.faults import FaultPlan, FaultyCheckpointStore, FaultyObjectStore, Shadow
from tests.sim.schedule import PART, Schedule
from tests.sim.vloop import VirtualLoop

PREFIX = "streams/"
# ABORT_ORPHAN_UPLOADS_AFTER_HOURS=1: longer than any schedule, short to wait out.
ORPHAN_GRACE = 3600.0


class VirtualClock(SystemClock):
    """The pipeline's Clock on the virtual loop (sleeping and waiting already are)."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.wall()

    def monotonic(self) -> float:
        return self._loop.time()


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


async def _no_watcher(
    supervisor: StreamSupervisor, watch_dir: Path, stop: asyncio.Event, polling: bool
) -> None:
    await stop.wait()  # events come from ``Process.notify``


@contextlib.contextmanager
def virtual_time(loop: VirtualLoop, seed: int) -> Iterator[None]:
    """Seeded stream ids for the whole run (the rest of time is the injected Clock)."""
    ids = random.Random(f"{seed}-ids")

    def seeded_stream_id(now: datetime | None = None) -> str:
        moment = datetime.fromtimestamp(loop.wall(), UTC) if now is None else now
        return new_stream_id(moment)[:-10] + f"{ids.getrandbits(40):010x}"

    with _patched(cefmp4.streams.lifecycle, "new_stream_id", seeded_stream_id), \
         _patched(cefmp4.intake.feed, "watch_forever", _no_watcher), \
         _patched(cefmp4.core.salvage, "MIN_PART_BYTES", PART), \
         _patched(cefmp4.cli.salvage, "time", _WallTime(loop)):
        yield


class _WallTime:
    """The ``time`` module as ``cli.salvage`` uses it: ``time.time()``, virtual."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop

    def time(self) -> float:
        return self._loop.wall()


@contextlib.contextmanager
def _patched(module: Any, name: str, value: Any) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def sim_settings(sched: Schedule, watch: Path, state: Path) -> Settings:
    return load_settings(
        watch_dir=watch,
        state_dir=state,
        s3_bucket_name="sim-bucket",
        s3_key_prefix=PREFIX,
        stream_timeout_seconds=sched.stream_timeout,
        poll_interval_seconds=sched.poll_interval,
        upload_concurrency=sched.upload_slots,
        prom_port=0,
        log_format="json",
        abort_orphan_uploads_after_hours=ORPHAN_GRACE / 3600,
    )


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
        self.state = state
        self.loop = loop
        self.settings = sim_settings(sched, watch, state)
        self.budget = PeakBudget(sched.budget)
        self.config = PipelineConfig(
            watch_dir=self.settings.watch_dir.resolve(),
            key_prefix=PREFIX,
            part_size=sched.part_size,
            max_parts=sched.max_parts,
            stream_timeout=sched.stream_timeout,
            poll_interval=sched.poll_interval,
            parts_in_flight=sched.parts_in_flight,
            backoff=Backoff(initial=0.2, maximum=30.0),
            rpo_seconds=sched.rpo,
        )
        self.app: App | None = None
        self.error: BaseException | None = None
        self.stopping = asyncio.Event()
        self.task = asyncio.create_task(self._main(), name="cefmp4-main")

    async def _main(self) -> None:
        async with open_sqlite_store(self.state) as sqlite:
            checkpoints = FaultyCheckpointStore(sqlite, self.plan, self.life, self.shadow)
            self.app = App(
                self.settings, objects=self.objects, checkpoints=checkpoints,
                prober=NoProber(), clock=VirtualClock(self.loop), metrics=Metrics(),
            )
            made: list[int] = []

            def budget(limit: int, **kw: Any) -> ByteBudget:
                # The app makes the byte budget first, then the upload slots (a ByteBudget
                # of slots since the uplink's lanes): only the first is the scaled one.
                made.append(limit)
                return self.budget if len(made) == 1 else ByteBudget(limit, **kw)

            with _patched(cefmp4.runtime.app, "pipeline_config", lambda _s: self.config), \
                 _patched(cefmp4.runtime.app, "ByteBudget", budget):
                try:
                    await self.app.run(self.stopping)
                except Exception as exc:  # a supervised task failed for good: report it
                    self.error = exc

    @property
    def supervisor(self) -> StreamSupervisor | None:
        return self.app.supervisor if self.app is not None else None

    @property
    def ready(self) -> bool:
        return self.app is not None and self.app.ready.is_set()

    # --- what the driver sees ------------------------------------------------------------

    def notify(self, path: Path) -> None:
        """A file-system event, as the watcher would deliver it."""
        if self.life.alive and self.ready and self.supervisor is not None:
            self.supervisor.on_path(path)

    def holds(self, device: int, inode: int) -> bool:
        """A stream worker holds this file open now."""
        sup = self.supervisor
        return sup is not None and (device, inode) in sup.workers

    def holder(self, device: int, inode: int) -> str | None:
        """The stream whose worker holds this file open now, if any."""
        sup = self.supervisor
        worker = sup.workers.get((device, inode)) if sup is not None else None
        return worker.stream_id if worker is not None else None

    def busy(self) -> bool:
        """Anything left to do: starting, streaming, finalizing."""
        sup = self.supervisor
        return sup is None or sup.open_streams() > 0

    def running(self) -> list[str]:
        sup = self.supervisor
        if sup is None:
            return ["(not started)"]
        return [f"{w.record.path} ({w.record.state})" for w in sup.workers.values()]

    def failures(self) -> int:
        sup = self.supervisor
        return sup.failures if sup is not None else 0

    async def stop(self) -> None:
        self.stopping.set()
        await self.task

    def crash(self) -> None:
        """SIGKILL: from now on nothing this process runs reaches S3 or the store."""
        self.life.alive = False


class OtherHost:
    """``cefmp4 salvage --older-than X`` run from another host (SPEC §2.19): the S3 settings
    only — no checkpoint store of the app's, no watch directory of its files — on the
    simulated bucket through a store of its own (its own faults, its own lifetime)."""

    def __init__(self, objects: FaultyObjectStore, home: Path) -> None:
        self.objects = objects
        home.mkdir(parents=True, exist_ok=True)
        self.settings = load_settings(
            watch_dir=home, state_dir=home / "no-store", s3_bucket_name="sim-bucket",
            s3_key_prefix=PREFIX, prom_port=0, log_format="json",
        )

    async def salvage(self, older_than: float) -> list[Outcome]:
        """One run of the command (``_salvage`` is its body without the printing)."""

        @contextlib.asynccontextmanager
        async def opened(_settings: Settings) -> AsyncIterator[FaultyObjectStore]:
            yield self.objects

        with _patched(cefmp4.cli.salvage, "open_objects", opened):
            return await cefmp4.cli.salvage._salvage(
                self.settings, dry_run=False, older_than=older_than
            )
