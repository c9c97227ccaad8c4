"""Paths into the supervisor: the file-system watch, and the periodic rescan that is the
safety net for everything the watch misses (watch limits, unreadable directories, NFS).
Both run as supervised tasks (``cefmp4.tasks``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from cefmp4 import logs
from cefmp4.discover import Scanned, scan_stats
from cefmp4.supervisor import StreamSupervisor
from cefmp4.watcher import watch

log = structlog.get_logger("cefmp4.intake")


async def watch_forever(
    supervisor: StreamSupervisor, watch_dir: Path, stop: asyncio.Event, polling: bool
) -> None:
    # The same (default) Notices as the scans: each bad name is warned about once in all.
    readiness, exts = supervisor.ctx.readiness, supervisor.ctx.config.extensions
    async for changes in watch(
        watch_dir, stop, force_polling=polling, readiness=readiness, extensions=exts
    ):
        for path in changes:
            supervisor.on_path(path)


async def take_scan(supervisor: StreamSupervisor, found: list[Scanned]) -> None:
    """Hand a scan's files to the supervisor: per file already uploaded and unchanged one
    set lookup, no store read, no S3 request; in slices, so that 100,000 files never hold
    the loop for long."""
    for index, (name, st) in enumerate(found):
        if st is None or not supervisor.known_unchanged(st):
            supervisor.on_stat(Path(name), st)
        if index % 2000 == 1999:
            await asyncio.sleep(0)


async def rescan_forever(supervisor: StreamSupervisor, watch_dir: Path, every: float) -> None:
    clock = supervisor.ctx.clock
    while True:
        await clock.sleep(every)
        began = clock.monotonic()
        # The walk and one stat per file in a thread.
        exts = supervisor.ctx.config.extensions
        files = await asyncio.to_thread(scan_stats, watch_dir, extensions=exts)
        await take_scan(supervisor, files)
        supervisor.retry_deferred()
        # ``streams`` 0 means: every file looked at, none being worked on (a quiescence
        # signal that tests wait for instead of sleeping).
        log.info(
            logs.RESCAN_DONE, files=len(files), streams=supervisor.open_streams(),
            seconds=round(clock.monotonic() - began, 3),
        )
