"""Bring a checkpointed stream back in line with what S3 really holds (SPEC §2.6).

A part that reached S3 but not the checkpoint (a crash between UploadPart and the write) is
adopted when its size and MD5 match the local bytes; a part S3 lost is uploaded again; an
upload S3 no longer knows is either already complete (HeadObject) or restarted from byte 0.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace

import structlog

from cefmp4 import logs
from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.errors import SourceError, UploadNotFound
from cefmp4.parts import PartSchedule
from cefmp4.pipeline import Context
from cefmp4.upload import hash_range

log = structlog.get_logger("cefmp4.resume")


async def reconcile(
    ctx: Context, record: StreamRecord, parts: list[PartRecord], fd: int | None
) -> tuple[StreamRecord, list[PartRecord]]:
    """The record and the parts to resume with. ``fd`` None: the file is gone."""
    if record.upload_id is None:
        return record, parts
    upload_id = record.upload_id
    try:
        remote = await ctx.retry(
            "list_parts", lambda: ctx.objects.list_parts(record.key, upload_id)
        )
    except UploadNotFound:
        info = await ctx.retry("head", lambda: ctx.objects.head_object(record.key))
        if info is not None and info.size == sum(p.size for p in parts):
            # Completed before the crash; finalize confirms it and writes the metadata.
            return record, parts
        log.warning(logs.UPLOAD_RESTARTED, reason="upload id unknown to S3", parts_lost=len(parts))
        record = replace(record, upload_id=None)
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.delete_parts(record.stream_id))
        await ctx.retry("checkpoint", lambda: ctx.checkpoints.put_stream(record))
        return record, []

    schedule = PartSchedule(record.part_size, record.max_parts)
    known = {p.part_number: p for p in parts}
    on_s3 = {p.part_number: p for p in remote}
    kept: dict[int, PartRecord] = {}
    for number, part in known.items():
        s3_part = on_s3.get(number)
        if s3_part is not None and s3_part.etag == part.etag:
            kept[number] = part
        else:
            log.warning(logs.PART_MISSING, part_number=number)
    for number, s3_part in sorted(on_s3.items()):
        if number in kept or fd is None:
            continue
        offset, size = schedule.offset_of(number), schedule.size_of(number)
        if s3_part.size != size:
            continue  # a tail uploaded by an interrupted finalize; finalize redoes it
        try:
            md5_hex, _ = await asyncio.to_thread(hash_range, fd, offset, size)
        except SourceError:
            continue
        if md5_hex != s3_part.etag:
            continue
        adopted = PartRecord(number, offset, size, s3_part.etag, md5_hex, ctx.clock())
        await ctx.retry("checkpoint", _put_part(ctx, record.stream_id, adopted))
        kept[number] = adopted
        log.info(logs.PART_ADOPTED, part_number=number, size=size)
    return record, [kept[n] for n in sorted(kept)]


def _put_part(ctx: Context, stream_id: str, part: PartRecord) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.checkpoints.put_part(stream_id, part)
