"""Paths into the supervisor: the file-system watch, and the periodic rescan that is the
safety net for everything the watch misses (watch limits, unreadable directories, NFS).
Both run as supervised tasks (``cefmp4.runtime.tasks``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import structlog

from cefmp4.intake.discover import Scanned, StatScan, scan_stats
from cefmp4.intake.watcher import watch
from cefmp4.runtime import logs
from cefmp4.streams.supervisor import StreamSupervisor

log = structlog.get_logger("cefmp4.intake.feed")


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


def stat_scan(supervisor: StreamSupervisor, watch_dir: Path) -> StatScan:
    """A scan (blocking: run it in a thread) that leaves out the files already uploaded
    and unchanged (``known_unchanged``, as a closure safe in a thread)."""
    exts = supervisor.ctx.config.extensions
    skip = supervisor.completed.unchanged_test(supervisor.unfinished)
    return scan_stats(watch_dir, extensions=exts, skip=skip)


async def take_scan(supervisor: StreamSupervisor, found: list[Scanned]) -> None:
    """Hand a scan's files to the supervisor (no store read, no S3 request for a file
    already uploaded and unchanged); in slices, so that many never hold the loop long. The
    rest go in the order they should get room (live first, then UPLOAD_ORDER: §2.21)."""
    fresh: list[Scanned] = []
    for index, (name, st) in enumerate(found):
        if st is None or not supervisor.known_unchanged(st):
            fresh.append((name, st))
        if index % 2000 == 1999:
            await asyncio.sleep(0)
    for index, (name, st) in enumerate(supervisor.intake_order(fresh)):
        supervisor.on_stat(Path(name), st)
        if index % 2000 == 1999:
            await asyncio.sleep(0)


async def rescan_forever(supervisor: StreamSupervisor, watch_dir: Path, every: float) -> None:
    clock = supervisor.ctx.clock
    while True:
        await clock.sleep(every)
        began = clock.monotonic()
        # The walk and one stat per file in a thread.
        scanned = await asyncio.to_thread(stat_scan, supervisor, watch_dir)
        await take_scan(supervisor, scanned.found)
        supervisor.retry_deferred()
        # ``streams`` 0 means: every file looked at, none being worked on (a quiescence
        # signal that tests wait for instead of sleeping).
        log.info(
            logs.RESCAN_DONE, files=scanned.files, streams=supervisor.open_streams(),
            seconds=round(clock.monotonic() - began, 3),
        )
