"""The S3 transport against a real server (SeaweedFS): how part bodies travel and fail."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import AsyncIterator

import pytest

from cefmp4.errors import SourceError, TransientError
from cefmp4.storage.s3 import S3ObjectStore
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
