"""What a well-formed value of the S3 and Redis settings looks like: pure checks that
return the problem in words (never quoting a value that may hold a password), used by the
``Settings`` validators. Kept apart so that the model reads as one declaration per setting.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Protocol
from urllib.parse import parse_qs, urlsplit

MAX_KEY_PREFIX_BYTES = 512  # half of S3's key limit, the rest is for stream id and path
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_RESERVED_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_RESERVED_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3")
_SSL_CERT_REQS = ("none", "optional", "required")


def normalize_key_prefix(value: str) -> str:
    """The prefix as a path segment: ``streams`` → ``streams/``; ``""`` stays empty.

    ``ValueError`` for a leading ``/``, empty, ``.`` or ``..`` segments, or a prefix too long
    to leave room for a key.
    """
    if not value:
        return value
    if value.startswith("/"):
        raise ValueError("must not start with '/'")
    prefix = value if value.endswith("/") else value + "/"
    if any(segment in ("", ".", "..") for segment in prefix[:-1].split("/")):
        raise ValueError("must not contain empty, '.' or '..' segments")
    if len(prefix.encode("utf-8")) > MAX_KEY_PREFIX_BYTES:
        raise ValueError(f"must be at most {MAX_KEY_PREFIX_BYTES} bytes")
    return prefix


def bucket_name_problem(name: str) -> str | None:
    """Why ``name`` breaks S3's bucket naming rules, or None."""
    if not 3 <= len(name) <= 63:
        return "must be 3 to 63 characters long"
    if not _BUCKET.fullmatch(name):
        return (
            "must use lower-case letters, digits, dots and hyphens only, and start and "
            "end with a letter or digit"
        )
    if ".." in name or ".-" in name or "-." in name:
        return "must not contain '..', '.-' or '-.'"
    try:
        ipaddress.IPv4Address(name)
    except ValueError:
        pass
    else:
        return "must not be formatted as an IP address"
    if name.startswith(_BUCKET_RESERVED_PREFIXES) or name.endswith(_BUCKET_RESERVED_SUFFIXES):
        return "uses a prefix or suffix that S3 reserves"
    return None


def redis_url_problem(url: str) -> str | None:
    """Why redis-py would reject ``url`` (at parse or connect time), or None. Never quotes it."""
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "must start with redis://, rediss:// or unix://"
    from redis.connection import parse_url

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
        options = parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError:
        return "not a valid redis://, rediss:// or unix:// URL"
    if not url.startswith("unix://") and not parts.hostname:
        return "has no host"
    query = parse_qs(parts.query)
    for value in query.get("ssl_cert_reqs", []):
        if value.lower() not in _SSL_CERT_REQS:
            return "ssl_cert_reqs must be none, optional or required"
    database = parts.path.strip("/")
    if not url.startswith("unix://") and database and not database.isdigit():
        # redis-py ignores such a path and silently uses database 0.
        return "the database number (the URL's path) must be an integer"
    if not isinstance(options.get("db", 0), int):
        return "the database number must be an integer"
    return None


class _Sizes(Protocol):  # the three settings, read-only (Settings is frozen)
    @property
    def max_inflight_mb(self) -> int: ...
    @property
    def chunk_size_mb(self) -> int: ...
    @property
    def upload_concurrency(self) -> int: ...


def inflight_advice(s: _Sizes) -> str | None:
    """A byte budget that holds fewer parts than there are upload slots: the slots never
    fill (the capacity bench's 200 cameras fell 14 s behind with 16 slots and 64 MiB)."""
    parts = s.max_inflight_mb // s.chunk_size_mb
    if parts >= s.upload_concurrency:
        return None
    return (
        f"MAX_INFLIGHT_MB={s.max_inflight_mb} holds {parts} parts of CHUNK_SIZE_MB="
        f"{s.chunk_size_mb}, fewer than UPLOAD_CONCURRENCY={s.upload_concurrency}: the "
        "budget, not the upload slots, caps the parts in flight; set MAX_INFLIGHT_MB to at "
        f"least {(s.upload_concurrency + 2) * s.chunk_size_mb}"
    )
