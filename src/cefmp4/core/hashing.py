"""Digests: a part's (CRC32C, CRC64NVME, MD5 where needed; computed in
``cefmp4.streams.source``), the ETag S3 gives a multipart object, and the CRC64NVME of a
whole object combined from its parts'."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from awscrt import checksums  # type: ignore[import-untyped]

# A part's recorded digest (PartRecord.md5): "crc32c:<8 hex>" since CRC32C replaced MD5 on
# the upload path, followed by ";crc64nvme:<16 hex>" since the whole-object checksum
# (§2.22), and for part 1 by ";past<start>:<8 hex>", the CRC32C of its bytes from <start>
# on (its second half: ``header_window``); a bare 32-hex MD5 in checkpoints written before,
# or by reconcile. Carried in the digest record, the part-1 body digest needs no migration of
# either store. An older cefmp4 reading such a record still matches part 1 by its CRC32C,
# but cannot parse its CRC64NVME: objects it completes after a rollback go without the
# whole-object checksum (§2.22), nothing else changes.
CRC32C_PREFIX: Final = "crc32c:"
CRC64_MARK: Final = ";crc64nvme:"
PAST_MARK: Final = ";past"

# A recorder patches only the front of a file it already wrote: its header (an MP4's
# ``mdat`` size, a Matroska segment's size, seek head and duration) or a space it reserved
# there for its index (``-moov_size``, ``-reserve_index_space``), megabytes at most. The
# second half of part 1 (a part is at least 5 MiB) is past that, so its bytes tell a header
# patch from another file at the same place (a one-part stream's only evidence,
# ``core.resume.recording``). A part 1 too short to have a body of this size has none.
MIN_BODY_BYTES = 4096


def header_window(number: int, offset: int, size: int) -> int | None:
    """Where the body of part ``number`` starts, for the digest of its bytes past the
    header: the middle of part 1; None for any other part, or a part 1 under
    ``2 * MIN_BODY_BYTES``."""
    if number != 1 or offset != 0 or size < 2 * MIN_BODY_BYTES:
        return None
    return size // 2


@dataclass(frozen=True, slots=True)
class PartDigest:
    """One pass over a part's bytes: their CRC32C always (cheap: what the store checks where
    it can, and what "did these bytes change?" compares), their MD5 only when asked for
    (Content-MD5 stores, and matching a part against its ETag)."""

    crc32c: int
    md5: bytes | None = None
    crc64nvme: int | None = None  # for the whole-object checksum (combined at Complete)
    past: tuple[int, int] | None = None  # part 1: (its middle, CRC32C of the bytes from there)

    @property
    def record(self) -> str:
        """What a PartRecord keeps to tell later whether the bytes changed (and, with the
        CRC64NVME, what the whole object's checksum is combined from after a restart)."""
        crc64 = f"{CRC64_MARK}{self.crc64nvme:016x}" if self.crc64nvme is not None else ""
        past = f"{PAST_MARK}{self.past[0]}:{self.past[1]:08x}" if self.past is not None else ""
        return f"{CRC32C_PREFIX}{self.crc32c:08x}{crc64}{past}"

    @property
    def crc64nvme_b64(self) -> str:
        return crc64_b64(self.crc64nvme) if self.crc64nvme is not None else ""

    @property
    def crc32c_b64(self) -> str:
        return base64.b64encode(self.crc32c.to_bytes(4, "big")).decode("ascii")

    @property
    def md5_hex(self) -> str:
        return self.md5.hex() if self.md5 is not None else ""

    @property
    def md5_b64(self) -> str:
        return base64.b64encode(self.md5).decode("ascii") if self.md5 is not None else ""


@dataclass(frozen=True, slots=True)
class RangeDigest:
    """A range of the file as one hashing pass read it: the part it would be."""

    part_number: int
    offset: int
    size: int
    digest: PartDigest


@dataclass(frozen=True, slots=True)
class FileDigest:
    """One pass over the whole file: each part's range, and the SHA-256 of all of them."""

    size: int
    sha256: str
    parts: list[RangeDigest]


def is_md5_record(recorded: str) -> bool:
    return not recorded.startswith(CRC32C_PREFIX)


def same_bytes(recorded: str, now: PartDigest) -> bool:
    """A part's recorded digest matches bytes digested now. An MD5 record needs ``now.md5``;
    without it the bytes count as changed (the part is sent again: safe, never wrong). A
    CRC record compares its CRC32C, and its CRC64NVME too where both sides have one (a
    record from before the CRC64NVME still matches)."""
    if not is_md5_record(recorded):
        crc32c, crc64 = _split(recorded)
        if crc32c != f"{CRC32C_PREFIX}{now.crc32c:08x}":
            return False
        return crc64 is None or now.crc64nvme is None or crc64 == now.crc64nvme
    return now.md5 is not None and recorded == now.md5.hex()


def _split(recorded: str) -> tuple[str, int | None]:
    crc32c, crc64, _past = _fields(recorded)
    return crc32c, crc64


def _fields(recorded: str) -> tuple[str, int | None, tuple[int, int] | None]:
    """A CRC record's CRC32C field, its CRC64NVME and its part-1 body digest (None where it
    has none, or where one does not parse: a record is input, and proves nothing then)."""
    crc32c, *rest = recorded.split(";")
    crc64: int | None = None
    past: tuple[int, int] | None = None
    for field in rest:
        name, _, value = field.partition(":")
        # Exactly the digits cefmp4 writes: int() would also take a sign, "_" or "0x",
        # and a CRC64NVME of more than 16 digits breaks the checksum's arithmetic.
        if name == CRC64_MARK[1:-1] and _hex(value, 16):
            crc64 = int(value, 16)
        elif (name.startswith(PAST_MARK[1:]) and (start := name.removeprefix(PAST_MARK[1:]))
              and start.isascii() and start.isdigit() and _hex(value, 8)):
            past = (int(start), int(value, 16))
    return crc32c, crc64, past


def _hex(value: str, digits: int) -> bool:
    return len(value) == digits and all(c in "0123456789abcdef" for c in value)


def record_past(recorded: str) -> tuple[int, int] | None:
    """Part 1's (header bytes, CRC32C of its bytes past them), or None: an MD5 record, a
    record from before, or a part too short to have a body past its header."""
    if is_md5_record(recorded):
        return None
    past = _fields(recorded)[2]
    return past if past is not None and past[0] > 0 else None


def record_crc32c(recorded: str) -> str | None:
    """The 8 hex digits of a CRC record's CRC32C, or None for an MD5 record."""
    if is_md5_record(recorded):
        return None
    return _split(recorded)[0].removeprefix(CRC32C_PREFIX)


def record_crc64nvme(recorded: str) -> int | None:
    """The CRC64NVME a part's record carries, or None (MD5 records, older CRC records)."""
    return None if is_md5_record(recorded) else _split(recorded)[1]


def crc64nvme(data: bytes | bytearray | memoryview, previous: int = 0) -> int:
    """CRC-64/NVME (the polynomial S3 calls CRC64NVME), continuing from ``previous``.
    awscrt's, as botocore's own CRC64NVME checksums use: AWS's CRT, with carry-less
    multiplication (PCLMULQDQ / PMULL), ~10 GiB/s here."""
    value: int = checksums.crc64nvme(data, previous)
    return value


def crc64_b64(value: int) -> str:
    """The ``x-amz-checksum-crc64nvme`` form: 8 bytes big-endian, base64."""
    return base64.b64encode(value.to_bytes(8, "big")).decode("ascii")


class _Sized(Protocol):
    @property
    def size(self) -> int: ...
    @property
    def md5(self) -> str: ...


def combined_crc64nvme(parts: Iterable[_Sized]) -> int | None:
    """The CRC64NVME of the object made of ``parts`` (PartRecords, in order), combined from
    each part's recorded CRC64NVME without reading a byte again; None when a part's record
    has none (recorded before, or adopted by its MD5)."""
    total: int | None = None
    for part in parts:
        crc = record_crc64nvme(part.md5)
        if crc is None:
            return None
        total = crc if total is None else checksums.combine_crc64nvme(total, crc, part.size)
    return total


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
