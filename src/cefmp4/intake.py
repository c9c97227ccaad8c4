"""Paths into the supervisor: the file-system watch, and the periodic rescan that is the
safety net for everything the watch misses (watch limits, unreadable directories, NFS).
Both run as supervised tasks (``cefmp4.tasks``)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

from cefmp4 import logs
from cefmp4.discover import scan_paths
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


async def rescan_forever(supervisor: StreamSupervisor, watch_dir: Path, every: float) -> None:
    clock = supervisor.ctx.clock
    while True:
        await clock.sleep(every)
        began = clock.monotonic()
        # The walk and one stat per file in a thread; the loop only looks the results up,
        # in slices, so that 100,000 files never hold it for long.
        files = await asyncio.to_thread(
            _scan_and_stat, watch_dir, supervisor.ctx.config.extensions
        )
        for index, (name, st) in enumerate(files):
            if st is None or not supervisor.known_unchanged(st):
                supervisor.on_stat(Path(name), st)
            if index % 2000 == 1999:
                await asyncio.sleep(0)
        supervisor.retry_deferred()
        # ``streams`` 0 means: every file looked at, none being worked on (a quiescence
        # signal that tests wait for instead of sleeping).
        log.info(
            logs.RESCAN_DONE, files=len(files), streams=supervisor.open_streams(),
            seconds=round(clock.monotonic() - began, 3),
        )


def _scan_and_stat(
    watch_dir: Path, extensions: tuple[str, ...]
) -> list[tuple[str, os.stat_result | None]]:
    """Every candidate and its stat. The walk already vetted each one (regular files, or
    symlinks to files inside WATCH_DIR, never through a symlinked directory), so one
    ``stat`` each is enough: ``check_file``'s realpath checks would cost 4x as much."""
    found: list[tuple[str, os.stat_result | None]] = []
    for name in scan_paths(watch_dir, extensions=extensions):
        try:
            st: os.stat_result | None = os.stat(name)
        except OSError:
            st = None  # gone since the walk
        found.append((name, st))
    return found
