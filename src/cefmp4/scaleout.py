"""Several instances, one Redis, one shared watch directory (SPEC §2.11).

Every file is worked on by the instance holding its lease (``cefmp4.lease``). An instance
claims a file only while it has room (``MAX_STREAMS``), so new files spread over the
instances with capacity; streams whose owner died are found by a periodic look at the
unfinished streams in Redis and resumed from their checkpoints once the lease expired.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import structlog

from cefmp4 import logs
from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.discover import check_file, scan
from cefmp4.errors import LeaseLost
from cefmp4.lease import LeaseKeeper
from cefmp4.manager import UNFINISHED, Identity, StreamManager, unchanged
from cefmp4.pipeline import Context
from cefmp4.stream import StreamWorker

log = structlog.get_logger("cefmp4.scaleout")


class LeasedStreamManager(StreamManager):
    def __init__(
        self,
        ctx: Context,
        shutdown: asyncio.Event,
        keeper: LeaseKeeper,
        *,
        max_streams: int,
        shutdown_grace: float = 20.0,
    ) -> None:
        super().__init__(ctx, shutdown, shutdown_grace=shutdown_grace)
        self.keeper = keeper
        self.max_streams = max_streams
        # Files another instance owns, and until when we stop asking (monotonic time).
        self._foreign: dict[Identity, float] = {}
        # Files seen while we had no room or another instance held them: looked at again
        # when a worker ends and on every takeover round, so none is forgotten.
        self._deferred: dict[Identity, Path] = {}

    def at_capacity(self) -> bool:
        return len(self.workers) + len(self._starting) >= self.max_streams

    # --- claiming --------------------------------------------------------------------------

    def resume_all(self, scanned: object) -> None:
        """Unfinished streams are claimed like any other file: by the takeover loop."""

    def _unknown_file(self, path: Path, st: os.stat_result, ident: Identity) -> None:
        if self.at_capacity() or self._foreign.get(ident, 0.0) > time.monotonic():
            self._deferred[ident] = path
            return
        self._deferred.pop(ident, None)
        self._spawn(self._claim(path, ident), ident)

    def _retry_deferred(self) -> None:
        for ident, path in list(self._deferred.items()):
            if self.at_capacity():
                return
            if self._foreign.get(ident, 0.0) <= time.monotonic():
                del self._deferred[ident]
                self.on_path(path)

    async def _claim(self, path: Path, ident: Identity) -> None:
        ctx = self.ctx
        inode = ident[1]
        token = await ctx.retry(
            "checkpoint", lambda: self.keeper.acquire(inode, lambda: self._lose(ident))
        )
        if token is None:
            # Its lease cannot expire sooner than one TTL from now.
            self._foreign[ident] = time.monotonic() + self.keeper.ttl
            self._deferred[ident] = path
            return
        self._foreign.pop(ident, None)
        try:
            records = await ctx.retry("checkpoint", lambda: ctx.checkpoints.find_by_inode(inode))
            await self._start_or_resume(path, ident, records[-1] if records else None)
        except LeaseLost as exc:
            log.warning(logs.STREAM_RELINQUISHED, path=str(path), error=str(exc))
        finally:
            if ident not in self.workers:
                await self.keeper.release(inode)

    async def _start_or_resume(
        self, path: Path, ident: Identity, latest: StreamRecord | None
    ) -> None:
        st = check_file(path, self.ctx.config.watch_dir)
        if latest is not None and latest.state in UNFINISHED:
            if latest.stream_id not in {w.stream_id for w in self.workers.values()}:
                log.info(logs.STREAM_TAKEN_OVER, stream_id=latest.stream_id, path=str(path))
                await self._resume(latest, path)
            return
        if st is None or (st.st_dev, st.st_ino) != ident:
            return  # gone or replaced since the event: the next event decides
        if latest is not None and latest.state is StreamState.COMPLETED and unchanged(latest, st):
            return
        await self._start_new(path)

    def _before_first_write(self, inode: int, stream_id: str) -> None:
        self.keeper.bind(inode, stream_id)

    def _on_worker_start(self, worker: StreamWorker) -> None:
        ident = (worker.record.device, worker.record.inode)
        self.keeper.set_on_lost(worker.record.inode, lambda: self._lose(ident))
        self.keeper.bind(worker.record.inode, worker.stream_id)

    async def _on_worker_end(self, worker: StreamWorker) -> None:
        if not worker.lease_lost:
            await self.keeper.release(worker.record.inode)
        self._retry_deferred()

    # --- takeover --------------------------------------------------------------------------

    async def takeover_forever(self, interval: float) -> None:
        """Claim unfinished streams nobody works on (their owner died or stopped)."""
        while not self.shutdown.is_set():
            try:
                await self._takeover_once()
            except Exception as exc:  # an outage: the next round tries again
                log.warning(logs.ERROR, operation="takeover", error=str(exc))
            await asyncio.sleep(interval)

    async def _takeover_once(self) -> None:
        self._retry_deferred()
        if self.at_capacity():
            return
        ctx = self.ctx
        records = await ctx.retry("checkpoint", lambda: ctx.checkpoints.list_streams(UNFINISHED))
        mine = {w.stream_id for w in self.workers.values()}
        scanned: dict[int, Path] | None = None
        for record in records:
            if self.at_capacity() or self.shutdown.is_set():
                return
            if record.stream_id in mine:
                continue
            path = _locate(ctx.config.watch_dir, record)
            if path is None:
                # Renamed while nobody watched? Look for the inode before calling it gone.
                if scanned is None:
                    scanned = await asyncio.to_thread(_scan_by_inode, ctx.config.watch_dir)
                path = scanned.get(record.inode)
            ident = (record.device, record.inode)
            if path is not None:
                try:
                    st = os.stat(path)
                except OSError:
                    continue  # gone since _locate: the next round sees it as such
                ident = (st.st_dev, st.st_ino)
            if ident in self._starting or ident in self.workers:
                continue
            if self._foreign.get(ident, 0.0) > time.monotonic():
                continue
            self._spawn(self._claim(path or Path(record.path), ident), ident)


def _locate(watch_dir: Path, record: StreamRecord) -> Path | None:
    """Where the stream's file is now, by inode: its last path, else its original one."""
    for candidate in (Path(record.path), watch_dir / record.rel_path):
        try:
            if os.stat(candidate).st_ino == record.inode:
                return candidate
        except OSError:
            continue
    return None


def _scan_by_inode(watch_dir: Path) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in scan(watch_dir):
        try:
            found[os.stat(path).st_ino] = path
        except OSError:
            continue
    return found
