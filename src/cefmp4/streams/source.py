"""The source file: opening it safely, reading byte ranges, hashing them.

A part is never held in memory whole: one pass hashes it in small blocks (its CRC32C, its
MD5 only for a Content-MD5 store, and the stream's running SHA-256), then the S3 client
streams it straight from the file (``FileRange``), from the page cache without a thread hop
where it can (``read_cached``). Should the bytes change in between, S3 answers BadDigest
(``ContentChanged``) and the part is hashed and sent again.

Every read goes through ``_pread_into``, so every OS error is classified the same way.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import crc32c

from cefmp4.core.hashing import FileDigest, PartDigest, RangeDigest, crc64nvme
from cefmp4.runtime.errors import (
    SourceBusy,
    SourceError,
    SourceGone,
    SourcePermission,
    SourceReplaced,
    SourceTransient,
)

_READ_BLOCK = 4 * 1024 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def classify_os_error(exc: OSError, what: str) -> SourceError:
    """The one mapping of file-system errors: only ENOENT means the file is gone."""
    code = exc.errno
    message = f"{what}: {exc.strerror or exc}"
    if code in (errno.ENOENT, errno.ENOTDIR):
        return SourceGone(message)
    if code in (errno.EACCES, errno.EPERM):
        return SourcePermission(message)
    if code in (errno.EMFILE, errno.ENFILE):
        return SourceBusy(message)
    if code == errno.ELOOP:  # O_NOFOLLOW met a symlink swapped in after discovery
        return SourceReplaced(message)
    return SourceTransient(message)


def stat_or_none(path: Path) -> os.stat_result | None:
    """``os.stat``, or None when there is nothing (readable) at ``path``."""
    try:
        return os.stat(path)
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class OpenedSource:
    """An open descriptor (the caller closes it) and its fstat at opening."""

    fd: int
    st: os.stat_result


def _open_blocking(path: Path, inode: int | None) -> OpenedSource:
    # A symlink was vetted by discovery (target inside WATCH_DIR); open its target, and
    # refuse a link that appears in its place from now on.
    target = os.path.realpath(path)
    try:
        fd = os.open(target, _OPEN_FLAGS)
    except OSError as exc:
        raise classify_os_error(exc, str(path)) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceReplaced(f"{path}: not a regular file")
        if inode is not None and st.st_ino != inode:
            raise SourceReplaced(f"{path}: another file (inode {st.st_ino}, expected {inode})")
    except OSError as exc:
        os.close(fd)
        raise classify_os_error(exc, str(path)) from exc
    except BaseException:
        os.close(fd)
        raise
    return OpenedSource(fd, st)


async def open_source(path: Path, *, inode: int | None = None) -> OpenedSource:
    """Open ``path`` read-only off the event loop (a FIFO or a hung NFS server must not
    block it), check it is a regular file with ``inode`` when given. Raises a
    ``SourceError`` subclass. The descriptor never leaks, even when the caller is cancelled
    while the open is still running in its thread."""
    future = asyncio.ensure_future(asyncio.to_thread(_open_blocking, path, inode))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_close_result)
        raise


def _close_result(future: asyncio.Future[OpenedSource]) -> None:
    if not future.cancelled() and future.exception() is None:
        os.close(future.result().fd)


def _pread_into(fd: int, view: memoryview, offset: int) -> int:
    """One read at ``offset``: bytes read (short, or 0 at end of file); a classified
    ``SourceError`` on an OS error."""
    try:
        return os.preadv(fd, [view], offset)
    except OSError as exc:
        raise classify_os_error(exc, f"read at byte {offset}") from exc


def _blocks(fd: int, offset: int, size: int) -> Iterator[memoryview]:
    """``size`` bytes from ``offset`` in blocks of one reused buffer (copy to keep)."""
    block = bytearray(min(_READ_BLOCK, size) or 1)
    view = memoryview(block)
    done = 0
    while done < size:
        want = min(len(block), size - done)
        got = _pread_into(fd, view[:want], offset + done)
        if got <= 0:
            raise SourceError(f"file ended at byte {offset + done}, expected {offset + size}")
        yield view[:got]
        done += got


def digest_range(
    fd: int, offset: int, size: int, sha: hashlib._Hash | None = None, *, md5: bool = False,
    past: int | None = None,
) -> PartDigest:
    """The digest of ``size`` bytes at ``offset`` (MD5 too if ``md5``; the CRC32C of the
    bytes from file offset ``past`` on too, if given), in one read that also feeds ``sha``
    if given. Blocking; run it in a thread (hashlib and crc32c release the GIL on large
    blocks, so it hashes on a second core while the loop sends)."""
    crc = crc64 = body = 0
    md5_sum = hashlib.md5(usedforsecurity=False) if md5 else None
    at = offset
    for block in _blocks(fd, offset, size):
        crc = crc32c.crc32c(block, crc)
        if past is not None and at + len(block) > past:
            body = crc32c.crc32c(block[max(0, past - at):], body)
        at += len(block)
        # Always, for the whole-object checksum (§2.22): a tenth of SHA-256's cost per GiB
        # (measured), and a part hashed without it could not join the combination later.
        crc64 = crc64nvme(block, crc64)
        if md5_sum is not None:
            md5_sum.update(block)
        if sha is not None:
            sha.update(block)
    return PartDigest(crc, md5_sum.digest() if md5_sum is not None else None, crc64,
                      None if past is None else (past, body))


def hash_range(fd: int, offset: int, size: int) -> tuple[str, str]:
    """(MD5 hex, MD5 base64) of ``size`` bytes at ``offset``: to match an ETag."""
    digest = digest_range(fd, offset, size, md5=True)
    return digest.md5_hex, digest.md5_b64


class FileRange(io.RawIOBase):
    """``size`` bytes of an open file from ``offset``, as a seekable read-only stream.

    The S3 client reads it in chunks while sending; the descriptor is shared, not owned.
    A failed read raises ``SourceError`` (the object store must not take it for a network
    error).
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
        got = _pread_into(self._fd, view[:want], self._offset + self._pos)
        if got <= 0:
            raise SourceError(f"file ended at byte {self._offset + self._pos}")
        self._pos += got
        return got

    def read_cached(self, size: int) -> bytearray | memoryview | None:
        """Up to ``size`` bytes the page cache holds, without blocking (``RWF_NOWAIT``):
        the S3 transport sends them with no thread hop. None when they are not cached."""
        want = min(size, self._size - self._pos)
        if want <= 0 or not _NOWAIT[0]:
            return None
        buf = bytearray(want)
        try:
            got = os.preadv(self._fd, [buf], self._offset + self._pos, os.RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                _NOWAIT[0] = False  # this file system cannot: read in a thread from now on
                return None
            raise classify_os_error(exc, f"read at byte {self._offset + self._pos}") from exc
        if got <= 0:
            return None  # the blocking read decides (end of file: SourceError)
        self._pos += got
        return buf if got == want else memoryview(buf)[:got]


_NOWAIT = [hasattr(os, "RWF_NOWAIT")]


def digest_file(
    fd: int, bounds: list[tuple[int, int, int]], *, md5: bool = False
) -> FileDigest:
    """One sequential pass: the digest of each (part_number, offset, size) range (MD5 too
    if ``md5``) and the SHA-256 of all of them. ``bounds`` must be contiguous from 0.
    Blocking (a thread)."""
    sha = hashlib.sha256()
    digests: list[RangeDigest] = []
    expected = 0
    for number, offset, size in bounds:
        if offset != expected:
            raise ValueError("ranges must be contiguous from 0")
        digest = digest_range(fd, offset, size, sha, md5=md5)
        digests.append(RangeDigest(number, offset, size, digest))
        expected = offset + size
    return FileDigest(expected, sha.hexdigest(), digests)


class RunningSha256:
    """SHA-256 of the whole file, fed by the part hashing pass while parts go up.

    Parts are hashed one at a time in ascending order (the uploader's hash lock), so their
    bytes can go straight into the digest. Anything out of order — a part hashed again
    after S3 saw other bytes, a resumed stream, a failed read — invalidates it, and finalize
    falls back to one full pass over the file.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._next = 1
        self.valid = True

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

    @property
    def fed_parts(self) -> int:
        """Parts 1..n that went into the digest, in order."""
        return self._next - 1

    def hexdigest(self, part_count: int) -> str | None:
        """The digest if exactly parts 1..part_count went in, else None."""
        if self.valid and self._next == part_count + 1:
            return self._sha.hexdigest()
        return None
