"""The orphan sweeper (SPEC §2.13): abort multipart uploads under the prefix that no
checkpoint knows, once older than the grace period. Nothing outside the prefix is touched."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog

from cefmp4.runtime import logs
from cefmp4.runtime.errors import UploadNotFound
from cefmp4.storage import MultipartUpload
from cefmp4.streams.context import Context
from cefmp4.streams.reconcile import unknown_uploads

log = structlog.get_logger("cefmp4.runtime.housekeeping")


async def sweep(ctx: Context, grace_seconds: float) -> list[MultipartUpload]:
    """Abort unknown uploads under the prefix older than ``grace_seconds``."""
    aborted: list[MultipartUpload] = []
    now = ctx.clock.time()
    for upload in await unknown_uploads(ctx):
        age = max(0.0, now - upload.initiated.timestamp())
        if age < grace_seconds:
            continue
        key, upload_id = upload.key, upload.upload_id
        try:
            await ctx.retry("abort", _abort(ctx, key, upload_id))
        except UploadNotFound:
            continue
        aborted.append(upload)
        ctx.metrics.orphan_uploads_aborted.inc()
        log.warning(logs.ORPHAN_ABORTED, key=key, upload_id=upload_id, age_h=round(age / 3600, 1))
    return aborted


async def sweep_forever(ctx: Context, grace_seconds: float, interval: float) -> None:
    """Sweep now and then every ``interval`` seconds. An error ends the task: the task
    supervisor logs it, reports it to readiness and restarts it with backoff."""
    while True:
        await sweep(ctx, grace_seconds)
        await ctx.clock.sleep(interval)


def _abort(ctx: Context, key: str, upload_id: str) -> Callable[[], Awaitable[None]]:
    return lambda: ctx.objects.abort_multipart(key, upload_id)
