"""Reading byte ranges of the source: hashing them, and streaming them to S3 as parts.

A part is never held in memory whole: one pass hashes it in small blocks (Content-MD5, and
the stream's running SHA-256), then the S3 client streams it straight from the file
(``FileRange``). The page cache serves the second read. Should the bytes change in
between, S3 answers BadDigest (``ContentChanged``) and the part is hashed and sent again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any

from cefmp4.errors import SourceError
from cefmp4.parts import PartSchedule

_READ_BLOCK = 4 * 1024 * 1024


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


def hash_range(
    fd: int, offset: int, size: int, sha: hashlib._Hash | None = None
) -> tuple[str, str]:
    """(MD5 hex, MD5 base64) of ``size`` bytes at ``offset``, also fed to ``sha`` if given.
    Blocking; run it in a thread (hashlib releases the GIL on large blocks)."""
    md5 = hashlib.md5(usedforsecurity=False)
    block = bytearray(min(_READ_BLOCK, size) or 1)
    view = memoryview(block)
    done = 0
    while done < size:
        want = min(len(block), size - done)
        got = os.preadv(fd, [view[:want]], offset + done)
        if got <= 0:
            raise SourceError(f"file ended at byte {offset + done}, expected {offset + size}")
        md5.update(view[:got])
        if sha is not None:
            sha.update(view[:got])
        done += got
    digest = md5.digest()
    return digest.hex(), base64.b64encode(digest).decode("ascii")


class FileRange(io.RawIOBase):
    """``size`` bytes of an open file from ``offset``, as a seekable read-only stream.

    The S3 client reads it in chunks while sending; the descriptor is shared, not owned.
    """

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self._fd = fd
        self._offset = offset
        self._size = size
        self._pos = 0

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = min(max(0, base + offset), self._size)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        got = os.preadv(self._fd, [view[:want]], self._offset + self._pos)
        if got <= 0:
            raise SourceError(f"file ended at byte {self._offset + self._pos}")
        self._pos += got
        return got


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


class RunningSha256:
    """SHA-256 of the whole file, fed by the part hashing pass while parts go up.

    Parts are hashed one at a time in ascending order (``lock``), so their bytes can go
    straight into the digest. Anything out of order — a part hashed again after S3 saw
    other bytes, a resumed stream, a failed read — invalidates it, and finalize falls back
    to one full pass over the file.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._next = 1
        self.valid = True
        self.lock = asyncio.Lock()

    def invalidate(self) -> None:
        self.valid = False

    def for_part(self, part_number: int) -> hashlib._Hash | None:
        """The digest to feed ``part_number`` into, if it is the next part in order."""
        if self.valid and part_number == self._next:
            return self._sha
        if part_number < self._next:
            self.valid = False  # bytes already in the digest are being read again
        return None

    def fed(self, part_number: int) -> None:
        if self.valid and part_number == self._next:
            self._next += 1

    def hexdigest(self, part_count: int) -> str | None:
        """The digest if exactly parts 1..part_count went in, else None."""
        if self.valid and self._next == part_count + 1:
            return self._sha.hexdigest()
        return None
