"""The fast pipeline layer: the real App in burst mode (or as a daemon) on the in-memory
object store, the real SQLite store and real files, with a fake prober. No server.

Every test runs on virtual time (``tests.support.vloop``): waits, idle timeouts and retry
backoffs cost no real time, executor work runs inline, and the App's default clock is the
loop's. The file-system watch (a real-time thread) becomes a scan every 20 ms of virtual
time. A test that needs real time and the real watcher asks for the ``real_time`` fixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

import cefmp4.intake.feed
import cefmp4.runtime.app
from cefmp4.checkpoint import StreamRecord
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.config.settings import Settings, load_settings
from cefmp4.core.keys import metadata_key
from cefmp4.core.metadata import ProbeResult
from cefmp4.core.parts import MIB
from cefmp4.intake.discover import scan_paths
from cefmp4.runtime.app import App
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.supervisor import StreamSupervisor
from tests.support.vloop import LoopClock, VirtualLoop

PART = 5 * MIB
WATCH_SCAN_S = 0.02  # the stand-in watcher's period, in virtual seconds

REAL_TIME = "real_time"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    if REAL_TIME in getattr(item, "fixturenames", ()):
        return {"real": asyncio.new_event_loop}
    return {"virtual": VirtualLoop}


@pytest.fixture
def real_time() -> None:
    """Run this test on a real event loop, with the real clock and watcher."""


@pytest.fixture(autouse=True)
def _virtual_time(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if REAL_TIME in request.fixturenames:
        return
    monkeypatch.setattr(cefmp4.runtime.app, "SystemClock", LoopClock)
    monkeypatch.setattr(cefmp4.intake.feed, "watch_forever", scanning_watcher)


async def scanning_watcher(
    supervisor: StreamSupervisor, watch_dir: Path, stop: asyncio.Event, polling: bool
) -> None:
    """The watcher on virtual time: every path, every ``WATCH_SCAN_S`` (what inotify would
    report, and more: the supervisor takes an unchanged path for nothing new)."""
    exts = supervisor.ctx.config.extensions
    while not stop.is_set():
        for name in scan_paths(watch_dir, extensions=exts):
            supervisor.on_path(Path(name))
        await supervisor.ctx.clock.wait(stop, WATCH_SCAN_S)


class FakeProber:
    def __init__(self) -> None:
        self.probed: list[Path] = []

    async def ping(self) -> None:
        return None

    async def probe(self, path: Path) -> ProbeResult:
        self.probed.append(path)
        return ProbeResult(4.0, None, "mov,mp4", "h264", 320, 240)


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ per offset and seed (a part moved or reused shows)."""
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    reps = size // len(block) + 1
    return (block * reps)[:size]


@pytest.fixture
def watch(tmp_path: Path) -> Path:
    path = tmp_path / "watch"
    path.mkdir()
    return path


@pytest.fixture
def settings(tmp_path: Path, watch: Path) -> Settings:
    return make_settings(tmp_path, watch)


def make_settings(tmp_path: Path, watch: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "watch_dir": watch,
        "state_dir": tmp_path / "state",
        "s3_bucket_name": "test-bucket",
        "chunk_size_mb": 5,
        "max_inflight_mb": 40,
        "stream_timeout_seconds": 0.3,
        "poll_interval_seconds": 0.02,
        "prom_port": 0,
        "log_format": "console",
        "rescan_interval_seconds": 0,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def store() -> MemoryObjectStore:
    return MemoryObjectStore("test-bucket")


@pytest.fixture
def prober() -> FakeProber:
    return FakeProber()


def make_app(settings: Settings, store: MemoryObjectStore, prober: FakeProber) -> App:
    return App(settings, objects=store, prober=prober)


async def burst(
    settings: Settings, store: MemoryObjectStore, prober: FakeProber,
    files: list[Path] | None = None, **kw: Any,
) -> dict[Path, StreamRecord | None]:
    return await make_app(settings, store, prober).run_burst(files, **kw)


@asynccontextmanager
async def daemon(
    settings: Settings, store: MemoryObjectStore, prober: FakeProber
) -> AsyncIterator[App]:
    """The daemon on the memory store; stopped (and awaited) on exit."""
    app = make_app(settings, store, prober)
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait({task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    assert app.ready.is_set()
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Wait for ``predicate()`` (sync) to hold: never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def videos(store: MemoryObjectStore) -> dict[str, bytes]:
    return {k: o.body for k, o in store.objects.items() if k.endswith(".mp4")}


def metadata(store: MemoryObjectStore, key: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(store.objects[metadata_key(key)].body)
    return doc


async def records(settings: Settings) -> list[StreamRecord]:
    async with open_sqlite_store(settings.state_dir, read_only=True) as db:
        return sorted(await db.list_streams(), key=lambda r: r.started_at)


def capture() -> Any:
    return structlog.testing.capture_logs()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every fast pipeline test ends within 30 s, or it hangs and says so."""
    for item in items:
        if "tests/pipeline/" in str(item.fspath):
            item.add_marker(pytest.mark.timeout(30))
