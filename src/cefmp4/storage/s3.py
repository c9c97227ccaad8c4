"""ObjectStore over aiobotocore: one client per process, errors mapped at this boundary.

botocore is configured on purpose (see ``_client_config``): its own retries are off because
``cefmp4.retry`` retries without limit and stacked retry layers multiply the waits; CRC
checksum headers are sent only when an operation requires them because many S3-compatible
stores reject them; every UploadPart carries Content-MD5 instead.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn, cast

import aiohttp
import botocore.exceptions as boto_errors  # type: ignore[import-untyped]
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]

from cefmp4.errors import (
    CefmpError,
    ConfigError,
    ContentChanged,
    PermanentError,
    TransientError,
    UploadNotFound,
)
from cefmp4.storage import MultipartUpload, ObjectInfo, PartBody, UploadedPart

if TYPE_CHECKING:
    from types_aiobotocore_s3.client import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

__all__ = ["S3ObjectStore", "open_s3_store"]

_DEFAULT_REGION = "us-east-1"

# Error codes whose meaning does not depend on the HTTP status they arrive with.
_TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",  # the clock may be corrected (NTP) while we retry
        "InternalError",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BadDigest",  # the body was corrupted in transit; the caller re-reads and resends
        "XAmzContentSHA256Mismatch",
    }
)
_TRANSIENT_BOTOCORE = (
    boto_errors.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError, ...
    boto_errors.HTTPClientError,  # ConnectionClosedError, ReadTimeoutError, ...
    boto_errors.IncompleteReadError,
    boto_errors.FlexibleChecksumError,  # a response body corrupted in transit
)
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_ACCESS_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
    }
)


def _error_code(exc: boto_errors.ClientError) -> tuple[str, int]:
    response: dict[str, Any] = exc.response
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def _map_error(exc: BaseException, operation: str) -> CefmpError:
    """Classify a library error as cefmp4's own; messages name no credentials.

    Server messages are kept (they explain, e.g., which part is too small); botocore puts
    the access key id only in separate fields of the error document, never in ``Message``.
    """
    if isinstance(exc, boto_errors.ClientError):
        return _map_client_error(exc, operation)
    if isinstance(exc, _TRANSIENT_BOTOCORE):
        # Refused/reset connections, connect and read timeouts, truncated or corrupted bodies.
        return TransientError(f"{operation} failed: {exc}")
    if isinstance(exc, boto_errors.BotoCoreError):
        # NoCredentialsError, ParamValidationError, ...: configuration, not the network.
        return PermanentError(f"{operation} failed: {exc}")
    if isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError)):
        return TransientError(f"{operation} failed: {type(exc).__name__}: {exc}")
    return PermanentError(f"{operation} failed: {type(exc).__name__}: {exc}")


def _map_client_error(exc: boto_errors.ClientError, operation: str) -> CefmpError:
    code, status = _error_code(exc)
    message = str(exc.response.get("Error", {}).get("Message", "") or "")
    text = f"{operation} failed: {code or status}" + (f" ({message})" if message else "")
    if code == "NoSuchUpload":
        return UploadNotFound(text)
    if code == "BadDigest":
        return ContentChanged(text)
    if code in _TRANSIENT_CODES or status >= 500 or status in (408, 429):
        return TransientError(text)
    # AccessDenied, InvalidAccessKeyId, SignatureDoesNotMatch, NoSuchBucket, InvalidPart,
    # EntityTooSmall, MalformedXML, ... and every other 4xx: retrying cannot help.
    return PermanentError(text)


def _raise(exc: BaseException, operation: str) -> NoReturn:
    raise _map_error(exc, operation) from exc


# Exceptions this module maps; anything else (bugs, cancellation) propagates untouched.
_MAPPED = (
    boto_errors.ClientError,
    boto_errors.BotoCoreError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
)


def _strip(etag: str) -> str:
    return etag.strip('"')


class S3ObjectStore:
    """The ObjectStore Protocol over one open aiobotocore S3 client, bound to one bucket."""

    def __init__(
        self, client: S3Client, bucket: str, *, region: str = "", storage_class: str = ""
    ) -> None:
        self._client = client
        self.bucket = bucket
        self._region = region
        self._storage_class = storage_class

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r})"

    async def ping(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
        except boto_errors.ClientError as exc:
            code, status = _error_code(exc)
            if code in _NOT_FOUND_CODES or code == "NoSuchBucket" or status == 404:
                missing = f"S3_BUCKET_NAME: bucket {self.bucket!r} does not exist"
                raise PermanentError(missing) from exc
            if code in _ACCESS_CODES or status == 403:
                raise PermanentError(self._access_denied()) from exc
            _raise(exc, "HeadBucket")
        except _MAPPED as exc:
            _raise(exc, "HeadBucket")

    def _access_denied(self) -> str:
        return (
            f"access denied to bucket {self.bucket!r}: check S3_ACCESS_KEY_ID / "
            "S3_SECRET_ACCESS_KEY and the bucket's policy"
        )

    async def ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except boto_errors.ClientError as exc:
            code, status = _error_code(exc)
            if code in _ACCESS_CODES or status == 403:
                raise PermanentError(self._access_denied()) from exc
            if not (code in _NOT_FOUND_CODES or code == "NoSuchBucket" or status == 404):
                _raise(exc, "HeadBucket")
        except _MAPPED as exc:
            _raise(exc, "HeadBucket")
        await self._create_bucket()

    async def _create_bucket(self) -> None:
        try:
            # us-east-1 (botocore may call it aws-global) rejects an explicit constraint.
            if self._region not in ("", _DEFAULT_REGION, "aws-global"):
                await self._client.create_bucket(
                    Bucket=self.bucket,
                    CreateBucketConfiguration={
                        "LocationConstraint": cast("BucketLocationConstraintType", self._region)
                    },
                )
            else:
                await self._client.create_bucket(Bucket=self.bucket)
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
        try:
            response = await self._client.create_multipart_upload(**kwargs)
        except _MAPPED as exc:
            _raise(exc, "CreateMultipartUpload")
        return response["UploadId"]

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: PartBody, md5_b64: str
    ) -> str:
        try:
            response = await self._client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=part_number,
                Body=body,
                ContentMD5=md5_b64,
                ContentLength=len(body),
            )
        except _MAPPED as exc:
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
                    part = UploadedPart(number, raw["Size"], _strip(raw["ETag"]))
                    seen = newest.get(number)
                    if seen is None or (
                        modified is not None and seen[0] is not None and modified > seen[0]
                    ):
                        newest[number] = (modified, part)
        except _MAPPED as exc:
            _raise(exc, "ListParts")
        return [newest[number][1] for number in sorted(newest)]

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> str:
        completed: list[CompletedPartTypeDef] = [
            {"PartNumber": number, "ETag": f'"{_strip(etag)}"'} for number, etag in parts
        ]
        try:
            response = await self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                MultipartUpload={"Parts": completed},
            )
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
        try:
            await self._client.put_object(
                Bucket=self.bucket, Key=key, Body=body, ContentType=content_type,
                ContentMD5=md5,
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


def _client_config(
    *, path_style: bool, max_pool_connections: int, connect_timeout: float, read_timeout: float
) -> Any:
    options: dict[str, Any] = {
        # cefmp4.retry retries transient errors without limit; botocore retrying underneath
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
) -> AsyncIterator[S3ObjectStore]:
    """Open one S3 client for the lifetime of the block. Empty strings mean "not given"."""
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
        config=config,
    )
    async with creator as raw_client:
        client = cast("S3Client", raw_client)
        yield S3ObjectStore(
            client,
            bucket,
            region=resolved_region or str(client.meta.region_name or ""),
            storage_class=storage_class,
        )
