"""Object storage: the few S3 calls cefmp4 makes, behind one Protocol.

``s3`` talks to a real S3-compatible server through aiobotocore; ``memory`` keeps objects
in a dict for unit tests. Both are held to ``tests/contract/test_object_store.py``.
A store is bound to one bucket.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol


class BinaryIOLike(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...
    def __len__(self) -> int: ...


# A part body: the bytes, or a readable, seekable, sized file-like object that the store
# streams from (``cefmp4.streams.source.FileRange``), so a part never has to sit in memory whole.
# Such a body may also offer ``read_cached(size) -> bytes-like | None``: bytes the page
# cache holds, read without blocking (None: not cached), so the store needs no thread.
PartBody = bytes | BinaryIOLike
# "crc64nvme": the store verifies a whole-object CRC64NVME (§2.22): uploads declare it at
# Create (FULL_OBJECT), parts carry their own, Complete the combination.
PartCheck = Literal["md5", "crc32c", "crc64nvme"]


def sends_crc32c(md5_b64: str, crc32c_b64: str, verified: PartCheck) -> bool:
    """Which of ``upload_part``'s checks goes on the wire: the CRC32C where the store
    verifies it (or when it is the only one given), else Content-MD5."""
    return bool(crc32c_b64) and (not md5_b64 or verified == "crc32c")


@dataclass(frozen=True, slots=True)
class UploadedPart:
    part_number: int
    size: int
    etag: str  # without quotes
    modified: datetime | None = None  # when S3 got it (ListParts' LastModified), if known


@dataclass(frozen=True, slots=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: datetime  # timezone-aware


@dataclass(frozen=True, slots=True)
class ListedObject:
    key: str
    size: int
    modified: datetime | None = None  # LastModified


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str  # without quotes; "<md5-of-md5s>-<n>" for multipart objects
    content_type: str | None = None


class ObjectStore(Protocol):
    """Errors: ``TransientError`` (retry), ``PermanentError``, ``UploadNotFound``."""

    bucket: str

    async def ping(self) -> None:
        """Raise unless the bucket answers (HeadBucket)."""

    async def ensure_bucket(self) -> None:
        """Create the bucket if missing; ``PermanentError`` if that is not permitted."""

    async def create_multipart(self, key: str, content_type: str) -> str:
        """Start a multipart upload; returns its upload id."""

    async def part_checksum(self) -> PartCheck:
        """The per-part check this store verifies: "crc32c" (``x-amz-checksum-crc32c``)
        where it does, else "md5" (Content-MD5). Decided once per store."""

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        body: PartBody,
        md5_b64: str = "",
        *,
        crc32c_b64: str = "",
        crc64nvme_b64: str = "",
    ) -> str:
        """Upload one part with the check ``part_checksum()`` names (``crc32c_b64`` or
        ``md5_b64``; give at least that one; ``sends_crc32c`` picks; a "crc64nvme" store
        takes ``crc64nvme_b64`` where given); returns its ETag (without quotes).

        ``ContentChanged`` when the bytes that arrived do not match it."""

    async def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        """Every part S3 holds for the upload, ascending part number, one per number."""

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]], *, crc64nvme_b64: str = ""
    ) -> str:
        """Complete with (part_number, etag) pairs in ascending order; returns the ETag.
        ``crc64nvme_b64``: the whole object's CRC64NVME, which the store verifies
        (``PermanentError`` when the parts do not make it); given only to a "crc64nvme"
        store."""

    async def abort_multipart(self, key: str, upload_id: str) -> None: ...

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        """Every in-progress upload whose key starts with ``prefix``."""

    async def head_object(self, key: str) -> ObjectInfo | None:
        """Size and ETag of a complete object, or None if it does not exist."""

    async def list_objects(self, prefix: str) -> list[ListedObject]:
        """Key, size and LastModified of every complete object under ``prefix``."""

    async def delete_object(self, key: str) -> None:
        """Delete one object (only cefmp4's own bookkeeping under ``.cefmp4/``: never a video
        or its metadata)."""

    async def list_keys(self, prefix: str) -> list[str]:
        """Keys of every complete object whose key starts with ``prefix``."""

    async def put_object(self, key: str, body: bytes, content_type: str) -> None: ...

    async def get_object(self, key: str) -> bytes:
        """The whole object (used for small objects and verification)."""
