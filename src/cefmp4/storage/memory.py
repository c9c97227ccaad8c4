"""An in-memory ObjectStore that behaves like S3 where cefmp4 depends on it (unit tests).

It enforces what S3 enforces (Content-MD5, the 5 MiB minimum of non-last parts, ETags of
completed parts, unknown upload ids) and computes ETags as S3 does, so code that passes
against it is not relying on leniency a real server lacks. ``fail_next`` injects errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import crc32c

from cefmp4.errors import CefmpError, ContentChanged, PermanentError, UploadNotFound
from cefmp4.storage import MultipartUpload, ObjectInfo, PartBody, UploadedPart

__all__ = ["MIN_PART_SIZE", "MemoryObjectStore", "StoredObject", "multipart_etag"]

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's minimum size of every part but the last
MAX_PART_SIZE = 5 * 1024 * 1024 * 1024
MAX_PART_NUMBER = 10_000


def multipart_etag(part_md5_hexes: list[str]) -> str:
    """S3's ETag of a multipart object: MD5 of the concatenated binary part MD5s, ``-<n>``."""
    digest = hashlib.md5(b"".join(bytes.fromhex(h) for h in part_md5_hexes))
    return f"{digest.hexdigest()}-{len(part_md5_hexes)}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    body: bytes
    etag: str
    content_type: str


@dataclass(slots=True)
class _Upload:
    key: str
    content_type: str
    initiated: datetime
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # number -> body, md5


