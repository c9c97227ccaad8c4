"""What changed in the file since its parts went up (SPEC §2.3): the hashing passes over
the held descriptor, and which parts they show stale.

Recorders patch bytes they already wrote (the ``mdat`` size, a faststart rewrite), so every
uploaded range is hashed again before Complete and a part whose digest changed goes up
again (CRC32C; MD5 for parts recorded with one). Two ways keep that second pass off the
critical path:

* a file that was already finished when its stream began and has not changed since needs
  none: its parts' digests and its running SHA-256 were taken from the bytes that went up;
* a live stream gets its pass while it waits out the idle timeout (``Predigest``), and
  finalize reuses it when the file has not changed since.

"Not changed" is a (size, mtime, ctime) fingerprint taken before hashing, trusted only when
the mtime was already ``QUIET_MARGIN_S`` old then: any later write moves the mtime past it.
This module hashes (in worker threads); what a pass shows (stale parts, the verified
parts) is decided in ``core.verified``, and ``finalize`` acts. Nothing here mutates a
stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping

import structlog

from cefmp4.checkpoint import PartRecord
from cefmp4.core.hashing import is_md5_record, record_past, same_bytes
from cefmp4.core.identity import fingerprint
from cefmp4.core.parts import PartSchedule, part_bounds
from cefmp4.core.verified import Digest
from cefmp4.runtime import logs
from cefmp4.runtime.clock import Clock
from cefmp4.runtime.errors import SourceError
from cefmp4.streams.source import digest_file, digest_range

log = structlog.get_logger("cefmp4.streams.recheck")

# A file is "settled" when its last write is this old. Any later write then moves its
# mtime (and ctime) forward, as long as the file system keeps mtime to a second or finer:
# a kernel tick on local file systems, 1 s on the coarsest NFS servers.
QUIET_MARGIN_S = 1.0


def settled(st: os.stat_result, at: float) -> bool:
    """The file's last write was at least the margin before wall time ``at``."""
    return st.st_mtime_ns / 1e9 <= at - QUIET_MARGIN_S


async def digest_now(
    fd: int, schedule: PartSchedule, clock: Clock, *, md5: bool = False
) -> Digest:
    st = os.fstat(fd)
    trusted = settled(st, clock.time())
    bounds = part_bounds(schedule, st.st_size)
    result = await asyncio.to_thread(digest_file, fd, bounds, md5=md5)
    return Digest(fingerprint(st), trusted, result, st.st_mtime_ns)


def needs_md5(parts: Mapping[int, PartRecord]) -> bool:
    """Some part was recorded with its MD5 (before CRC32C, or adopted by reconcile): the
    pass that verifies it must compute MD5 too."""
    return any(is_md5_record(p.md5) for p in parts.values())


def holds_body(fd: int, part: PartRecord) -> bool:
    """Blocking (a thread): the file still holds part 1's bytes past its header (its second
    half, where a header patch does not reach: ``core.hashing.header_window``). Only for a
    part whose record has that digest (``record_past``); ``SourceError`` when it cannot be
    read."""
    past = record_past(part.md5)
    if past is None:
        raise ValueError(f"part {part.part_number} has no digest past its header")
    start, crc = past
    end = part.offset + part.size
    if os.fstat(fd).st_size < end or start >= end:
        return False
    return digest_range(fd, start, end - start).crc32c == crc


def holds(fd: int, part: PartRecord) -> bool:
    """Blocking (a thread): the file still holds the bytes of ``part`` where it was.
    ``SourceError`` when it cannot be read (never taken for "not the same bytes")."""
    if os.fstat(fd).st_size < part.offset + part.size:
        return False
    return same_bytes(part.md5, digest_range(fd, part.offset, part.size,
                                             md5=is_md5_record(part.md5)))


class Predigest:
    """Hashes a quiet live stream while it waits out its idle timeout."""

    def __init__(
        self, fd: int, schedule: PartSchedule, clock: Clock, name: str,
        needs_md5: Callable[[], bool] = lambda: False,
    ) -> None:
        self._fd = fd
        self._needs_md5 = needs_md5
        self._schedule = schedule
        self._clock = clock
        self._name = name
        self.ready: Digest | None = None
        self._task: asyncio.Task[None] | None = None

    def maybe_start(self, idle_for: float, horizon: float, quiet_since_start: bool) -> None:
        """Called from the follow loop; starts a pass once the file is settled and half
        of ``horizon`` (the idle time at which the stream may complete) has passed."""
        if self._task is not None or idle_for < max(QUIET_MARGIN_S, horizon / 2):
            return
        st = os.fstat(self._fd)
        if self.ready is not None and self.ready.fingerprint == fingerprint(st):
            return
        if not settled(st, self._clock.time()) or quiet_since_start:
            return  # too fresh to trust, or finalize needs no pass at all
        self._task = asyncio.create_task(self._run(), name=f"predigest-{self._name}")

    async def _run(self) -> None:
        try:
            digest = await digest_now(
                self._fd, self._schedule, self._clock, md5=self._needs_md5()
            )
            if fingerprint(os.fstat(self._fd)) == digest.fingerprint:
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
        if fingerprint(os.fstat(self._fd)) != ready.fingerprint:
            log.info(logs.PREDIGEST_STALE)
            return None
        log.info(logs.PREDIGEST_USED, size=ready.fingerprint[0])
        return ready

    async def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
