"""Keeping the leases of the streams this instance owns (SPEC §2.11, Redis only).

A lease is renewed every third of its TTL (a supervised task, fatal: see
``renew_forever``). When a renewal says another instance holds it, or renewals have failed
for longer than the TTL (we cannot know whether it expired), the stream's ``on_lost``
callback stops its worker at once. Checkpoint writes are fenced as
well, so even a worker that has not yet heard the news cannot overwrite newer progress.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from cefmp4.checkpoint import Leases
from cefmp4.runtime import logs
from cefmp4.runtime.errors import CefmpError, LeaseLost, PermanentError

log = structlog.get_logger("cefmp4.streams.lease")


def lease_namespace(watch_dir: Path, explicit: str = "") -> str:
    """The namespace of this deployment's lease keys: ``explicit`` if given, else 12 hex
    digits of the SHA-256 of the absolute WATCH_DIR path as configured.

    Leases are keyed by inode, which is unique only within one file system. Instances that
    share a volume must share leases, so the namespace must be the same on each of them:
    neither ``st_dev`` (it differs between hosts mounting one NFS export) nor ``f_fsid``
    (not reliable across hosts and network file systems) can be used, but the configured
    WATCH_DIR is the same wherever the deployment runs. Two deployments that share a Redis
    key prefix but watch different directories no longer collide on an inode number;
    deployments that mount one volume at different paths set the same explicit namespace.
    Not resolved (no symlinks followed): the path as written is what the instances share.
    """
    if explicit:
        return explicit
    absolute = os.path.abspath(os.fspath(watch_dir))
    return hashlib.sha256(os.fsencode(absolute)).hexdigest()[:12]


def default_owner() -> str:
    """``host:pid-namespace:pid``: unique among live processes, and precise enough to tell
    that a lease's holder was an earlier process on this very host that has died."""
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{socket.gethostname()}:{namespace}:{os.getpid()}"


def dead_predecessor(owner: str, holder: str) -> bool:
    """True if ``holder`` names a process of this host and pid namespace that is gone
    (killed and restarted: its leases need not be waited out)."""
    mine = owner.split(":")
    theirs = holder.split(":")
    if len(mine) != 3 or len(theirs) != 3 or mine[:2] != theirs[:2] or mine[1] == "0":
        return False
    if not theirs[2].isdigit() or theirs[2] == mine[2]:
        return False
    try:
        os.kill(int(theirs[2]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive (maybe another user's): wait for the lease to expire
    return False


@dataclass(slots=True)
class _Held:
    stream_ids: set[str]
    token: int
    on_lost: Callable[[], None]
    renewed_at: float


class LeaseKeeper:
    def __init__(self, leases: Leases, owner: str, ttl: float) -> None:
        self.leases = leases
        self.owner = owner
        self.ttl = ttl
        self._held: dict[int, _Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    async def acquire(self, inode: int, on_lost: Callable[[], None]) -> int | None:
        """Take the file's lease; None when another live instance holds it."""
        token = await self.leases.acquire(inode, self.owner, self.ttl)
        if token is None:
            holder = await self.leases.holder(inode)
            if holder is not None and dead_predecessor(self.owner, holder):
                token = await self.leases.steal(inode, holder, self.owner, self.ttl)
                if token is not None:
                    log.info(logs.LEASE_RECLAIMED, inode=inode, previous_owner=holder)
        if token is not None:
            self._held[inode] = _Held(set(), token, on_lost, time.monotonic())
        return token

    def bind(self, inode: int, stream_id: str) -> None:
        """Fence ``stream_id``'s checkpoint writes with the file's token; LeaseLost if the
        lease is gone already (lost while the stream was being claimed)."""
        held = self._held.get(inode)
        if held is None:
            raise LeaseLost(f"lease of inode {inode} lost")
        held.stream_ids.add(stream_id)
        self.leases.fence(stream_id, inode, held.token)

    def set_on_lost(self, inode: int, on_lost: Callable[[], None]) -> None:
        held = self._held.get(inode)
        if held is None:
            raise LeaseLost(f"lease of inode {inode} lost")
        held.on_lost = on_lost

    async def verify(self, inode: int) -> None:
        """Before an irreversible step (CompleteMultipartUpload): still ours, or LeaseLost."""
        if inode not in self._held or not await self.leases.renew(inode, self.owner, self.ttl):
            raise LeaseLost(f"lease of inode {inode} lost")
        self._held[inode].renewed_at = time.monotonic()

    async def release(self, inode: int) -> None:
        held = self._held.pop(inode, None)
        if held is None:
            return
        for stream_id in held.stream_ids:
            self.leases.unfence(stream_id)
        try:
            await self.leases.release(inode, self.owner)
        except CefmpError as exc:  # it expires by itself; say so and move on
            log.warning(logs.LEASE_RELEASE_FAILED, inode=inode, error=str(exc))

    def _lose(self, inode: int) -> None:
        held = self._held.pop(inode, None)
        if held is None:
            return
        for stream_id in held.stream_ids:
            self.leases.unfence(stream_id)
        log.warning(logs.LEASE_LOST, inode=inode, streams=sorted(held.stream_ids))
        held.on_lost()

    async def renew_forever(self) -> None:
        """Renew every held lease each third of the TTL. A renewal Redis refuses for good
        (a permission taken away, a lease key overwritten) raises: the app runs this task
        as fatal, because an instance that cannot keep its leases must stop and let an
        orchestrator restart it rather than upload streams it may no longer own."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            for inode in list(self._held):
                held = self._held.get(inode)
                if held is None:
                    continue
                try:
                    ok = await self.leases.renew(inode, self.owner, self.ttl)
                except LeaseLost:
                    self._lose(inode)
                    continue
                except PermanentError:
                    raise
                except CefmpError as exc:
                    if time.monotonic() - held.renewed_at > self.ttl:
                        log.warning(logs.LEASE_LOST, inode=inode, error=str(exc))
                        self._lose(inode)
                    continue
                if ok:
                    held.renewed_at = time.monotonic()
                else:
                    self._lose(inode)