class MemoryObjectStore:
    """The ObjectStore Protocol in a dict. ``objects`` and ``calls`` are for assertions."""

    # What ``part_checksum()`` answers: a store that takes x-amz-checksum-crc32c, or
    # (set "md5") one that only takes Content-MD5.
    part_checks: Literal["md5", "crc32c"] = "crc32c"

    def __init__(
        self, bucket: str = "test-bucket", *, bucket_exists: bool = True, can_create: bool = True
    ) -> None:
        self.bucket = bucket
        self.bucket_exists = bucket_exists
        self.can_create = can_create
        self.objects: dict[str, StoredObject] = {}
        self.calls: Counter[str] = Counter()
        self._uploads: dict[str, _Upload] = {}
        self._failures: dict[str, list[CefmpError]] = {}

    def __repr__(self) -> str:
        return f"MemoryObjectStore(bucket={self.bucket!r})"

    # -- test hooks ---------------------------------------------------------------------------

    def fail_next(self, operation: str, error: CefmpError, times: int = 1) -> None:
        """Make the next ``times`` calls of method ``operation`` raise ``error``."""
        self._failures.setdefault(operation, []).extend([error] * times)

    async def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        await asyncio.sleep(0)  # a real store yields to the loop; so does this one
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)
        if not self.bucket_exists and operation not in ("ping", "ensure_bucket"):
            raise PermanentError(f"{operation} failed: NoSuchBucket ({self.bucket})")

    def _upload(self, operation: str, key: str, upload_id: str) -> _Upload:
        upload = self._uploads.get(upload_id)
        if upload is None or upload.key != key:
            raise UploadNotFound(f"{operation} failed: NoSuchUpload ({upload_id})")
        return upload

    # -- the Protocol -------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._enter("ping")
        if not self.bucket_exists:
            raise PermanentError(f"bucket {self.bucket!r} does not exist")

    async def ensure_bucket(self) -> None:
        await self._enter("ensure_bucket")
        if self.bucket_exists:
            return
        if not self.can_create:
            raise PermanentError(
                f"bucket {self.bucket!r} does not exist and cannot be created: access denied"
            )
        self.bucket_exists = True

    async def create_multipart(self, key: str, content_type: str) -> str:
        await self._enter("create_multipart")
        upload_id = uuid.uuid4().hex
        self._uploads[upload_id] = _Upload(key, content_type, datetime.now(UTC))
        return upload_id

    async def part_checksum(self) -> Literal["md5", "crc32c"]:
        return self.part_checks

    async def upload_part(
        self,
        key: str,
        upload_id: str,
        part_number: int,
        body: PartBody,
        md5_b64: str = "",
        *,
        crc32c_b64: str = "",
    ) -> str:
        await self._enter("upload_part")
        if not isinstance(body, bytes):
            body.seek(0)
            body = body.read()
        upload = self._upload("UploadPart", key, upload_id)
        if not 1 <= part_number <= MAX_PART_NUMBER:
            raise PermanentError(f"UploadPart failed: InvalidArgument (part {part_number})")
        if len(body) > MAX_PART_SIZE:
            raise PermanentError("UploadPart failed: EntityTooLarge")
        # The check S3 makes: the CRC32C where this store takes it, else Content-MD5.
        crc = bool(crc32c_b64) and (not md5_b64 or self.part_checks == "crc32c")
        try:
            expected = base64.b64decode(crc32c_b64 if crc else md5_b64, validate=True)
        except binascii.Error:
            expected = b""
        if len(expected) != (4 if crc else 16):
            raise PermanentError("UploadPart failed: InvalidDigest")
        digest = hashlib.md5(body).digest()
        if (crc32c.crc32c(body).to_bytes(4, "big") if crc else digest) != expected:
            raise ContentChanged("UploadPart failed: BadDigest")  # as s3._map_error maps it
        etag = digest.hex()
        upload.parts[part_number] = (body, etag)
        return etag

    async def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        await self._enter("list_parts")
        upload = self._upload("ListParts", key, upload_id)
        return [
            UploadedPart(number, len(body), etag)
            for number, (body, etag) in sorted(upload.parts.items())
        ]

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> str:
        await self._enter("complete_multipart")
        upload = self._upload("CompleteMultipartUpload", key, upload_id)
        if not parts:
            raise PermanentError("CompleteMultipartUpload failed: MalformedXML (no parts)")
        numbers = [number for number, _ in parts]
        if numbers != sorted(set(numbers)):
            raise PermanentError("CompleteMultipartUpload failed: InvalidPartOrder")
        bodies: list[bytes] = []
        for index, (number, etag) in enumerate(parts):
            stored = upload.parts.get(number)
            if stored is None or stored[1] != etag.strip('"'):
                raise PermanentError(f"CompleteMultipartUpload failed: InvalidPart ({number})")
            if index < len(parts) - 1 and len(stored[0]) < MIN_PART_SIZE:
                raise PermanentError(
                    f"CompleteMultipartUpload failed: EntityTooSmall (part {number})"
                )
            bodies.append(stored[0])
        result = multipart_etag([etag.strip('"') for _, etag in parts])
        self.objects[key] = StoredObject(b"".join(bodies), result, upload.content_type)
        del self._uploads[upload_id]
        return result

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._enter("abort_multipart")
        self._upload("AbortMultipartUpload", key, upload_id)
        del self._uploads[upload_id]

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        await self._enter("list_multipart_uploads")
        found = [
            MultipartUpload(upload.key, upload_id, upload.initiated)
            for upload_id, upload in self._uploads.items()
            if upload.key.startswith(prefix)
        ]
        return sorted(found, key=lambda u: (u.key, u.initiated))

    async def head_object(self, key: str) -> ObjectInfo | None:
        await self._enter("head_object")
        stored = self.objects.get(key)
        if stored is None:
            return None
        return ObjectInfo(len(stored.body), stored.etag, stored.content_type)

    async def list_keys(self, prefix: str) -> list[str]:
        await self._enter("list_keys")
        return sorted(k for k in self.objects if k.startswith(prefix))

    async def put_object(self, key: str, body: bytes, content_type: str) -> None:
        await self._enter("put_object")
        etag = hashlib.md5(body).hexdigest()
        self.objects[key] = StoredObject(bytes(body), etag, content_type)

    async def get_object(self, key: str) -> bytes:
        await self._enter("get_object")
        stored = self.objects.get(key)
        if stored is None:
            raise PermanentError(f"GetObject failed: NoSuchKey ({key})")
        return stored.body
