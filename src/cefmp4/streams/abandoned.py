"""Scale-out: salvage the streams whose owner is gone and whose file nobody can open
(SPEC §2.19, Redis only).

The recorder's host burnt down: its cefmp4 stopped renewing the stream's lease, and the
replacement watches another directory, so ``takeover`` has no file to resume the stream
from. Such a stream is abandoned when, on two looks at least one takeover round apart,
its upload is still open under the prefix, no worker of ours follows it, no instance of any
deployment sharing this Redis holds a lease on its file, and its file is not in our
WATCH_DIR (by path or inode). Then this instance takes the file's lease (so that two
instances never salvage one stream, and the record's write is fenced), salvages the upload
into an object and marks the record ``completed`` with status ``salvaged``. Within
``LEASE_TTL_SECONDS`` + one takeover round (``LEASE_TTL_SECONDS / 2``) of the owner's death,
plus the salvage itself.

Records the trust layer hides (a path outside our WATCH_DIR) are read from the store behind
it: their uploads are footage too. None of them is ever used to open a file.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from cefmp4.checkpoint import UNFINISHED, StreamRecord, StreamState
from cefmp4.core.ending import CompletedBy, Status
from cefmp4.core.keys import within_prefix
from cefmp4.core.salvage import Action
from cefmp4.streams.lifecycle import locate, scan_by_inode
from cefmp4.streams.salvage import Known, Salvager
from cefmp4.streams.supervisor import StreamSupervisor

log = structlog.get_logger("cefmp4.streams.abandoned")


class AbandonedStreams:
    """The loop's memory: since when each candidate has looked abandoned (monotonic)."""

    def __init__(self, supervisor: StreamSupervisor, salvager: Salvager,
                 interval: float) -> None:
        self.supervisor = supervisor
        self.salvager = salvager
        self.interval = interval
        self.since: dict[str, float] = {}

    async def forever(self) -> None:
        while not self.supervisor.shutdown.is_set():
            await self.once()
            await self.supervisor.ctx.clock.sleep(self.interval)

    async def once(self) -> list[str]:
        """One look; returns the stream ids salvaged."""
        ctx = self.supervisor.ctx
        raw: Any = getattr(ctx.checkpoints, "store", ctx.checkpoints)  # behind the trust layer
        if not hasattr(raw, "leased_anywhere"):
            return []
        records = await ctx.retry("checkpoint", lambda: raw.list_streams(UNFINISHED))
        prefix = ctx.config.key_prefix
        uploads = {u.upload_id: u for u in await ctx.retry(
            "list_uploads", lambda: ctx.objects.list_multipart_uploads(prefix))}
        mine = {w.stream_id for w in self.supervisor.workers.values()}
        now = ctx.clock.monotonic()
        seen: set[str] = set()
        salvaged: list[str] = []
        scanned: dict[int, Path] | None = None
        for record in records:
            if (record.stream_id in mine or record.upload_id not in uploads
                    or not within_prefix(prefix, record.key)):
                continue
            if locate(ctx.config.watch_dir, record) is not None:
                continue  # takeover resumes it from the file
            if scanned is None:
                scanned = await asyncio.to_thread(
                    scan_by_inode, ctx.config.watch_dir, ctx.config.extensions)
            if record.inode in scanned:
                continue
            if await ctx.retry("checkpoint", functools.partial(raw.leased_anywhere,
                                                               record.inode)):
                continue  # its owner lives, wherever it watches
            seen.add(record.stream_id)
            first = self.since.setdefault(record.stream_id, now)
            if now - first < self.interval:
                continue  # give every live instance one takeover round to claim it
            if await self._salvage(record, uploads[record.upload_id]):
                salvaged.append(record.stream_id)
        self.since = {k: v for k, v in self.since.items() if k in seen}
        return salvaged

    async def _salvage(self, record: StreamRecord, upload: Any) -> bool:
        ctx, ownership = self.supervisor.ctx, self.supervisor.ownership
        ident = (record.device, record.inode)
        if not await ownership.acquire(ident, lambda: None):
            return False
        try:
            ownership.bind(record.inode, record.stream_id, lambda: None)
            known = Known(record.stream_id, record.path, record.rel_path, record.started_at,
                          owner_gone=True)
            [plan] = await self.salvager.survey([upload], {upload.upload_id: known},
                                                older_than=0.0)
            outcome = await self.salvager.carry_out(plan, known)
            if not outcome.done or plan.action is not Action.COMPLETE:
                return False
            done = replace(record, state=StreamState.COMPLETED, status=Status.SALVAGED.value,
                           completed_by=CompletedBy.SALVAGE.value, completed_at=ctx.clock.time(),
                           final_size=outcome.bytes)
            await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(done))
            log.warning("abandoned_stream_salvaged", stream_id=record.stream_id,
                        key=record.key, bytes=outcome.bytes)
            return True
        finally:
            await ownership.release(record.inode)
