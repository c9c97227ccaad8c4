"""``cefmp4 verify``'s read of a real S3 object (SeaweedFS): ``S3ObjectStore.open_range``
streams each range, and verify hashes it as it arrives (issue 23)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from cefmp4.cli import verify as verify_mod
from cefmp4.cli.verify import StreamingStore, read_digests
from cefmp4.core.hashing import crc64_b64, crc64nvme
from cefmp4.runtime.errors import CefmpError, PermanentError
from cefmp4.storage.s3 import S3ObjectStore, open_s3_store
from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024
KEY = "streams/cam1/a.mp4"


@pytest.fixture
async def store(s3_server: SeaweedS3, s3_bucket: str) -> AsyncIterator[S3ObjectStore]:
    async with open_s3_store(
        bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, access_key_id="test",
        secret_access_key="test", region="us-east-1",
    ) as opened:
        yield opened


async def test_an_object_read_in_streamed_ranges_has_its_digests(
    store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify_mod, "RANGE", MiB)  # several ranges, some requested ahead
    data = os.urandom(5 * MiB + 333)
    await store.put_object(KEY, data, "video/mp4")
    assert isinstance(store, StreamingStore)
    seen: list[int] = []
    digests = await read_digests(store, KEY, len(data), seen.append)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.crc64nvme == crc64_b64(crc64nvme(data))
    assert sum(seen) == len(data)


async def test_an_object_read_ahead_has_its_digests(
    store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read counts as network-bound: after the first 256 KiB the ranges ahead are
    downloaded at once (``_Range.read_ahead``), and the digests are the same."""
    monkeypatch.setattr(verify_mod, "RANGE", MiB)
    monkeypatch.setattr(verify_mod, "READ", 64 * 1024)
    monkeypatch.setattr(verify_mod, "NETWORK_BOUND", 1 << 40)
    data = os.urandom(6 * MiB + 17)
    await store.put_object(KEY, data, "video/mp4")
    digests = await read_digests(store, KEY, len(data))
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.crc64nvme == crc64_b64(crc64nvme(data))


async def test_a_range_past_the_end_of_the_object_is_an_error(
    store: S3ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object is shorter than its size said (it changed since): S3 clips the last
    range, and verify says so instead of hashing fewer bytes."""
    monkeypatch.setattr(verify_mod, "RANGE", MiB)
    data = os.urandom(2 * MiB + 10)
    await store.put_object(KEY, data, "video/mp4")
    with pytest.raises(CefmpError, match=f"short range at byte {2 * MiB}"):
        await read_digests(store, KEY, len(data) + 5)


async def test_a_missing_object_is_a_mapped_error(store: S3ObjectStore) -> None:
    with pytest.raises(PermanentError, match="NoSuchKey"):
        await store.open_range("streams/cam1/none.mp4", 0, 10)


async def test_a_body_read_in_pieces_is_the_range(store: S3ObjectStore) -> None:
    data = os.urandom(3 * MiB)
    await store.put_object(KEY, data, "video/mp4")
    async with await store.open_range(KEY, 100, 2 * MiB + 7) as body:
        assert body.length == 2 * MiB + 7 - 100
        got = b"".join([chunk async for chunk in _chunks(body.read, 64 * 1024)])
    assert got == data[100:2 * MiB + 7]


async def _chunks(read: Callable[[int], Awaitable[bytes]], size: int) -> AsyncIterator[bytes]:
    while chunk := await read(size):
        assert len(chunk) <= size
        yield chunk
