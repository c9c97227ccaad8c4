"""Each supervised background task of the daemon, killed by an injected exception, is
reported failing to readiness (``/readyz`` 503 meanwhile), restarted and healthy again
(#9.4). The watcher's own case is in ``test_tasks_and_sweep``; the fatal path (exit
non-zero with one line) is ``tests/unit/test_tasks.py``'s, and with a real process (lease
renewal, the one fatal task) ``tests/system/test_fatal_task.py``'s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cefmp4.config.settings import Settings
from cefmp4.intake import feed as intake
from cefmp4.runtime import housekeeping
from cefmp4.runtime.app import App
from cefmp4.runtime.tasks import TaskSupervisor
from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import FakeProber, capture, make_settings, until
from tests.support.proc import free_port

TASKS: dict[str, tuple[str, Callable[..., Awaitable[None]]]] = {
    "rescan": ("cefmp4.intake.feed.rescan_forever", intake.rescan_forever),
    "sweeper": ("cefmp4.runtime.app.sweep_forever", housekeeping.sweep_forever),
}


@pytest.mark.parametrize("name", sorted(TASKS))
async def test_a_killed_task_is_reported_restarted_and_healthy_again(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    monkeypatch: pytest.MonkeyPatch, name: str,
) -> None:  # fmt: skip
    port = free_port()
    settings: Settings = make_settings(
        tmp_path, watch, rescan_interval_seconds=1, prom_port=port, prom_host="127.0.0.1"
    )
    target, real = TASKS[name]
    calls = 0

    async def killed_once(*args: Any, **kwargs: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError(f"{name} killed")
        await real(*args, **kwargs)

    monkeypatch.setattr(target, killed_once)
    app = App(settings, objects=store, prober=prober)
    app.tasks = TaskSupervisor(app.readiness, app.clock, healthy_after=0.3)
    stop = asyncio.Event()
    with capture() as logs:
        run = asyncio.create_task(app.run(stop))
        try:
            await until(lambda: app.readiness.failures().get(name) == "RuntimeError",
                        what=f"{name} reported failing")  # fmt: skip
            status, body = await _get(port, "/readyz")
            assert status == 503
            assert json.loads(body)["checks"][name] == "down: RuntimeError", body
            await until(lambda: calls >= 2, what=f"{name} restarted")
            await until(lambda: name not in app.readiness.failures(),
                        what=f"{name} healthy again")  # fmt: skip
            assert not run.done()
        finally:
            stop.set()
            await asyncio.wait_for(run, 10)
    failed = [e for e in logs if e["event"] == "task_failed"]
    assert [(e["task"], e["error"]) for e in failed] == [(name, f"RuntimeError('{name} killed')")]


async def _get(port: int, path: str) -> tuple[int, str]:
    """On the test's own loop (the server runs there too; a thread would block it)."""
    url = f"http://127.0.0.1:{port}{path}"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()
