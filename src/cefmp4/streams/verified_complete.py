"""Make the object of a file whose bytes are verified (SPEC §2.3): upload the tail and
every changed part, prove the file unchanged since hashed, complete — and verify again
when the file changed before the Complete went through (an outage can hold it back)."""

from __future__ import annotations

import os
from collections.abc import Callable

from cefmp4.checkpoint import PartRecord
from cefmp4.core.identity import Fingerprint, fingerprint, truncated
from cefmp4.core.parts import part_bounds
from cefmp4.streams.complete import FileChanged, complete_parts, put_empty
from cefmp4.streams.stream import StreamWorker
from cefmp4.streams.verify import digest_now, needs_md5, stale_parts, unchanged_since, verified


class TruncatedNow(Exception):
    """The file lost bytes that are already in S3 while finalize was verifying it."""


def _check_not_truncated(worker: StreamWorker) -> None:
    if truncated(os.fstat(worker.fd), worker.up.uploaded_extent()):
        raise TruncatedNow


async def _drain(worker: StreamWorker) -> None:
    if await worker.up.drain_watching():
        raise TruncatedNow  # while a part was held back, even if the file grew back since
    _check_not_truncated(worker)


async def complete_verified(worker: StreamWorker) -> tuple[list[PartRecord], str, int]:
    """Make the object of the verified file: (its parts, SHA-256, the mtime they hold)."""
    while True:
        parts, sha256, mtime_ns, fp = await _upload_rest_verified(worker)
        if not parts:
            await put_empty(worker.ctx, worker.record)
            return parts, sha256, mtime_ns
        # A Complete retried after an outage must still be of the file's bytes: a write
        # (or an unlink) since they were verified means verify again first.
        try:
            await complete_parts(worker.ctx, worker.record, parts, still=_still(worker.fd, fp))
        except FileChanged:
            continue
        return parts, sha256, mtime_ns


def _still(fd: int, verified: Fingerprint) -> Callable[[], bool]:
    return lambda: fingerprint(os.fstat(fd)) == verified


async def _upload_rest_verified(
    worker: StreamWorker,
) -> tuple[list[PartRecord], str, int, Fingerprint]:
    """Upload the tail and every changed part: (the object's parts, its SHA-256, the mtime
    of the bytes they hold, the file's fingerprint then). Returns only once the file is
    proved unchanged since hashed."""
    fast = await _quiet_file_parts(worker)
    if fast is not None:
        return fast
    up, ctx = worker.up, worker.ctx
    digest = await worker.predigest.take()
    while True:
        if digest is None:
            digest = await digest_now(worker.fd, up.schedule, ctx.clock, md5=needs_md5(up.parts))
        _check_not_truncated(worker)
        stale = stale_parts(digest, up.parts)
        up.forget_parts_beyond(len(digest.result.parts))
        for d in stale:
            up.start_part(d.part_number, d.offset, d.size)
        await _drain(worker)
        # Never without the fingerprint check: a write since the pass began means the
        # bytes S3 holds may not be the file's; with parts re-sent, the pass must also
        # have been trusted (settled) to prove the bytes did not move while hashed.
        if unchanged_since(worker.fd, digest) and (not stale or digest.trusted):
            parts = verified(digest, up.parts)
            if parts is not None:
                return parts, digest.result.sha256, digest.mtime_ns, digest.fingerprint
        digest = None  # the recorder wrote while we uploaded: hash everything again


async def _quiet_file_parts(
    worker: StreamWorker,
) -> tuple[list[PartRecord], str, int, Fingerprint] | None:
    """A file that was complete before we read it needs no second read: every part's MD5
    was taken from the bytes we uploaded, and the SHA-256 was built as they were read."""
    up = worker.up
    st = os.fstat(worker.fd)
    if up.running_sha is None or not worker.quiet_since_start(st):
        return None
    bounds = part_bounds(up.schedule, st.st_size)
    for number, offset, size in bounds:
        if number not in up.parts and not up.is_inflight(number):
            up.start_part(number, offset, size)
    await _drain(worker)
    after = os.fstat(worker.fd)
    sha256 = up.running_sha.hexdigest(len(bounds)) if up.running_sha is not None else None
    parts = [up.parts.get(n) for n in range(1, len(bounds) + 1)]
    if sha256 is None or not worker.quiet_since_start(after) or None in parts:
        return None
    return [p for p in parts if p is not None], sha256, after.st_mtime_ns, fingerprint(after)
