"""Where the in-memory store must behave like S3 behind aiohttp, beyond the shared contract.

The simulator (tests/sim) trusts these behaviours; each one hid a real bug while the store
was lenient (issue #10, hole 3: a body read up front hides read errors and rewrites).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from cefmp4.runtime.errors import (
    ContentChanged,
    PermanentError,
    SourceError,
    UploadNotFound,
)
from cefmp4.storage.memory import BODY_BLOCK, MIN_PART_SIZE, MemoryObjectStore, multipart_etag
from cefmp4.streams.source import FileRange, hash_range

KEY = "streams/s/a.mp4"


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(4 * BODY_BLOCK + 123)
    path = tmp_path / "src.mp4"
    path.write_bytes(data)
    return path, data


async def test_body_is_read_while_the_request_runs(source: tuple[Path, bytes]) -> None:
    """Bytes rewritten after the first block went out are the bytes that arrive."""
    path, data = source
    rewritten = data[:BODY_BLOCK] + b"\x00" * (len(data) - BODY_BLOCK)
    blocks: list[int] = []

    async def rewrite_after_first_block(key: str, number: int, sent: int) -> None:
        blocks.append(sent)
        if sent == BODY_BLOCK:
            path.write_bytes(rewritten)

    store = MemoryObjectStore(body_pause=rewrite_after_first_block)
    upload_id = await store.create_multipart(KEY, "video/mp4")
    fd = os.open(path, os.O_RDONLY)
    try:
        etag = await store.upload_part(
            KEY, upload_id, 1, FileRange(fd, 0, len(data)), md5_b64(rewritten)
        )
        # With the MD5 of the bytes hashed before sending, S3 answers BadDigest.
        path.write_bytes(data)
        with pytest.raises(ContentChanged, match="BadDigest"):
            await store.upload_part(KEY, upload_id, 2, FileRange(fd, 0, len(data)), md5_b64(data))
    finally:
        os.close(fd)
    assert etag == hashlib.md5(rewritten).hexdigest()
    assert blocks[:5] == [BODY_BLOCK * n for n in range(1, 5)] + [len(data)]
    assert [p.part_number for p in await store.list_parts(KEY, upload_id)] == [1]


async def test_a_source_read_error_surfaces_mid_call_as_a_source_error(
    source: tuple[Path, bytes],
) -> None:
    """Mid-call, after the first block went out, and as the S3 adapter reports it: the file
    failed, not the network (tests/integration/test_s3_transport.py shows the real one)."""
    path, data = source
    store = MemoryObjectStore()
    upload_id = await store.create_multipart(KEY, "video/mp4")
    fd = os.open(path, os.O_RDONLY)
    try:
        _, b64 = hash_range(fd, 0, len(data))
        os.truncate(path, BODY_BLOCK)  # the recorder truncates while the part is sent
        with pytest.raises(SourceError):
            await store.upload_part(KEY, upload_id, 1, FileRange(fd, 0, len(data)), b64)
    finally:
        os.close(fd)
    assert await store.list_parts(KEY, upload_id) == []


@pytest.mark.parametrize("number", [0, 10_001])
async def test_part_numbers_outside_1_to_10000_are_refused(number: int) -> None:
    store = MemoryObjectStore()
    upload_id = await store.create_multipart(KEY, "video/mp4")
    with pytest.raises(PermanentError, match="InvalidArgument"):
        await store.upload_part(KEY, upload_id, number, b"x", md5_b64(b"x"))


async def test_complete_wants_ascending_part_numbers() -> None:
    store = MemoryObjectStore()
    upload_id = await store.create_multipart(KEY, "video/mp4")
    big = b"a" * MIN_PART_SIZE
    one = await store.upload_part(KEY, upload_id, 1, big, md5_b64(big))
    two = await store.upload_part(KEY, upload_id, 2, b"b", md5_b64(b"b"))
    with pytest.raises(PermanentError, match="InvalidPartOrder"):
        await store.complete_multipart(KEY, upload_id, [(2, two), (1, one)])
    assert await store.complete_multipart(KEY, upload_id, [(1, one), (2, two)]) == (
        multipart_etag([one, two])
    )


@pytest.mark.parametrize("flavour", ["minio", "aws"])
async def test_a_repeated_complete_answers_like_the_server(flavour: str) -> None:
    store = MemoryObjectStore(complete_again="aws" if flavour == "aws" else "minio")
    upload_id = await store.create_multipart(KEY, "video/mp4")
    etag = await store.upload_part(KEY, upload_id, 1, b"x", md5_b64(b"x"))
    first = await store.complete_multipart(KEY, upload_id, [(1, etag)])
    if flavour == "minio":
        with pytest.raises(UploadNotFound, match="NoSuchUpload"):
            await store.complete_multipart(KEY, upload_id, [(1, etag)])
    else:
        assert await store.complete_multipart(KEY, upload_id, [(1, etag)]) == first
        with pytest.raises(PermanentError, match="InvalidPart"):
            await store.complete_multipart(KEY, upload_id, [(1, "0" * 32)])
    # Either way the upload is gone for parts.
    with pytest.raises(UploadNotFound):
        await store.upload_part(KEY, upload_id, 2, b"y", md5_b64(b"y"))


async def test_an_upload_purged_while_its_body_is_sent_is_not_found(
    source: tuple[Path, bytes],
) -> None:
    path, data = source
    store = MemoryObjectStore()
    upload_id = await store.create_multipart(KEY, "video/mp4")

    async def purge(key: str, number: int, sent: int) -> None:
        store.expire_upload(upload_id)

    store.body_pause = purge
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(UploadNotFound):
            await store.upload_part(KEY, upload_id, 1, FileRange(fd, 0, len(data)), md5_b64(data))
    finally:
        os.close(fd)
    assert store.open_uploads() == []
    assert store.expire_upload(upload_id) is False


async def test_ranged_get_like_s3() -> None:
    store = MemoryObjectStore()
    await store.put_object(KEY, b"0123456789", "video/mp4")
    assert await store.get_range(KEY, 2, 5) == b"234"
    assert await store.get_range(KEY, 8, 20) == b"89"  # S3 clips a range past the end
    with pytest.raises(PermanentError, match="InvalidRange"):
        await store.get_range(KEY, 10, 12)
    with pytest.raises(PermanentError, match="NoSuchKey"):
        await store.get_range("streams/missing.mp4", 0, 1)
