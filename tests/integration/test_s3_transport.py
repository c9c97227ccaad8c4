"""The S3 transport against a real server (SeaweedFS): how part bodies travel and fail."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from collections.abc import AsyncIterator

import crc32c
import pytest
import structlog

from cefmp4.runtime.errors import ContentChanged, SourceError, TransientError
from cefmp4.storage.s3 import S3ObjectStore, open_s3_store, probing
from tests.support.seaweed import SeaweedS3, s3_store_for

MiB = 1024 * 1024


def md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


class FailingBody(io.RawIOBase):
    """A seekable part body whose reads fail once ``fail_at`` bytes were read."""

    def __init__(self, data: bytes, fail_at: int, error: Exception) -> None:
        super().__init__()
        self.data, self.fail_at, self.error = data, fail_at, error
        self.pos = 0
        self.reads = 0

    def __len__(self) -> int:
        return len(self.data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = offset if whence == io.SEEK_SET else len(self.data) + offset
        return self.pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        if self.pos >= self.fail_at:
            raise self.error
        n = min(len(buffer), self.fail_at - self.pos, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@pytest.fixture
async def store(s3_server: SeaweedS3, s3_bucket: str) -> AsyncIterator[S3ObjectStore]:
    async with s3_store_for(s3_server, s3_bucket) as opened:
        yield opened


@pytest.mark.parametrize(
    "error",
    [SourceError("file ended at byte 3145728"), OSError(5, "Input/output error")],
    ids=["source-error", "eio"],
)
async def test_a_body_read_error_is_a_source_error_not_an_outage(
    store: S3ObjectStore, error: Exception
) -> None:
    """#10 item 3: a read error of the local file must not look like S3 being down."""
    data = os.urandom(6 * MiB)
    key = "streams/body-error.mp4"
    upload_id = await store.create_multipart(key, "video/mp4")
    body = FailingBody(data, fail_at=3 * MiB, error=error)
    with pytest.raises(SourceError) as caught:
        await store.upload_part(key, upload_id, 1, body, md5_b64(data))
    assert not isinstance(caught.value, TransientError)
    if isinstance(error, SourceError):
        assert caught.value is error
    else:
        assert "Input/output error" in str(caught.value)
    # Nothing was stored under the part number, and the upload is still usable.
    assert await store.list_parts(key, upload_id) == []
    etag = await store.upload_part(key, upload_id, 1, data, md5_b64(data))
    assert etag == hashlib.md5(data).hexdigest()
    await store.abort_multipart(key, upload_id)


async def test_a_body_shorter_than_its_length_is_a_source_error(store: S3ObjectStore) -> None:
    """A file that ends before the part does (truncated after the size was taken)."""

    class Short(FailingBody):
        def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
            if self.pos >= self.fail_at:
                return 0
            return super().readinto(buffer)

    data = os.urandom(2 * MiB)
    key = "streams/short.mp4"
    upload_id = await store.create_multipart(key, "video/mp4")
    with pytest.raises(SourceError, match="ended"):
        await store.upload_part(
            key, upload_id, 1, Short(data, MiB, OSError()), md5_b64(data)
        )
    await store.abort_multipart(key, upload_id)


def crc_b64(body: bytes) -> str:
    return base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()


