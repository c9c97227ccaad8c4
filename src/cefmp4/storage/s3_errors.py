"""botocore/aiohttp errors as cefmp4's own, at the S3 boundary: what to retry, what not."""

from __future__ import annotations

import asyncio
from typing import Any, NoReturn

import aiohttp
import botocore.exceptions as boto_errors  # type: ignore[import-untyped]

from cefmp4.runtime.errors import (
    CefmpError,
    ContentChanged,
    PermanentError,
    TransientError,
    UploadNotFound,
)

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
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
ACCESS_CODES = frozenset(
    {
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AllAccessDisabled",
    }
)


def error_code(exc: boto_errors.ClientError) -> tuple[str, int]:
    response: dict[str, Any] = exc.response
    code = str(response.get("Error", {}).get("Code", "") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


def map_error(exc: BaseException, operation: str) -> CefmpError:
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
    code, status = error_code(exc)
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


def raise_mapped(exc: BaseException, operation: str) -> NoReturn:
    raise map_error(exc, operation) from exc


# Exceptions this module maps; anything else (bugs, cancellation) propagates untouched.
MAPPED = (
    boto_errors.ClientError,
    boto_errors.BotoCoreError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
    OSError,
)
