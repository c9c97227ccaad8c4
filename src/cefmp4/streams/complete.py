"""CompleteMultipartUpload, made safe to repeat: confirmed by HeadObject when S3 no longer
knows the upload id, and never overwriting an object that is already there."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.core.containers import content_type
from cefmp4.core.hashing import combined_crc64nvme, crc64_b64, multipart_etag
from cefmp4.core.parts import contiguous
from cefmp4.runtime import logs
from cefmp4.runtime.errors import UploadNotFound
from cefmp4.storage import ObjectInfo
from cefmp4.streams.context import Context

log = structlog.get_logger("cefmp4.streams.complete")


async def abort_quietly(ctx: Context, key: str, upload_id: str) -> None:
    with contextlib.suppress(UploadNotFound):  # already gone: nothing to clean up
        await ctx.retry("abort", lambda: ctx.objects.abort_multipart(key, upload_id))


def matches(info: ObjectInfo, parts: list[PartRecord]) -> bool:
    """The object is the one these parts make (size, and the multipart ETag if it has one)."""
    if not parts or info.size != sum(p.size for p in parts):
        return False
    if "-" in info.etag:
        return info.etag == multipart_etag([p.etag for p in parts])
    return True


async def existing_object(ctx: Context, key: str) -> ObjectInfo | None:
    return await ctx.retry("head", lambda: ctx.objects.head_object(key))


async def already_complete(ctx: Context, key: str, parts: list[PartRecord]) -> bool:
    """The one "was it completed before?" check, used by finalize and reconcile alike."""
    info = await existing_object(ctx, key)
    return info is not None and matches(info, parts)


async def completed_from(
    ctx: Context, key: str, checkpointed: list[PartRecord]
) -> list[PartRecord] | None:
    """The parts an object already at ``key`` was completed from (a restart's "was it
    completed before?"), or None."""
    info = await existing_object(ctx, key)
    return made_of(info, checkpointed) if info is not None else None


def made_of(info: ObjectInfo, checkpointed: list[PartRecord]) -> list[PartRecord] | None:
    """The first N of the ``checkpointed`` parts, if they make the object ``info``.

    Finalize completes from parts 1..N, and the checkpoint may hold more: a truncation
    keeps only the contiguous run, a verification drops the parts past a shorter file.
    N is the multipart ETag's part count (a plain ETag: the run whose sizes add up)."""
    run = contiguous({p.part_number: p for p in checkpointed})
    count = _etag_part_count(info.etag)
    if count is None:
        sizes = list(itertools.accumulate(p.size for p in run))
        count = sizes.index(info.size) + 1 if info.size in sizes else 0
    made = run[:count]
    return made if count and len(made) == count and matches(info, made) else None


def _etag_part_count(etag: str) -> int | None:
    _, dash, count = etag.strip('"').rpartition("-")
    return int(count) if dash and count.isdigit() else None


class FileChanged(Exception):
    """The file is no longer as it was when the parts were verified (before a Complete)."""


async def complete_parts(
    ctx: Context, record: StreamRecord, parts: list[PartRecord],
    *, still: Callable[[], bool] | None = None,
) -> None:
    """Complete the object from ``parts`` (at least one). ``UploadNotFound`` when S3 forgot
    the upload and the object is not already the one these parts make. ``still``: asked
    before every attempt, ``FileChanged`` when it says the parts are no longer the file's
    (an outage can hold a Complete back for as long as a recorder keeps writing)."""
    key = record.key
    upload_id = record.upload_id
    if not parts or upload_id is None:
        raise UploadNotFound("no parts, or parts without an upload id")
    pairs = [(p.part_number, p.etag) for p in parts]
    if ctx.guard is not None:
        await ctx.guard(record)
    whole = await full_object_checksum(ctx, parts)
    # Only where the store verifies it: S3 then refuses a Complete whose parts are not the
    # bytes these records were hashed from (§2.22).
    checksum = {"crc64nvme_b64": whole} if whole else {}

    async def attempt() -> str:
        if still is not None and not still():
            raise FileChanged
        return await ctx.objects.complete_multipart(key, upload_id, pairs, **checksum)

    try:
        await ctx.retry("complete", attempt)
    except UploadNotFound:
        # Completed before (a crash or a lost response after Complete), or the upload expired.
        if await already_complete(ctx, key, parts):
            log.info(logs.COMPLETE_CONFIRMED, key=key)
            return
        raise


async def full_object_checksum(ctx: Context, parts: list[PartRecord]) -> str:
    """The base64 CRC64NVME of the object ``parts`` make, for a store that verifies it at
    Complete; "" otherwise (or when a part's record has none: adopted by its MD5, or from
    before the checksum existed; S3 still keeps the CRC64NVME it combined itself)."""
    if await ctx.objects.part_checksum() != "crc64nvme":
        return ""
    whole = combined_crc64nvme(parts)
    return crc64_b64(whole) if whole is not None else ""


async def put_empty(ctx: Context, record: StreamRecord) -> None:
    """An empty recording: S3 has no empty multipart object, so write it directly."""
    if record.upload_id is not None:
        await abort_quietly(ctx, record.key, record.upload_id)
    key, ctype = record.key, content_type(record.rel_path)
    await ctx.retry("put_object", lambda: ctx.objects.put_object(key, b"", ctype))


@runtime_checkable
class RangeReader(Protocol):
    async def get_range(self, key: str, start: int, end: int) -> bytes: ...


_HASH_CHUNK = 8 * 1024 * 1024


async def sha256_of_object(ctx: Context, key: str, size: int) -> str:
    """SHA-256 of what S3 holds, for when the file no longer has the bytes: read in
    8 MiB ranges, so a 50 GB object costs 8 MiB of memory, never the object."""
    objects = ctx.objects
    if not isinstance(objects, RangeReader):
        # Only a store that holds its objects in memory anyway (the tests' MemoryObjectStore).
        data = await ctx.retry("get", lambda: objects.get_object(key))
        return hashlib.sha256(data).hexdigest()
    sha = hashlib.sha256()
    for start in range(0, size, _HASH_CHUNK):
        end = min(size, start + _HASH_CHUNK)
        sha.update(await ctx.retry("get", _ranged(objects, key, start, end)))
    return sha.hexdigest()


def _ranged(objects: RangeReader, key: str, start: int, end: int) -> Callable[[], Awaitable[bytes]]:
    return lambda: objects.get_range(key, start, end)