async def test_seaweedfs_is_probed_to_check_crc32c(s3_server: SeaweedS3, s3_bucket: str) -> None:
    """SeaweedFS verifies x-amz-checksum-crc32c: parts carry it instead of Content-MD5."""
    client = s3_server.boto_client()
    async with open_s3_store(
        bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, access_key_id="test",
        secret_access_key="test", probe_prefix="streams/",
    ) as store:
        assert await store.part_checksum() == "crc32c"
        # The probe left no upload behind, and nothing outside the prefix.
        assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
        data = os.urandom(5 * MiB)
        key = "streams/crc.mp4"
        upload_id = await store.create_multipart(key, "video/mp4")
        # A wrong CRC32C is refused by the server, as a changed body (re-read, resend).
        with pytest.raises(ContentChanged):
            await store.upload_part(key, upload_id, 1, data, crc32c_b64=crc_b64(data + b"x"))
        sent: list[dict[str, str]] = []
        store._client.meta.events.register(
            "before-send.s3.UploadPart",
            lambda request, **_: sent.append({k.lower(): v for k, v in request.headers.items()}),
        )
        etag = await store.upload_part(key, upload_id, 1, data, crc32c_b64=crc_b64(data))
        assert etag == hashlib.md5(data).hexdigest()  # the ETag is still the part's MD5
        # Our CRC32C and its algorithm header; no Content-MD5, no botocore trailer.
        assert sent[-1]["x-amz-checksum-crc32c"] in (crc_b64(data), crc_b64(data).encode())
        assert "x-amz-sdk-checksum-algorithm" in sent[-1]
        assert not {"content-md5", "x-amz-trailer", "content-encoding"} & sent[-1].keys()
        tail = b"tail"
        etag2 = await store.upload_part(key, upload_id, 2, tail, crc32c_b64=crc_b64(tail))
        await store.complete_multipart(key, upload_id, [(1, etag), (2, etag2)])
        assert await store.get_object(key) == data + tail


async def test_without_a_prefix_to_probe_parts_carry_content_md5(
    store: S3ObjectStore,
) -> None:
    assert await store.part_checksum() == "md5"
    key = "streams/md5.mp4"
    upload_id = await store.create_multipart(key, "video/mp4")
    data = b"x" * 1000
    with pytest.raises(ContentChanged):
        await store.upload_part(
            key, upload_id, 1, data, md5_b64(b"other"), crc32c_b64=crc_b64(data)
        )
    await store.abort_multipart(key, upload_id)


