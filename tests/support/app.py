"""Running the real App in-process against real servers, and reading back what it wrote."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from cefmp4.config.settings import Settings, load_settings
from cefmp4.core.keys import metadata_key
from cefmp4.runtime.app import App
from cefmp4.storage import MultipartUpload, ObjectStore
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3, s3_store_for

__all__ = [
    "checkpoint_kind",
    "make_settings",
    "read_metadata",
    "running_app",
    "sha256_file",
    "wait_for",
    "wait_metadata",
]


@pytest.fixture(params=["sqlite", "redis"])
def checkpoint_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def make_settings(
    *,
    tmp_path: Path,
    s3: SeaweedS3,
    bucket: str,
    redis: RedisServer | None = None,
    **overrides: Any,
) -> Settings:
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    values: dict[str, Any] = {
        "watch_dir": watch,
        "state_dir": tmp_path / "state",
        "s3_endpoint_url": s3.endpoint_url,
        "s3_access_key_id": "cefmp4-test-key",
        "s3_secret_access_key": "cefmp4-test-secret",
        "s3_region_name": "us-east-1",
        "s3_bucket_name": bucket,
        "chunk_size_mb": 5,
        "max_inflight_mb": 40,
        "stream_timeout_seconds": 1.5,
        "poll_interval_seconds": 0.25,
        "prom_port": 0,
        "log_format": "console",
    }
    if redis is not None:
        values["redis_url"] = redis.url
        values["redis_key_prefix"] = f"test-{uuid.uuid4().hex[:8]}:"
    values.update(overrides)
    return load_settings(**values)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[App]:
    stop = asyncio.Event()
    app = App(settings)
    task = asyncio.create_task(app.run(stop))
    ready = asyncio.create_task(app.ready.wait())
    await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises the start-up error
        raise AssertionError("app stopped during start-up")
    assert app.ready.is_set(), "app not ready within 60 s"
    try:
        yield app
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], *, timeout: float = 60, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


async def find_metadata(store: ObjectStore, prefix: str, rel_path: str) -> list[str]:
    """Metadata keys for ``rel_path`` (one per stream that completed for it)."""
    uploads: list[str] = []
    suffix = f"/{rel_path}.metadata.json"
    for key in await _list_keys(store, prefix):
        if key.endswith(suffix):
            uploads.append(key)
    return uploads


async def _list_keys(store: ObjectStore, prefix: str) -> list[str]:
    lister = getattr(store, "list_keys", None)
    if lister is None:
        raise RuntimeError("the test object store cannot list keys")
    keys: list[str] = await lister(prefix)
    return keys


async def wait_metadata(
    s3: SeaweedS3, bucket: str, rel_path: str, *, prefix: str = "streams/", count: int = 1,
    timeout: float = 90,
) -> list[dict[str, Any]]:
    """Wait until ``count`` metadata documents exist for ``rel_path``; return them."""
    async with s3_store_for(s3, bucket) as store:
        found: list[str] = []

        async def ready() -> bool:
            nonlocal found
            found = await find_metadata(store, prefix, rel_path)
            return len(found) >= count

        await wait_for(ready, timeout=timeout, what=f"{count} metadata for {rel_path}")
        return [json.loads(await store.get_object(k)) for k in sorted(found)]


async def read_metadata(s3: SeaweedS3, bucket: str, video_key: str) -> dict[str, Any]:
    async with s3_store_for(s3, bucket) as store:
        doc: dict[str, Any] = json.loads(await store.get_object(metadata_key(video_key)))
        return doc


# The S3 store's checksum probe makes and aborts an upload under the key prefix at start-up;
# a test that looks for the recording's upload must not take the probe's for it.
PROBE_MARK = "/.cefmp4-check/"


def recording_uploads(uploads: list[MultipartUpload]) -> list[MultipartUpload]:
    """The open uploads that are recordings' (not the checksum probe's)."""
    return [u for u in uploads if PROBE_MARK not in u.key]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
