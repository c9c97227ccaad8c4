"""Reading a byte range of the source and uploading it as one part."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from cefmp4.errors import SourceError
from cefmp4.hashing import md5_hex_b64
from cefmp4.parts import PartSchedule

_READ_BLOCK = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PartBody:
    data: bytes
    md5_hex: str
    md5_b64: str


def read_range(fd: int, offset: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``offset`` of an open file, or ``SourceError``."""
    chunks: list[bytes] = []
    got = 0
    while got < size:
        chunk = os.pread(fd, size - got, offset + got)
        if not chunk:
            raise SourceError(f"file ended at byte {offset + got}, expected {offset + size}")
        chunks.append(chunk)
        got += len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def read_part(fd: int, offset: int, size: int) -> PartBody:
    """Read and hash one part; blocking, run it in a thread (hashlib releases the GIL)."""
    data = read_range(fd, offset, size)
    md5_hex, md5_b64 = md5_hex_b64(data)
    return PartBody(data, md5_hex, md5_b64)


@dataclass(frozen=True, slots=True)
class RangeDigest:
    part_number: int
    offset: int
    size: int
    md5_hex: str


@dataclass(frozen=True, slots=True)
class FileDigest:
    size: int
    sha256: str
    parts: list[RangeDigest]


def digest_file(fd: int, bounds: list[tuple[int, int, int]]) -> FileDigest:
    """One sequential pass: the MD5 of each (part_number, offset, size) range and the
    SHA-256 of all of them, read in blocks so memory stays small whatever the part size.

    ``bounds`` must be contiguous from offset 0. Blocking; run it in a thread.
    """
    sha = hashlib.sha256()
    digests: list[RangeDigest] = []
    expected = 0
    for number, offset, size in bounds:
        if offset != expected:
            raise ValueError("ranges must be contiguous from 0")
        md5 = hashlib.md5(usedforsecurity=False)
        done = 0
        while done < size:
            block = read_range(fd, offset + done, min(_READ_BLOCK, size - done))
            md5.update(block)
            sha.update(block)
            done += len(block)
        digests.append(RangeDigest(number, offset, size, md5.hexdigest()))
        expected = offset + size
    return FileDigest(expected, sha.hexdigest(), digests)


def part_bounds(schedule: PartSchedule, size: int) -> list[tuple[int, int, int]]:
    """(part_number, offset, size) covering ``size`` bytes; the last part may be short."""
    bounds: list[tuple[int, int, int]] = []
    number, offset = 1, 0
    while offset < size:
        part = min(schedule.size_of(number), size - offset)
        bounds.append((number, offset, part))
        offset += part
        number += 1
    return bounds