class _IgnoresChecksums:
    """A client whose store takes any body whatever checksum it declares (as moto does)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def list_multipart_uploads(self, **kw: object) -> dict[str, object]:
        self.calls.append("list")
        return {}

    async def create_multipart_upload(self, **kw: object) -> dict[str, str]:
        self.calls.append("create")
        return {"UploadId": "u"}

    async def upload_part(self, **kw: object) -> dict[str, str]:
        self.calls.append("part")
        return {"ETag": '"e"'}

    async def abort_multipart_upload(self, **kw: object) -> None:
        self.calls.append("abort")


async def test_a_store_that_ignores_crc32c_gets_content_md5() -> None:
    client = _IgnoresChecksums()
    store = S3ObjectStore(client, "b", probe_prefix="streams/")  # type: ignore[arg-type]
    assert await store.part_checksum() == "md5"
    assert await store.part_checksum() == "md5"
    assert client.calls == ["list", "create", "part", "abort"]  # probed once


class _SlowCreate(_IgnoresChecksums):
    """CreateMultipartUpload takes effect at once; its answer arrives 0.2 s later."""

    async def create_multipart_upload(self, **kw: object) -> dict[str, str]:
        self.calls.append("create")
        await asyncio.sleep(0.2)
        return {"UploadId": "u"}


@pytest.mark.parametrize("close_wait", [2.0, 0.05])
async def test_a_store_closed_while_its_probe_creates_an_upload_aborts_it_or_says_why(
    close_wait: float,
) -> None:
    # A second instance refused at start-up closed its store while the probe's Create was
    # in flight: cancelled there, the probe left the upload open. Given the time, it ends
    # and aborts; a store too slow for the bound is cancelled (the next start aborts it).
    client = _SlowCreate()
    store = S3ObjectStore(client, "b", probe_prefix="streams/")  # type: ignore[arg-type]
    with structlog.testing.capture_logs() as logs:
        async with probing(store, close_wait=close_wait):
            await asyncio.sleep(0.05)  # the probe is inside Create now
    assert client.calls[:2] == ["list", "create"]
    assert ("abort" in client.calls) is (close_wait > 0.2)
    assert "part" not in client.calls  # closing: the probe only cleans up
    assert not logs  # a process on its way out (e.g. refused at start-up) says nothing more


class CachedBody(FailingBody):
    """A body that offers page-cache reads; ``cold`` reads answer None (not cached)."""

    def __init__(self, data: bytes, fail_at: int, error: Exception, cold: bool) -> None:
        super().__init__(data, fail_at, error)
        self.cold = cold
        self.cached_reads = 0

    def read_cached(self, size: int) -> bytes | None:
        self.cached_reads += 1
        return None if self.cold else self.read(size)


@pytest.mark.parametrize("cold", [False, True], ids=["cached", "cold"])
async def test_a_body_with_page_cache_reads(store: S3ObjectStore, cold: bool) -> None:
    data = os.urandom(3 * MiB + 5)
    key = "streams/cached.mp4"
    upload_id = await store.create_multipart(key, "video/mp4")
    body = CachedBody(data, len(data), OSError(), cold)
    etag = await store.upload_part(key, upload_id, 1, body, md5_b64(data))
    assert etag == hashlib.md5(data).hexdigest()
    assert body.cached_reads >= 4  # one try per 1 MiB read; cold ones fall back to a thread
    failing = CachedBody(data, MiB, SourceError("gone"), cold)
    with pytest.raises(SourceError, match="gone"):
        await store.upload_part(key, upload_id, 2, failing, md5_b64(data))
    await store.abort_multipart(key, upload_id)


async def test_a_probe_before_the_bucket_exists_is_tried_again(s3_server: SeaweedS3) -> None:
    """`run` opens the store before ensure_bucket: a probe that cannot start decides nothing."""
    bucket = f"late-{os.urandom(6).hex()}"
    async with open_s3_store(
        bucket=bucket, endpoint_url=s3_server.endpoint_url, access_key_id="test",
        secret_access_key="test", probe_prefix="streams/",
    ) as store:
        assert await store.part_checksum() == "md5"  # NoSuchBucket: for now
        await store.ensure_bucket()
        assert await store.part_checksum() == "crc32c"
        assert await store.part_checksum() == "crc32c"
    s3_server.boto_client().delete_bucket(Bucket=bucket)  # the probe left it empty


class _CannotCreate(_IgnoresChecksums):
    async def create_multipart_upload(self, **kw: object) -> dict[str, str]:
        self.calls.append("create")
        raise ConnectionResetError("refused")


async def test_a_probe_that_never_starts_settles_on_content_md5() -> None:
    client = _CannotCreate()
    store = S3ObjectStore(client, "b", probe_prefix="streams/")  # type: ignore[arg-type]
    assert [await store.part_checksum() for _ in range(5)] == ["md5"] * 5
    assert client.calls == ["list", "create"] * 3  # three tries, then Content-MD5 for good


async def test_a_probe_left_open_by_a_killed_process_is_aborted_by_the_next(
    s3_server: SeaweedS3, s3_bucket: str
) -> None:
    client = s3_server.boto_client()
    left = client.create_multipart_upload(
        Bucket=s3_bucket, Key="streams/.cefmp4-check/checksum-killed"
    )["UploadId"]
    mine = client.create_multipart_upload(Bucket=s3_bucket, Key="streams/cam/a.mp4")["UploadId"]
    async with open_s3_store(
        bucket=s3_bucket, endpoint_url=s3_server.endpoint_url, access_key_id="test",
        secret_access_key="test", probe_prefix="streams/",
    ) as store:
        assert await store.part_checksum() == "crc32c"
    open_ids = {u["UploadId"] for u in client.list_multipart_uploads(Bucket=s3_bucket).get(
        "Uploads", [])}
    assert left not in open_ids
    assert open_ids == {mine}  # nothing but the probes is touched
