"""Paths into the supervisor: the file-system watch, and the periodic rescan that is the
safety net for everything the watch misses (watch limits, unreadable directories, NFS).
Both run as supervised tasks (``cefmp4.tasks``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from cefmp4 import logs
from cefmp4.discover import scan
from cefmp4.supervisor import StreamSupervisor
from cefmp4.watcher import watch

log = structlog.get_logger("cefmp4.intake")


async def watch_forever(
    supervisor: StreamSupervisor, watch_dir: Path, stop: asyncio.Event, polling: bool
) -> None:
    # The same (default) Notices as the scans: each bad name is warned about once in all.
    readiness = supervisor.ctx.readiness
    async for changes in watch(watch_dir, stop, force_polling=polling, readiness=readiness):
        for path in changes:
            supervisor.on_path(path)


async def rescan_forever(supervisor: StreamSupervisor, watch_dir: Path, every: float) -> None:
    clock = supervisor.ctx.clock
    while True:
        await clock.sleep(every)
        began = clock.monotonic()
        files = await asyncio.to_thread(scan, watch_dir)
        for path in files:
            supervisor.on_path(path)
        supervisor.retry_deferred()
        # ``streams`` 0 means: every file looked at, none being worked on (a quiescence
        # signal that tests wait for instead of sleeping).
        log.info(
            logs.RESCAN_DONE, files=len(files), streams=supervisor.open_streams(),
            seconds=round(clock.monotonic() - began, 3),
        )
