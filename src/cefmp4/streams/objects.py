"""A stream's object in S3: CompleteMultipartUpload made safe to repeat (confirmed by
HeadObject when S3 no longer knows the upload id, never overwriting an object already
there), the one HeadObject of a stream's key, the empty object, the SHA-256 of an object."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.core.containers import content_type
from cefmp4.core.ending import Found, ObjectAt, judge_object
from cefmp4.core.hashing import combined_crc64nvme, crc64_b64
from cefmp4.core.keys import metadata_key
from cefmp4.core.salvage import marker_key, salvaged_document
from cefmp4.runtime import logs
from cefmp4.runtime.errors import UploadNotFound
from cefmp4.streams.context import Context
from cefmp4.streams.salvage import DocumentTooLarge, read_document

log = structlog.get_logger("cefmp4.streams.objects")


async def abort_quietly(ctx: Context, key: str, upload_id: str) -> None:
    with contextlib.suppress(UploadNotFound):  # already gone: nothing to clean up
        await ctx.retry("abort", lambda: ctx.objects.abort_multipart(key, upload_id))


async def object_at(ctx: Context, record: StreamRecord, parts: Sequence[PartRecord]) -> ObjectAt:
    """HeadObject of a stream's key, judged against its checkpointed ``parts``: the one
    place a stream asks S3 what stands at its key (``core.ending.judge_object`` decides).
    An object its own first parts make may still be a salvager's (a salvage that took them
    while this stream was away): its marker or metadata tells, and is asked only then."""
    key = record.key
    head = await ctx.retry("head", lambda: ctx.objects.head_object(key))
    at = judge_object(head, parts)
    upload_id = record.upload_id
    if at.found is Found.OURS and upload_id is not None and await _salvaged(ctx, key, upload_id):
        return judge_object(head, parts, salvaged=True)
    return at


async def _salvaged(ctx: Context, key: str, upload_id: str) -> bool:
    """A salvage of ``upload_id`` is under way (its marker) or done (the metadata at the key
    says "salvaged": only salvage writes that). Metadata that does not parse proves nothing."""
    marker = marker_key(ctx.config.key_prefix, upload_id)
    if await ctx.retry("head", lambda: ctx.objects.head_object(marker)) is not None:
        return True
    try:
        raw = await read_document(ctx.objects, ctx.retry, metadata_key(key))
    except DocumentTooLarge:
        return False  # not a document cefmp4 writes: it proves nothing
    return salvaged_document(raw)


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
        if (await object_at(ctx, record, parts)).made_of_all(parts):
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
