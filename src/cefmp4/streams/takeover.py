"""Scale-out: claim unfinished streams nobody works on (their owner died or stopped).

Every ``LEASE_TTL_SECONDS / 2`` the unfinished streams in the shared store are looked at;
one whose file is here and that no worker of ours follows is handed to the supervisor,
which claims it only once its lease is free. Deferred files are retried on every round.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from cefmp4.checkpoint import UNFINISHED
from cefmp4.core.identity import ident_of
from cefmp4.streams.lifecycle import locate, scan_by_inode
from cefmp4.streams.source import stat_or_none
from cefmp4.streams.supervisor import StreamSupervisor


async def takeover_forever(supervisor: StreamSupervisor, interval: float) -> None:
    while not supervisor.shutdown.is_set():
        await takeover_once(supervisor)
        await supervisor.ctx.clock.sleep(interval)


async def takeover_once(supervisor: StreamSupervisor) -> None:
    supervisor.retry_deferred()
    ctx = supervisor.ctx
    if supervisor.at_capacity():
        return
    records = await ctx.retry("checkpoint", lambda: ctx.checkpoints.list_streams(UNFINISHED))
    mine = {w.stream_id for w in supervisor.workers.values()}
    scanned: dict[int, Path] | None = None
    for record in records:
        if supervisor.at_capacity() or supervisor.shutdown.is_set():
            return
        if record.stream_id in mine:
            continue
        path = locate(ctx.config.watch_dir, record)
        if path is None:
            # Renamed while nobody watched? Look for the inode before calling it gone.
            if scanned is None:
                scanned = await asyncio.to_thread(
                    scan_by_inode, ctx.config.watch_dir, ctx.config.extensions
                )
            path = scanned.get(record.inode)
        ident = (record.device, record.inode)
        if path is not None:
            st = stat_or_none(path)
            if st is None:
                continue  # gone since it was located: the next round sees it as such
            ident = ident_of(st)
        if not supervisor.is_claimed(ident):
            supervisor.consider(ident, path or Path(record.path))
