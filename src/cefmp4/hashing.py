"""The ETag S3 gives a multipart object (Content-MD5s are made in ``cefmp4.source``)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def multipart_etag(md5_hexes: Iterable[str]) -> str:
    """The ETag S3 gives an object completed from parts with these MD5s (hex, in part
    order): the MD5 of the concatenated binary digests, then ``-`` and the part count.
    Returned without the surrounding quotes S3 puts on the wire."""
    combined = hashlib.md5(usedforsecurity=False)
    count = 0
    for md5_hex in md5_hexes:
        raw = bytes.fromhex(normalize_etag(md5_hex))
        if len(raw) != 16:
            raise ValueError(f"not an MD5 hex digest: {md5_hex!r}")
        combined.update(raw)
        count += 1
    if count == 0:
        raise ValueError("a multipart ETag needs at least one part")
    return f"{combined.hexdigest()}-{count}"


def normalize_etag(etag: str) -> str:
    """An ETag without quotes or a weak prefix, lower-case: comparable across servers."""
    value = etag.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower()
