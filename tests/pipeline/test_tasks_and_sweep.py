"""The daemon's supervised tasks and the orphan sweeper, on the memory store."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cefmp4.config.settings import Settings
from cefmp4.runtime.app import App
from cefmp4.runtime.clock import SystemClock
from cefmp4.runtime.tasks import TaskSupervisor
from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import (
    FakeProber,
    capture,
    make_settings,
    pattern,
    until,
    videos,
)


class LaterClock(SystemClock):
    """Wall time ``ahead`` seconds in the future: uploads look as old as a test needs."""

    def __init__(self, ahead: float) -> None:
        self.ahead = ahead

    def time(self) -> float:
        return super().time() + self.ahead


async def test_the_sweeper_aborts_old_unknown_uploads_inside_the_prefix_only(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, abort_orphan_uploads_after_hours=1)
    ours = await store.create_multipart("streams/20260101T000000Z-0123456789/x.mp4", "video/mp4")
    foreign = await store.create_multipart("streams-archive/keep.mp4", "video/mp4")
    app = App(settings, objects=store, prober=prober, clock=LaterClock(2 * 3600))
    stop = asyncio.Event()
    task = asyncio.create_task(app.run(stop))
    try:
        await until(lambda: app.metrics.orphan_uploads_aborted._value.get() >= 1,
                    what="the orphan aborted")
        left = await store.list_multipart_uploads("")
        assert [u.upload_id for u in left] == [foreign]
        assert ours not in {u.upload_id for u in left}
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_failing_watcher_is_restarted_reported_and_recovers(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    monkeypatch: pytest.MonkeyPatch, real_time: None,
) -> None:
    """The real watcher (real time: watchfiles is a thread), re-registered after a crash."""
    from cefmp4.intake.feed import watch_forever as real

    calls = 0

    async def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("inotify went away")
        await real(*args, **kwargs)

    monkeypatch.setattr("cefmp4.intake.feed.watch_forever", flaky)
    app = App(settings, objects=store, prober=prober)
    app.tasks = TaskSupervisor(app.readiness, app.clock, healthy_after=0.2)
    stop = asyncio.Event()
    with capture() as logs:
        task = asyncio.create_task(app.run(stop))
        try:
            await until(lambda: app.readiness.failures().get("watcher") == "RuntimeError",
                        what="the watcher reported failing")
            await until(lambda: calls >= 2, what="the watcher restarted")
            await until(lambda: "watcher" not in app.readiness.failures(),
                        what="the watcher healthy again")
            (watch / "after.mp4").write_bytes(pattern(1234))
            await until(lambda: len(videos(store)) == 1, what="a file seen by the new watcher")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert [e["event"] for e in logs].count("task_failed") == 1


async def test_the_rescan_finds_what_the_watcher_missed(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def deaf(*_args: object) -> None:  # a watcher that sees nothing (NFS, watch limits)
        await asyncio.Event().wait()

    monkeypatch.setattr("cefmp4.intake.feed.watch_forever", deaf)
    settings = make_settings(tmp_path, watch, rescan_interval_seconds=1)
    app = App(settings, objects=store, prober=prober)
    stop = asyncio.Event()
    with capture() as logs:
        task = asyncio.create_task(app.run(stop))
        try:
            await until(app.ready.is_set, what="ready")
            data = pattern(1234)
            (watch / "missed.mp4").write_bytes(data)
            await until(lambda: list(videos(store).values()) == [data], what="the rescan's upload")
            seen = len(logs)
            await until(lambda: any(e["event"] == "rescan" and e["streams"] == 0
                                    for e in logs[seen:]), what="a quiet rescan")
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert [e["event"] for e in logs].count("stream_started") == 1
