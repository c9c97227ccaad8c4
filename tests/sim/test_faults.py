"""The fault wrappers do what the simulator's invariants assume they do."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from pathlib import Path

import pytest

from cefmp4.checkpoint import PartRecord
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.runtime.errors import ContentChanged, TransientError, UploadNotFound
from cefmp4.storage.memory import MemoryObjectStore
from tests.sim.faults import (
    Fault,
    FaultPlan,
    FaultyCheckpointStore,
    FaultyObjectStore,
    Life,
    Shadow,
)

KEY = "streams/s/a.mp4"


def plan(**s3: float) -> FaultPlan:
    return FaultPlan(random.Random(0), {Fault[k]: v for k, v in s3.items()}, {}, s3_latency=0)


def md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


async def test_a_lost_response_means_the_request_happened() -> None:
    inner = MemoryObjectStore()
    store = FaultyObjectStore(inner, plan(LOST=1.0), Life())
    with pytest.raises(TransientError, match="after sending"):
        await store.put_object(KEY, b"x", "video/mp4")
    assert inner.objects[KEY].body == b"x"


async def test_an_error_means_it_did_not() -> None:
    inner = MemoryObjectStore()
    store = FaultyObjectStore(inner, plan(ERROR=1.0), Life())
    with pytest.raises(TransientError, match="503"):
        await store.put_object(KEY, b"x", "video/mp4")
    assert KEY not in inner.objects


async def test_purge_and_bad_digest_on_upload_part() -> None:
    inner = MemoryObjectStore()
    upload_id = await inner.create_multipart(KEY, "video/mp4")
    with pytest.raises(ContentChanged):
        await FaultyObjectStore(inner, plan(BAD_DIGEST=1.0), Life()).upload_part(
            KEY, upload_id, 1, b"x", md5(b"x")
        )
    purged: list[str] = []
    store = FaultyObjectStore(inner, plan(PURGE=1.0), Life())
    store.on_purge = purged.append
    with pytest.raises(UploadNotFound):
        await store.upload_part(KEY, upload_id, 1, b"x", md5(b"x"))
    assert purged == [upload_id]
    assert inner.open_uploads() == []


async def test_a_crashed_process_reaches_nothing() -> None:
    inner = MemoryObjectStore()
    life = Life()
    store = FaultyObjectStore(inner, plan(), life)
    life.alive = False
    with pytest.raises(asyncio.CancelledError):
        await store.put_object(KEY, b"x", "video/mp4")
    assert KEY not in inner.objects


async def test_the_shadow_follows_what_the_store_holds(tmp_path: Path) -> None:
    shadow = Shadow()
    store_plan = FaultPlan(random.Random(0), {}, {Fault.LOST: 1.0}, store_latency=0)
    async with open_sqlite_store(tmp_path) as sqlite:
        store = FaultyCheckpointStore(sqlite, store_plan, Life(), shadow)
        part = PartRecord(1, 0, 10, "e", "m", 0.0)
        with pytest.raises(TransientError, match="lost"):
            await store.put_part("s1", part)
        assert await sqlite.get_parts("s1") == [part]
    assert shadow.parts == {"s1": {1: part}}
