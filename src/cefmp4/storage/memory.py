"""An in-memory ObjectStore that behaves like S3 where cefmp4 depends on it.

Faithful on purpose, so code that passes against it is not relying on leniency a real
server lacks:

* a part body that is a file-like object (``cefmp4.streams.upload.FileRange``) is read in 64 KiB
  blocks *during* the request, each block on the executor, as aiohttp's payload writer
  does: a read error surfaces mid-call (as the transport error the aiohttp stack turns it
  into), and bytes that change between hashing and sending are the bytes that arrive;
* S3's part rules: part numbers 1..10,000, Content-MD5 checked (BadDigest →
  ``ContentChanged``), every part but the last ≥ 5 MiB at Complete (EntityTooSmall), the
  ETags at Complete must be those of uploaded parts (InvalidPart), ascending order;
* a repeated Complete of a finished upload answers as MinIO does (NoSuchUpload →
  ``UploadNotFound``, the default) or as AWS does (success, same ETag): ``complete_again``.

``fail_next`` injects errors in unit tests; the simulator wraps the store instead
(``tests/sim/faults.py``) and uses ``body_pause`` and ``expire_upload``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import crc32c

from cefmp4.core.hashing import crc64_b64, crc64nvme, multipart_etag
from cefmp4.core.parts import MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE
from cefmp4.runtime.errors import (
    CefmpError,
    ContentChanged,
    PermanentError,
    UploadNotFound,
)
from cefmp4.storage import (
    ListedObject,
    MultipartUpload,
    ObjectInfo,
    PartBody,
    PartCheck,
    UploadedPart,
    sends_crc32c,
)
from cefmp4.storage.pacing import pace
from cefmp4.storage.wire import BODY_BLOCK, send_body

__all__ = [
    "BODY_BLOCK",
    "MIN_PART_SIZE",
    "MemoryObjectStore",
    "StoredObject",
    "multipart_etag",
]

# (key, part_number, bytes read so far) -> awaited between body blocks (slow bodies).
BodyPause = Callable[[str, int, int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class StoredObject:
    body: bytes
    etag: str
    content_type: str
    modified: datetime | None = None


@dataclass(slots=True)
class _Upload:
    key: str
    content_type: str
    initiated: datetime
    parts: dict[int, tuple[bytes, str]] = field(default_factory=dict)  # number -> body, md5
    added: dict[int, datetime] = field(default_factory=dict)  # number -> LastModified


@dataclass(frozen=True, slots=True)
class _Completed:
    key: str
    parts: tuple[tuple[int, str], ...]
    etag: str


class MemoryObjectStore:
    """The ObjectStore Protocol in a dict. ``objects``, ``calls`` and ``touched`` are for
    assertions (``touched``: every key a write, Complete or Abort named)."""

    # What ``part_checksum()`` answers: a store that takes x-amz-checksum-crc32c, or
    # (set "md5") one that only takes Content-MD5.
    part_checks: PartCheck = "crc32c"

    def __init__(
        self,
        bucket: str = "test-bucket",
        *,
        bucket_exists: bool = True,
        can_create: bool = True,
        complete_again: Literal["minio", "aws"] = "minio",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        body_pause: BodyPause | None = None,
        min_part_size: int = MIN_PART_SIZE,
        body_block: int = BODY_BLOCK,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        # ``min_part_size``, ``body_block`` and ``new_id``: the simulator scales S3 down
        # (64 KiB parts run the same rules a thousand times faster) and seeds the ids.
        self.bucket = bucket
        self.bucket_exists = bucket_exists
        self.can_create = can_create
        self.complete_again = complete_again
        self.clock = clock
        self.body_pause = body_pause
        self.min_part_size = min_part_size
        self.body_block = body_block
        self._new_id = new_id
        self.objects: dict[str, StoredObject] = {}
        self.calls: Counter[str] = Counter()
        self.touched: set[str] = set()
        self._uploads: dict[str, _Upload] = {}
        self._completed: dict[str, _Completed] = {}
        self._failures: dict[str, list[CefmpError]] = {}

    def __repr__(self) -> str:
        return f"MemoryObjectStore(bucket={self.bucket!r})"

    # -- test hooks ---------------------------------------------------------------------------

    def fail_next(self, operation: str, error: CefmpError, times: int = 1) -> None:
        """Make the next ``times`` calls of method ``operation`` raise ``error``."""
        self._failures.setdefault(operation, []).extend([error] * times)

    def expire_upload(self, upload_id: str) -> bool:
        """Forget an in-progress upload as a lifecycle rule or MinIO's stale-upload purge
        does; False if there was none."""
        return self._uploads.pop(upload_id, None) is not None

    def open_uploads(self) -> list[MultipartUpload]:
        """Every in-progress upload (no call counted, no fault injected)."""
        return [
            MultipartUpload(upload.key, upload_id, upload.initiated)
            for upload_id, upload in self._uploads.items()
        ]

    async def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        await asyncio.sleep(0)  # a real store yields to the loop; so does this one
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)
        if not self.bucket_exists and operation not in ("ping", "ensure_bucket"):
            raise PermanentError(f"{operation} failed: NoSuchBucket ({self.bucket})")

    async def _pause(self, key: str, part_number: int, sent: int) -> None:
        if self.body_pause is not None:
            await self.body_pause(key, part_number, sent)

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
        self.touched.add(key)
        upload_id = self._new_id()
        self._uploads[upload_id] = _Upload(key, content_type, self.clock())
        return upload_id

    async def part_checksum(self) -> PartCheck:
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
        crc64nvme_b64: str = "",
    ) -> str:
        await self._enter("upload_part")
        self.touched.add(key)
        # S3 checks the request line and headers before it reads the body.
        self._upload("UploadPart", key, upload_id)
        if not 1 <= part_number <= MAX_PARTS:
            raise PermanentError(f"UploadPart failed: InvalidArgument (part {part_number})")
        if len(body) > MAX_PART_SIZE:
            raise PermanentError("UploadPart failed: EntityTooLarge")
        if self.part_checks == "crc64nvme" and crc64nvme_b64:
            # A full-object upload's parts carry their CRC64NVME (§2.22); checked as S3 does.
            crc32c_b64, md5_b64 = "", ""
            expected64 = crc64nvme_b64
        else:
            expected64 = ""
        # The check S3 makes: the CRC32C where this store takes it, else Content-MD5.
        crc = sends_crc32c(md5_b64, crc32c_b64, self.part_checks)
        try:
            expected = base64.b64decode(
                expected64 or (crc32c_b64 if crc else md5_b64), validate=True)
        except binascii.Error:
            expected = b""
        if len(expected) != (8 if expected64 else 4 if crc else 16):
            raise PermanentError("UploadPart failed: InvalidDigest")
        if isinstance(body, bytes):
            await pace(len(body))
            data = bytes(body)
        else:
            data = await send_body(
                body, self.body_block, lambda sent: self._pause(key, part_number, sent)
            )
        # The upload may have been aborted or purged while the body was on the wire.
        upload = self._upload("UploadPart", key, upload_id)
        digest = hashlib.md5(data).digest()
        got = (crc64nvme(data).to_bytes(8, "big") if expected64
               else crc32c.crc32c(data).to_bytes(4, "big") if crc else digest)
        if got != expected:
            raise ContentChanged("UploadPart failed: BadDigest")  # as s3._map_error maps it
        etag = digest.hex()
        upload.parts[part_number] = (data, etag)
        upload.added[part_number] = self.clock()
        return etag

    async def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        await self._enter("list_parts")
        upload = self._upload("ListParts", key, upload_id)
        return [
            UploadedPart(number, len(body), etag, upload.added.get(number))
            for number, (body, etag) in sorted(upload.parts.items())
        ]

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]], *, crc64nvme_b64: str = ""
    ) -> str:
        await self._enter("complete_multipart")
        self.touched.add(key)
        wanted = tuple((number, etag.strip('"')) for number, etag in parts)
        done = self._completed.get(upload_id)
        if done is not None and self.complete_again == "aws" and done.key == key:
            if done.parts != wanted:
                raise PermanentError("CompleteMultipartUpload failed: InvalidPart")
            return done.etag
        upload = self._upload("CompleteMultipartUpload", key, upload_id)
        if not parts:
            raise PermanentError("CompleteMultipartUpload failed: MalformedXML (no parts)")
        numbers = [number for number, _ in parts]
        if numbers != sorted(set(numbers)):
            raise PermanentError("CompleteMultipartUpload failed: InvalidPartOrder")
        bodies: list[bytes] = []
        for index, (number, etag) in enumerate(wanted):
            stored = upload.parts.get(number)
            if stored is None or stored[1] != etag:
                raise PermanentError(f"CompleteMultipartUpload failed: InvalidPart ({number})")
            if index < len(parts) - 1 and len(stored[0]) < self.min_part_size:
                raise PermanentError(
                    f"CompleteMultipartUpload failed: EntityTooSmall (part {number})"
                )
            bodies.append(stored[0])
        result = multipart_etag([etag for _, etag in wanted])
        if crc64nvme_b64 and crc64_b64(crc64nvme(b"".join(bodies))) != crc64nvme_b64:
            # What S3 answers a full-object checksum that its parts do not make (§2.22).
            raise PermanentError("CompleteMultipartUpload failed: BadDigest (CRC64NVME)")
        self.objects[key] = StoredObject(b"".join(bodies), result, upload.content_type)
        del self._uploads[upload_id]
        self._completed[upload_id] = _Completed(key, wanted, result)
        return result

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        await self._enter("abort_multipart")
        self.touched.add(key)
        self._upload("AbortMultipartUpload", key, upload_id)
        del self._uploads[upload_id]

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        await self._enter("list_multipart_uploads")
        found = [u for u in self.open_uploads() if u.key.startswith(prefix)]
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
        self.touched.add(key)
        await pace(len(body))  # UPLOAD_BWLIMIT counts PutObject bodies too
        etag = hashlib.md5(body).hexdigest()
        self.objects[key] = StoredObject(bytes(body), etag, content_type, self.clock())

    async def get_object(self, key: str) -> bytes:
        await self._enter("get_object")
        stored = self.objects.get(key)
        if stored is None:
            raise PermanentError(f"GetObject failed: NoSuchKey ({key})")
        return stored.body

    async def list_objects(self, prefix: str) -> list[ListedObject]:
        await self._enter("list_objects")
        return [ListedObject(k, len(o.body), o.modified)
                for k, o in sorted(self.objects.items()) if k.startswith(prefix)]

    async def delete_object(self, key: str) -> None:
        await self._enter("delete_object")
        self.objects.pop(key, None)

    async def presign_get(self, key: str, expires_s: int) -> str | None:
        return None  # nothing outside this process can read it

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (a ranged GetObject, as ``S3ObjectStore.get_range``)."""
        await self._enter("get_range")
        stored = self.objects.get(key)
        if stored is None:
            raise PermanentError(f"GetObject failed: NoSuchKey ({key})")
        if not 0 <= start < max(1, len(stored.body)) or end <= start:
            raise PermanentError(f"GetObject failed: InvalidRange (bytes={start}-{end - 1})")
        return stored.body[start:end]
