"""Make S3 hold exactly the file's final bytes before completing (SPEC §2.3).

Recorders patch bytes they already wrote (the ``mdat`` size, a faststart rewrite), so every
uploaded range is hashed again and a part whose MD5 changed goes up again. Two ways keep
that second pass off the critical path:

* a file that was already finished when its stream began and has not changed since needs
  none: its parts' MD5s and its running SHA-256 were taken from the bytes that went up;
* a live stream gets its pass while it waits out the idle timeout (``Predigest``), and
  finalize reuses it when the file has not changed since.

"Not changed" is a (size, mtime, ctime) fingerprint taken before hashing, trusted only when
the mtime was already ``QUIET_MARGIN_S`` old then: any later write moves the mtime past it.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from cefmp4 import logs
from cefmp4.checkpoint import PartRecord
from cefmp4.errors import SourceError
from cefmp4.upload import FileDigest, digest_file, part_bounds

if TYPE_CHECKING:
    from cefmp4.stream import StreamWorker

log = structlog.get_logger("cefmp4.verify")

# A file is "settled" when its last write is this old. Any later write then moves its
# mtime (and ctime) forward, as long as the file system keeps mtime to a second or finer:
# a kernel tick on local file systems, 1 s on the coarsest NFS servers.
QUIET_MARGIN_S = 1.0

Fingerprint = tuple[int, int, int]


def fingerprint(st: os.stat_result) -> Fingerprint:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def settled(st: os.stat_result, at: float) -> bool:
    """The file's last write was at least the margin before wall time ``at``."""
    return st.st_mtime_ns / 1e9 <= at - QUIET_MARGIN_S


@dataclass(frozen=True, slots=True)
class Digest:
    fingerprint: Fingerprint
    trusted: bool  # the fingerprint proves the bytes did not change while hashed
    result: FileDigest


async def digest_now(worker: StreamWorker) -> Digest:
    st = os.fstat(worker.fd)
    trusted = settled(st, time.time())
    bounds = part_bounds(worker.schedule, st.st_size)
    result = await asyncio.to_thread(digest_file, worker.fd, bounds)
    return Digest(fingerprint(st), trusted, result)


class Predigest:
    """Hashes a quiet live stream while it waits out its idle timeout."""

    def __init__(self, worker: StreamWorker) -> None:
        self.worker = worker
        self.ready: Digest | None = None
        self._task: asyncio.Task[None] | None = None

    def maybe_start(self, idle_for: float) -> None:
        """Called from the follow loop; starts a pass once the file is settled."""
        worker = self.worker
        if self._task is not None or idle_for < max(QUIET_MARGIN_S, worker.timeout / 2):
            return
        st = os.fstat(worker.fd)
        if self.ready is not None and self.ready.fingerprint == fingerprint(st):
            return
        if not settled(st, time.time()) or worker.quiet_since_start(st):
            return  # too fresh to trust, or finalize needs no pass at all
        self._task = asyncio.create_task(self._run(), name=f"predigest-{worker.stream_id}")

    async def _run(self) -> None:
        try:
            digest = await digest_now(self.worker)
            if fingerprint(os.fstat(self.worker.fd)) == digest.fingerprint:
                self.ready = digest
        except (OSError, SourceError, ValueError) as exc:
            # Only an optimisation: finalize hashes the file itself. Say so and go on.
            log.warning(logs.PREDIGEST_FAILED, error=str(exc))
        finally:
            self._task = None

    async def take(self) -> Digest | None:
        """A digest still valid for the file as it is now, if there is one."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        ready, self.ready = self.ready, None
        if ready is None or not ready.trusted:
            return None
        if fingerprint(os.fstat(self.worker.fd)) != ready.fingerprint:
            log.info(logs.PREDIGEST_STALE)
            return None
        log.info(logs.PREDIGEST_USED, size=ready.fingerprint[0])
        return ready

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def upload_rest_verified(worker: StreamWorker) -> tuple[list[PartRecord], str]:
    """Upload the tail and every changed part; (the object's parts, its SHA-256)."""
    fast = await _quiet_file_parts(worker)
    if fast is not None:
        return fast
    digest = await worker.predigest.take()
    while True:
        if digest is None:
            digest = await digest_now(worker)
        bounds_count = len(digest.result.parts)
        stale = [
            d for d in digest.result.parts
            if (p := worker.parts.get(d.part_number)) is None
            or p.md5 != d.md5_hex or p.size != d.size or p.offset != d.offset
        ]
        for n in [n for n in worker.parts if n > bounds_count]:
            del worker.parts[n]  # the file is shorter than parts we uploaded
        if stale:
            tasks = [worker.start_part(d.part_number, d.offset, d.size) for d in stale]
            await asyncio.gather(*tasks)
            await worker.drain()
        unchanged = fingerprint(os.fstat(worker.fd)) == digest.fingerprint
        if not stale or (unchanged and digest.trusted):
            parts = [worker.parts[n] for n in range(1, bounds_count + 1)]
            if all(p.md5 == d.md5_hex for p, d in zip(parts, digest.result.parts, strict=True)):
                return parts, digest.result.sha256
        digest = None  # the recorder wrote while we uploaded: hash everything again


async def _quiet_file_parts(worker: StreamWorker) -> tuple[list[PartRecord], str] | None:
    """A file that was complete before we read it needs no second read: every part's MD5
    was taken from the bytes we uploaded, and the SHA-256 was built as they were read."""
    st = os.fstat(worker.fd)
    if worker.running_sha is None or not worker.quiet_since_start(st):
        return None
    bounds = part_bounds(worker.schedule, st.st_size)
    missing = [b for b in bounds if b[0] not in worker.parts]
    await asyncio.gather(*(worker.start_part(*b) for b in missing))
    await worker.drain()
    sha256 = worker.running_sha.hexdigest(len(bounds))
    if sha256 is None or not worker.quiet_since_start(os.fstat(worker.fd)):
        return None
    return [worker.parts[n] for n in range(1, len(bounds) + 1)], sha256
