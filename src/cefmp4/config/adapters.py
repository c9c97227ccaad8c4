"""The concrete adapters, opened from the settings: the S3 store, the checkpoint store,
and the pipeline's values. Used by ``app`` (the composition root) and the one-shot
commands (``status``, ``check``)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from cefmp4.checkpoint import CheckpointStore
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.config.settings import Settings
from cefmp4.streams.context import PipelineConfig

if TYPE_CHECKING:
    from cefmp4.storage.protection import ObjectProtection
    from cefmp4.storage.s3 import S3ObjectStore


@asynccontextmanager
async def open_checkpoints(
    settings: Settings, *, read_only: bool = False, fenced: bool = False
) -> AsyncIterator[CheckpointStore]:
    """Redis when REDIS_URL is set, else the embedded store. ``read_only`` skips SQLite's
    single-instance lock so ``status`` and ``check`` work beside a running daemon. ``fenced``
    (the pipeline, Redis only): every stream write must carry its lease's fencing token."""
    url = settings.redis_url.get_secret_value()
    if url:
        # Imported here: redis-py costs ~60 ms of start-up that SQLite users need not pay.
        from cefmp4.checkpoint.redis import open_redis_store
        from cefmp4.streams.lease import lease_namespace

        # Lease keys carry the deployment (WATCH_DIR): two deployments sharing one Redis
        # never contend for each other's files.
        async with open_redis_store(
            url, settings.redis_key_prefix, lease_namespace=lease_namespace(settings.watch_dir),
            unfenced_writes="refuse" if fenced else "allow",
        ) as redis_store:
            yield redis_store
    else:
        async with open_sqlite_store(settings.state_dir, read_only=read_only) as sqlite_store:
            yield sqlite_store


def open_objects(settings: Settings, **options: Any) -> AbstractAsyncContextManager[S3ObjectStore]:
    """The S3 store the settings describe (``options``: pool size, timeouts, ...)."""
    # Imported here: the aiobotocore/aiohttp stack is most of a command's start-up; only
    # what talks to S3 pays for it (`status --watch` reads the checkpoint store alone).
    from cefmp4.storage.s3 import open_s3_store

    return open_s3_store(
        bucket=settings.s3_bucket_name,
        endpoint_url=settings.s3_endpoint_url,
        access_key_id=settings.s3_access_key_id.get_secret_value(),
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        region=settings.s3_region_name,
        probe_prefix=settings.s3_key_prefix,  # where "which checksum?" may be asked, once
        protection=protection_of(settings),
        full_object=settings.s3_full_object_checksum,
        **options,
    )


def protection_of(settings: Settings) -> ObjectProtection:
    """Object Lock and SSE of every object written, from the settings (§2.22). Salvage
    and any other writer take the same value, so every object gets the same protection."""
    from cefmp4.storage.protection import ObjectProtection

    return ObjectProtection(
        lock_mode=settings.s3_object_lock_mode,
        retain_days=settings.s3_object_lock_retain_days,
        legal_hold=settings.s3_object_lock_legal_hold,
        sse=settings.s3_sse,
        kms_key_id=settings.s3_sse_kms_key_id,
    )


def pipeline_config(settings: Settings) -> PipelineConfig:
    return PipelineConfig(
        watch_dir=settings.watch_dir.resolve(),
        key_prefix=settings.s3_key_prefix,
        part_size=settings.part_size_bytes,
        max_parts=settings.max_parts,
        stream_timeout=settings.stream_timeout_seconds,
        poll_interval=settings.poll_interval_seconds,
        parts_in_flight=settings.upload_concurrency + 1,
        extensions=settings.extensions,
        rpo_seconds=settings.rpo_seconds,
        key_template=settings.key_template,
        # Not the default INSTANCE_ID (it has the pid): a key must not change on a restart.
        instance=settings.instance_id or socket.gethostname(),
    )
