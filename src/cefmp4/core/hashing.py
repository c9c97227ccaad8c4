"""Digests: a part's (CRC32C, MD5 where needed; computed in ``cefmp4.streams.source``) and the
ETag S3 gives a multipart object."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

# A part's recorded digest (PartRecord.md5): "crc32c:<8 hex>" since CRC32C replaced MD5 on
# the upload path; a bare 32-hex MD5 in checkpoints written before, or by reconcile.
CRC32C_PREFIX: Final = "crc32c:"


@dataclass(frozen=True, slots=True)
class PartDigest:
    """One pass over a part's bytes: their CRC32C always (cheap: what the store checks where
    it can, and what "did these bytes change?" compares), their MD5 only when asked for
    (Content-MD5 stores, and matching a part against its ETag)."""

    crc32c: int
    md5: bytes | None = None

    @property
    def record(self) -> str:
        """What a PartRecord keeps to tell later whether the bytes changed."""
        return f"{CRC32C_PREFIX}{self.crc32c:08x}"

    @property
    def crc32c_b64(self) -> str:
        return base64.b64encode(self.crc32c.to_bytes(4, "big")).decode("ascii")

    @property
    def md5_hex(self) -> str:
        return self.md5.hex() if self.md5 is not None else ""

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(self.md5).decode("ascii") if self.md5 is not None else ""


def is_md5_record(recorded: str) -> bool:
    return not recorded.startswith(CRC32C_PREFIX)


def same_bytes(recorded: str, now: PartDigest) -> bool:
    """A part's recorded digest matches bytes digested now. An MD5 record needs ``now.md5``;
    without it the bytes count as changed (the part is sent again: safe, never wrong)."""
    if not is_md5_record(recorded):
        return recorded == now.record
    return now.md5 is not None and recorded == now.md5.hex()


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
