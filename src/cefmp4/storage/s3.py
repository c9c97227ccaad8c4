"""ObjectStore over aiobotocore: one client per process, errors mapped at this boundary.

botocore is configured on purpose (see ``_client_config``): its own retries are off because
``cefmp4.runtime.retry`` retries without limit and stacked retry layers multiply the waits; its
default CRC checksum headers and trailers are off because many S3-compatible stores reject
them. Every UploadPart carries an integrity check the server verifies instead: a CRC32C
(``x-amz-checksum-crc32c``, ~15x cheaper to compute than MD5) where a probe showed the store
checks it, else Content-MD5 (see ``S3ObjectStore.part_checksum``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final, Literal, cast

import botocore.exceptions as boto_errors  # type: ignore[import-untyped]
import structlog
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]

from cefmp4.core.hashing import crc64_b64, crc64nvme
from cefmp4.runtime import logs
from cefmp4.runtime.errors import ConfigError, PermanentError, TransientError
from cefmp4.storage import (
    ListedObject,
    MultipartUpload,
    ObjectInfo,
    PartBody,
    PartCheck,
    UploadedPart,
    sends_crc32c,
)
from cefmp4.storage.pacing import LANE
from cefmp4.storage.protection import ObjectProtection, is_bookkeeping
from cefmp4.storage.s3_body import PartPayload, RangeBody, crc32c_b64
from cefmp4.storage.s3_errors import ACCESS_CODES as _ACCESS_CODES
from cefmp4.storage.s3_errors import MAPPED as _MAPPED
from cefmp4.storage.s3_errors import NOT_FOUND_CODES as _NOT_FOUND_CODES
from cefmp4.storage.s3_errors import error_code as _error_code
from cefmp4.storage.s3_errors import map_error as _map_error
from cefmp4.storage.s3_errors import raise_mapped as _raise

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = ["S3ObjectStore", "crc32c_b64", "open_s3_store"]

log = structlog.get_logger("cefmp4.s3")

_DEFAULT_REGION = "us-east-1"

CHECKSUM_CHOSEN: Final = "s3_part_checksum"  # log event: which per-part check this store gets
_PROBE_TRIES: Final = 3  # probes that could not start before settling on Content-MD5
_PROBE_CLOSE_WAIT: Final = 2.0  # s a running probe may take to end when the store closes
# What stores answer when a body does not match its declared checksum.
_DIGEST_MISMATCH: Final = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"})


def _strip(etag: str) -> str:
    return etag.strip('"')


class S3ObjectStore:
    """The ObjectStore Protocol over one open aiobotocore S3 client, bound to one bucket."""

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        region: str = "",
        storage_class: str = "",
        checksum: Literal["auto", "md5", "crc32c", "crc64nvme"] = "auto",
        probe_prefix: str | None = None,
        protection: ObjectProtection | None = None,
        full_object: Literal["off", "auto"] = "off",
    ) -> None:
        self._client = client
        # Object Lock and SSE of every object written (cefmp4.storage.protection).
        self.protection = protection or ObjectProtection()
        self.bucket = bucket
        self._region = region
        self._storage_class = storage_class
        # "auto" needs somewhere inside the key prefix to probe; without one, Content-MD5.
        self._checksum: PartCheck | None = (
            "md5" if checksum == "auto" and probe_prefix is None
            else None if checksum == "auto" else checksum
        )
        self._probe_prefix = probe_prefix or ""
        # "auto": the probe first asks whether the store verifies a whole-object CRC64NVME.
        self._full_object = full_object
        self._probe_lock = asyncio.Lock()
        self._probes = 0
        self.closing = False  # set by ``probing`` on close: a running probe just cleans up

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r})"

    async def ping(self) -> None:
        if not await self._head_bucket():
            raise PermanentError(f"S3_BUCKET_NAME: bucket {self.bucket!r} does not exist")

    async def ensure_bucket(self) -> None:
        if not await self._head_bucket():
            await self._create_bucket()
            # Like watch_dir_created: a typo in S3_BUCKET_NAME must not pass unnoticed.
            log.warning(logs.BUCKET_CREATED, bucket=self.bucket,
                        hint="S3_BUCKET_NAME did not exist; check it for a typo")
        if self.protection.locks:
            await self.check_object_lock()

    async def check_object_lock(self) -> None:
        """``ConfigError`` naming the lock setting unless the bucket has Object Lock
        enabled: retention or legal hold asked for is never silently dropped."""
        setting = ("S3_OBJECT_LOCK_MODE" if self.protection.lock_mode
                   else "S3_OBJECT_LOCK_LEGAL_HOLD")
        try:
            response = await self._client.get_object_lock_configuration(Bucket=self.bucket)
        except boto_errors.ClientError as exc:
            code, status = _error_code(exc)
            if code == "ObjectLockConfigurationNotFoundError" or status == 404:
                raise ConfigError(setting, (
                    f"bucket {self.bucket!r} has no Object Lock; use a bucket created with "
                    "Object Lock enabled, or unset the Object Lock settings"
                )) from None
            if code in _ACCESS_CODES or status == 403:
                raise ConfigError(setting, (
                    f"cannot tell whether bucket {self.bucket!r} has Object Lock: access "
                    "denied; grant s3:GetBucketObjectLockConfiguration"
                )) from None
            _raise(exc, "GetObjectLockConfiguration")
        except _MAPPED as exc:
            _raise(exc, "GetObjectLockConfiguration")
        enabled = response.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled")
        if enabled != "Enabled":
            raise ConfigError(setting, f"bucket {self.bucket!r} has no Object Lock enabled")

    async def _head_bucket(self) -> bool:
        """HeadBucket: True if the bucket exists, False if it does not; access denied and
        everything else raised as mapped errors."""
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except boto_errors.ClientError as exc:
            code, status = _error_code(exc)
            if code in _NOT_FOUND_CODES or code == "NoSuchBucket" or status == 404:
                return False
            if code in _ACCESS_CODES or status == 403:
                raise PermanentError(self._access_denied()) from exc
            _raise(exc, "HeadBucket")
        except _MAPPED as exc:
            _raise(exc, "HeadBucket")
        return True

    def _access_denied(self) -> str:
        return (
            f"access denied to bucket {self.bucket!r}: check S3_ACCESS_KEY_ID / "
            "S3_SECRET_ACCESS_KEY and the bucket's policy"
        )

    async def _create_bucket(self) -> None:
        # A bucket created for locked objects is created with Object Lock (it cannot be
        # switched on later without AWS support on older buckets).
        lock: dict[str, Any] = (
            {"ObjectLockEnabledForBucket": True} if self.protection.locks else {}
        )
        try:
            # us-east-1 (botocore may call it aws-global) rejects an explicit constraint.
            if self._region not in ("", _DEFAULT_REGION, "aws-global"):
                await self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={
                        "LocationConstraint": cast("BucketLocationConstraintType", self._region)
                    },
                    **lock,
                )
            else:
                await self._client.create_bucket(Bucket=self.bucket, **lock)
        except boto_errors.ClientError as exc:
            code, status = _error_code(exc)
            if code == "BucketAlreadyOwnedByYou":
                return  # created concurrently by another instance of ours
            if code in _ACCESS_CODES or status == 403:
                raise PermanentError(
                    f"S3_BUCKET_NAME: bucket {self.bucket!r} does not exist and cannot be created: "
                    "access denied; create it or grant s3:CreateBucket"
                ) from exc
            if code == "BucketAlreadyExists":
                raise PermanentError(
                    f"bucket name {self.bucket!r} is taken by another account; "
                    "choose another S3_BUCKET_NAME"
                ) from exc
            _raise(exc, "CreateBucket")
        except _MAPPED as exc:
            _raise(exc, "CreateBucket")

    async def create_multipart(self, key: str, content_type: str) -> str:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if content_type:
            kwargs["ContentType"] = content_type
        if self._storage_class:
            kwargs["StorageClass"] = self._storage_class
        # Retention, legal hold and SSE from the first byte: the object Complete makes
        # carries what its upload was created with.
        kwargs.update(self.protection.create_args(key, time.time()))
        if not is_bookkeeping(key) and await self.part_checksum() == "crc64nvme":
            # The whole object's CRC64NVME, declared now and verified by S3 at Complete.
            kwargs.update(ChecksumAlgorithm="CRC64NVME", ChecksumType="FULL_OBJECT")
        try:
            response = await self._client.create_multipart_upload(**kwargs)
        except _MAPPED as exc:
            _raise(exc, "CreateMultipartUpload")
        return response["UploadId"]

    async def part_checksum(self) -> PartCheck:
        """The per-part integrity check this store verifies, probed once and remembered.

        The probe (a multipart upload under ``{prefix}.cefmp4-check/``, aborted at once)
        sends a part with a wrong CRC32C: a store that checks it refuses it, then takes the
        same part with the right one. A store that accepts the wrong one (it ignores the
        header) or rejects the header outright gets Content-MD5. When the probe cannot start
        (an outage, a bucket not created yet) the answer is "md5" for now and a later call
        probes again, up to ``_PROBE_TRIES`` times in all; then Content-MD5 for good.
        """
        if self._checksum is not None:
            return self._checksum
        async with self._probe_lock:
            if self._checksum is None:
                mode, definite = await self._probe_checksum()
                self._probes += 1
                if not definite and self._probes < _PROBE_TRIES:
                    return mode
                self._checksum = mode
                if not self.closing:  # a process on its way out says nothing more
                    log.info(CHECKSUM_CHOSEN, bucket=self.bucket, checksum=mode)
            return self._checksum

    async def _probe_checksum(self) -> tuple[PartCheck, bool]:
        probes = f"{self._probe_prefix}.cefmp4-check/checksum-"
        await self._abort_left_probes(probes)
        if self._full_object == "auto":
            verified, definite = await self._probe_full_object(probes)
            if verified:
                return "crc64nvme", True
            if not definite:
                return "md5", False
        return await self._probe_crc32c(probes)

    async def _probe_full_object(self, probes: str) -> tuple[bool, bool]:
        """(does the store verify a FULL_OBJECT CRC64NVME upload's part checksums, is the
        answer definite). A wrong CRC64NVME on the part must be refused, the right one
        taken. Complete is not probed (it would leave an object, undeletable in a locked
        bucket): a store that checks the parts of a FULL_OBJECT upload is taken to check
        the whole at Complete as well, as AWS and SeaweedFS 4.x do
        (``test_seaweedfs_verifies_the_full_object_checksum``)."""
        key = f"{probes}{uuid.uuid4().hex}"
        body = b"cefmp4 checksum probe"
        try:
            created = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC64NVME",
                ChecksumType="FULL_OBJECT", **self.protection.encryption_args(),
            )
        except boto_errors.ClientError as exc:
            # Refused outright (an unknown header): definite; anything else: maybe later.
            return False, not isinstance(_map_error(exc, "probe"), TransientError)
        except _MAPPED:
            return False, False
        upload_id = created["UploadId"]

        async def send(crc: int) -> None:
            await self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body,
                ChecksumCRC64NVME=crc64_b64(crc), ChecksumAlgorithm="CRC64NVME",
            )

        try:
            if self.closing:
                return False, False
            try:
                await send(crc64nvme(body) ^ 1)
                return False, True  # a wrong CRC64NVME was taken: not verified
            except boto_errors.ClientError as exc:
                if _error_code(exc)[0] not in _DIGEST_MISMATCH:
                    return False, not isinstance(_map_error(exc, "probe"), TransientError)
            await send(crc64nvme(body))
            return True, True
        except _MAPPED as exc:
            return False, not isinstance(_map_error(exc, "probe"), TransientError)
        finally:
            with contextlib.suppress(*_MAPPED):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )

    async def _probe_crc32c(self, probes: str) -> tuple[PartCheck, bool]:
        key = f"{probes}{uuid.uuid4().hex}"
        body = b"cefmp4 checksum probe"
        try:
            # With S3_SSE: a bucket policy that refuses unencrypted writes refuses probes too.
            created = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, **self.protection.encryption_args())
        except _MAPPED:
            return "md5", False  # says nothing about checksums: maybe the next time

        upload_id = created["UploadId"]

        async def send(crc: str) -> None:
            await self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body,
                ChecksumCRC32C=crc, ChecksumAlgorithm="CRC32C",
            )

        try:
            if self.closing:
                return "md5", False  # only the abort below is still due
            try:
                await send(crc32c_b64(body + b"!"))
                return "md5", True  # a wrong CRC32C was taken: the store does not check it
            except boto_errors.ClientError as exc:
                if _error_code(exc)[0] not in _DIGEST_MISMATCH:
                    return "md5", not isinstance(_map_error(exc, "probe"), TransientError)
            await send(crc32c_b64(body))
            return "crc32c", True
        except _MAPPED as exc:
            return "md5", not isinstance(_map_error(exc, "probe"), TransientError)
        finally:
            with contextlib.suppress(*_MAPPED):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )

    async def _abort_left_probes(self, prefix: str) -> None:
        """Probes a killed process left open (best effort: never more than a stray upload;
        one of a peer starting at this moment fails its probe, which it then tries again)."""
        with contextlib.suppress(*_MAPPED):
            response = await self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
            for upload in response.get("Uploads", []):
                if upload["Key"].startswith(prefix):
                    await self._client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )

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
        check: dict[str, str]
        mode = await self.part_checksum()
        if mode == "crc64nvme" and crc64nvme_b64:
            # A FULL_OBJECT upload's part carries its CRC64NVME: S3 refuses a CRC32C there.
            check = {"ChecksumCRC64NVME": crc64nvme_b64, "ChecksumAlgorithm": "CRC64NVME"}
        elif sends_crc32c(md5_b64, crc32c_b64, mode):
            # The algorithm header too: with it a flexible checksum stands in for Content-MD5
            # where S3 demands one (Object Lock buckets); probed with the same headers.
            check = {"ChecksumCRC32C": crc32c_b64, "ChecksumAlgorithm": "CRC32C"}
        elif md5_b64:
            check = {"ContentMD5": md5_b64}
        else:
            raise ValueError("upload_part needs md5_b64 or crc32c_b64")
        payload = PartPayload(body)
        try:
            response = await self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=part_number,
                Body=payload,
                ContentLength=len(body),
                **check,  # type: ignore[arg-type]
            )
        except _MAPPED as exc:
            if payload.error is not None:
                # The file, not S3, failed: retrying the upload cannot help.
                raise payload.error from exc
            _raise(exc, "UploadPart")
        return _strip(response["ETag"])

    async def list_parts(self, key: str, upload_id: str) -> list[UploadedPart]:
        # One entry per part number. AWS lists each number once. SeaweedFS (4.x) lists every
        # upload of a re-sent number until Complete, in no reliable order and with
        # LastModified in whole seconds: keep the latest LastModified, the first seen on a
        # tie. Callers verify size and MD5 against local bytes before adopting a part, so a
        # same-second tie that picks the older copy costs a re-upload, never a wrong object.
        newest: dict[int, tuple[datetime | None, UploadedPart]] = {}
        paginator = self._client.get_paginator("list_parts")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Key=key, UploadId=upload_id):
                for raw in page.get("Parts", []):
                    number = raw["PartNumber"]
                    modified = raw.get("LastModified")
                    part = UploadedPart(number, raw["Size"], _strip(raw["ETag"]), modified)
                    seen = newest.get(number)
                    if seen is None or (
                        modified is not None and seen[0] is not None and modified > seen[0]
                    ):
                        newest[number] = (modified, part)
        except _MAPPED as exc:
            _raise(exc, "ListParts")
        return [newest[number][1] for number in sorted(newest)]

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]], *, crc64nvme_b64: str = ""
    ) -> str:
        completed: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": f'"{_strip(etag)}"'} for number, etag in parts
        ]
        whole: dict[str, Any] = {}
        if crc64nvme_b64:
            whole = {"ChecksumCRC64NVME": crc64nvme_b64, "ChecksumType": "FULL_OBJECT"}
        try:
            response = await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": completed},
                **whole,
            )
        except boto_errors.ClientError as exc:
            if whole and _error_code(exc)[0] in _DIGEST_MISMATCH:
                # The parts S3 holds do not make the bytes we hashed: never retried, never
                # completed (the upload stays open for an operator, or salvage).
                raise PermanentError(
                    f"CompleteMultipartUpload of {key}: S3 refused the whole-object "
                    "CRC64NVME (the parts it holds are not the bytes cefmp4 hashed)"
                ) from exc
            _raise(exc, "CompleteMultipartUpload")
        except _MAPPED as exc:
            _raise(exc, "CompleteMultipartUpload")
        return _strip(response.get("ETag", ""))

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )
        except _MAPPED as exc:
            _raise(exc, "AbortMultipartUpload")

    async def list_multipart_uploads(self, prefix: str) -> list[MultipartUpload]:
        uploads: list[MultipartUpload] = []
        paginator = self._client.get_paginator("list_multipart_uploads")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                uploads.extend(
                    MultipartUpload(raw["Key"], raw["UploadId"], raw["Initiated"])
                    for raw in page.get("Uploads", [])
                    # Some stores ignore Prefix; the contract is "never outside the prefix".
                    if raw["Key"].startswith(prefix)
                )
        except _MAPPED as exc:
            _raise(exc, "ListMultipartUploads")
        return uploads

    async def head_object(self, key: str) -> ObjectInfo | None:
        try:
            response = await self._client.head_object(Bucket=self.bucket, Key=key)
        except boto_errors.ClientError as exc:
            code, status = _error_code(exc)
            if code in _NOT_FOUND_CODES or status == 404:
                return None
            _raise(exc, "HeadObject")
        except _MAPPED as exc:
            _raise(exc, "HeadObject")
        return ObjectInfo(
            response["ContentLength"], _strip(response["ETag"]), response.get("ContentType")
        )

    async def list_objects(self, prefix: str) -> list[ListedObject]:
        listed: list[ListedObject] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                listed.extend(ListedObject(raw["Key"], raw["Size"], raw.get("LastModified"))
                              for raw in page.get("Contents", []))
        except _MAPPED as exc:
            _raise(exc, "ListObjectsV2")
        return listed

    async def list_keys(self, prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(raw["Key"] for raw in page.get("Contents", []))
        except _MAPPED as exc:
            _raise(exc, "ListObjectsV2")
        return keys

    async def put_object(self, key: str, body: bytes, content_type: str) -> None:
        # Content-MD5 as on every UploadPart: with CRC checksums off (see _client_config),
        # it is the integrity check S3 requires for a bucket with Object Lock (400
        # otherwise), and a corrupted body fails as BadDigest instead of being stored.
        md5 = base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
        # With UPLOAD_BWLIMIT the body is paced as it is written, as a part's is (a tail
        # segment may be a part's worth); without, it goes as it always did.
        lane = LANE.get()
        payload: Any = PartPayload(body) if lane is not None and lane.pacer else body
        try:
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=payload, ContentType=content_type,
                ContentMD5=md5, ContentLength=len(body),
                **self.protection.put_args(key, time.time()),
            )
        except _MAPPED as exc:
            _raise(exc, "PutObject")

    async def get_object(self, key: str) -> bytes:
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        except _MAPPED as exc:
            _raise(exc, "GetObject")
        return data


    async def delete_object(self, key: str) -> None:
        """Delete one object (salvage's own bookkeeping under ``.cefmp4/``; never a video)."""
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except _MAPPED as exc:
            _raise(exc, "DeleteObject")

    async def presign_get(self, key: str, expires_s: int) -> str | None:
        """A GET URL of ``key`` valid for ``expires_s`` seconds (for ffprobe of an object)."""
        url: str = await self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s)
        return url

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of an object: hashing a large object in bounded chunks."""
        try:
            response = await self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        except _MAPPED as exc:
            _raise(exc, "GetObject")
        return data

    async def open_range(self, key: str, start: int, end: int) -> RangeBody:
        """Bytes ``[start, end)`` of an object as a stream: returns once the response's
        headers are in; its body is read by the caller (``RangeBody``), who closes it."""
        try:
            response = await self._client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{end - 1}"
            )
        except _MAPPED as exc:
            _raise(exc, "GetObject")
        return RangeBody(response["Body"], response["ContentLength"])


def _client_config(
    *, path_style: bool, max_pool_connections: int, connect_timeout: float, read_timeout: float
) -> Any:
    options: dict[str, Any] = {
        # cefmp4.runtime.retry retries transient errors without limit; botocore retrying underneath
        # would multiply the waits and hide failures from metrics.
        "retries": {"total_max_attempts": 1},
        # botocore >= 1.36 adds CRC32 checksum headers to every upload by default; many
        # S3-compatible stores reject them. Content-MD5 is sent explicitly instead.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "max_pool_connections": max_pool_connections,
        "connect_timeout": connect_timeout,
        "read_timeout": read_timeout,
    }
    # Every part carries Content-MD5, which already protects the body; SigV4 payload
    # signing would hash each part once more with SHA-256 (botocore does it on plain-http
    # endpoints). UNSIGNED-PAYLOAD is what botocore itself uses over https.
    s3: dict[str, Any] = {"payload_signing_enabled": False}
    if path_style:
        # Custom endpoints (MinIO, SeaweedFS, ...) rarely have wildcard DNS for buckets.
        s3["addressing_style"] = "path"
    options["s3"] = s3
    return AioConfig(**options)


@asynccontextmanager
async def open_s3_store(
    *,
    bucket: str,
    endpoint_url: str = "",
    access_key_id: str = "",
    secret_access_key: str = "",
    region: str = "",
    max_pool_connections: int = 16,
    storage_class: str = "",
    connect_timeout: float = 5,
    read_timeout: float = 60,
    checksum: Literal["auto", "md5", "crc32c", "crc64nvme"] = "auto",
    probe_prefix: str | None = None,
    protection: ObjectProtection | None = None,
    full_object: Literal["off", "auto"] = "off",
) -> AsyncIterator[S3ObjectStore]:
    """Open one S3 client for the lifetime of the block. Empty strings mean "not given".

    ``checksum``: the per-part integrity check; "auto" probes the store once, under
    ``probe_prefix`` (the key prefix), on first need, and without a prefix uses Content-MD5.
    """
    if bool(access_key_id) != bool(secret_access_key):
        missing = "S3_SECRET_ACCESS_KEY" if access_key_id else "S3_ACCESS_KEY_ID"
        raise ConfigError(missing, "set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither")
    resolved_region = region or (_DEFAULT_REGION if endpoint_url else "")
    config = _client_config(
        path_style=bool(endpoint_url),
        max_pool_connections=max_pool_connections,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
    )
    session = get_session()
    creator = session.create_client(
        "s3",
        region_name=resolved_region or None,
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key_id or None,
        aws_secret_access_key=secret_access_key or None,
        # Plain http has no certificates to check; skipping the CA bundle saves its load
        # (tens of ms) before the first request.
        verify=False if endpoint_url.lower().startswith("http://") else None,
        config=config,
    )
    async with creator as raw_client:
        client = cast("S3Client", raw_client)
        store = S3ObjectStore(
            client,
            bucket,
            region=resolved_region or str(client.meta.region_name or ""),
            storage_class=storage_class,
            checksum=checksum,
            probe_prefix=probe_prefix,
            protection=protection,
            full_object=full_object,
        )
        async with probing(store):
            yield store


@contextlib.asynccontextmanager
async def probing(
    store: S3ObjectStore, close_wait: float = _PROBE_CLOSE_WAIT
) -> AsyncIterator[None]:
    """Probe while the caller opens its other adapters and reads the first part: the
    answer is then ready when that part is hashed. A failed probe is only "md5 for now"
    (see part_checksum), so its outcome needs no handling here."""
    probe = asyncio.create_task(store.part_checksum(), name="s3-checksum-probe")
    try:
        yield
    finally:
        # Cancelled inside CreateMultipartUpload, the probe would leave that upload open
        # (a refused second instance did, in a test): let its few requests finish first,
        # within a bound, so a store that hangs cannot hold up the exit.
        store.closing = True
        await asyncio.wait({probe}, timeout=close_wait)
        probe.cancel()
        await asyncio.gather(probe, return_exceptions=True)
