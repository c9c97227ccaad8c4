"""ffprobe of a stream's file at the end: through its descriptor, early where that is safe.

The probe reads the held descriptor through /proc (the bytes even of a deleted or renamed
file). ``EarlyProbe`` starts it when finalize begins, so it runs beside the last parts and
the Complete instead of after them.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import structlog

from cefmp4.core.identity import Fingerprint, fingerprint
from cefmp4.runtime import logs
from cefmp4.streams.context import Context
from cefmp4.streams.probe import ProbeResult
from cefmp4.streams.verify import settled

# Part of finalize: its lines keep that logger.
log = structlog.get_logger("cefmp4.streams.finalize")


async def probe_file(ctx: Context, fd: int, path: str) -> ProbeResult:
    """Probe the file now; a failure is logged and counted once."""
    return _counted(ctx, await ctx.prober.probe(_probe_target(fd, path)))


def _probe_target(fd: int, path: str) -> Path:
    # /proc/<pid>/fd/<n> reaches the bytes even when the file was deleted or renamed.
    target = Path(f"/proc/{os.getpid()}/fd/{fd}")
    return target if os.path.exists(target) else Path(path)


def _counted(ctx: Context, result: ProbeResult) -> ProbeResult:
    if result.duration_seconds is None:
        ctx.metrics.failed_operations.labels(operation="probe").inc()
        log.warning(logs.PROBE_FAILED, error=result.error)
    return result


class EarlyProbe:
    """ffprobe of the file from the moment finalize begins, beside the last parts and the
    Complete; after them, its ~0.08 s (a subprocess) was the tail of every stream, and all
    of `upload`'s wait once the bytes were sent. Its answer stands only if the (settled)
    file did not change from before it began until the object was made; otherwise the file
    is probed again, so the metadata always describes the object's bytes."""

    def __init__(self, ctx: Context, fd: int, path: str, before: os.stat_result) -> None:
        self._ctx, self._fd, self._path = ctx, fd, path
        self._before = fingerprint(before)
        self._task = asyncio.create_task(self._run(), name="early-probe")

    @classmethod
    def start(cls, ctx: Context, fd: int, path: str) -> EarlyProbe | None:
        """Probing now, or None for a file not settled: its fingerprint could then miss a
        write within the mtime granularity (``verify.settled``, the predigest's rule too)."""
        st = os.fstat(fd)
        return cls(ctx, fd, path, st) if settled(st, ctx.clock.time()) else None

    async def _run(self) -> tuple[ProbeResult, Fingerprint]:
        result = await self._ctx.prober.probe(_probe_target(self._fd, self._path))
        return result, fingerprint(os.fstat(self._fd))

    async def result(self) -> ProbeResult:
        """The probe of the file as it is now, which is the object's bytes."""
        result, after = await self._task
        if after == self._before == fingerprint(os.fstat(self._fd)):
            return _counted(self._ctx, result)
        log.debug(logs.PROBE_REPEATED)
        return await probe_file(self._ctx, self._fd, self._path)

    async def close(self) -> None:
        """Stop a probe no path used (a kept object is probed after its own checks)."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
