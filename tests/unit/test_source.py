"""open_source: only regular files, off the loop, classified errors, no leaked descriptor."""

from __future__ import annotations

import asyncio
import errno
import os
from pathlib import Path

import pytest

from cefmp4.runtime.errors import (
    SourceBusy,
    SourceError,
    SourceGone,
    SourcePermission,
    SourceReplaced,
    SourceTransient,
)
from cefmp4.streams.source import FileRange, classify_os_error, hash_range, open_source


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_regular_file_opens_with_its_identity(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * 10)
    opened = await open_source(path, inode=path.stat().st_ino)
    try:
        assert opened.st.st_size == 10
        assert os.get_inheritable(opened.fd) is False
    finally:
        os.close(opened.fd)


async def test_a_fifo_never_blocks_and_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)
    before = _open_fds()
    with pytest.raises(SourceReplaced, match="not a regular file"):
        await asyncio.wait_for(open_source(fifo), 2)
    assert _open_fds() == before


async def test_another_inode_is_replaced_and_nothing_leaks(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x")
    before = _open_fds()
    with pytest.raises(SourceReplaced):
        await open_source(path, inode=path.stat().st_ino + 1)
    assert _open_fds() == before


async def test_missing_is_gone(tmp_path: Path) -> None:
    with pytest.raises(SourceGone):
        await open_source(tmp_path / "nope.mp4")


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOENT, SourceGone),
        (errno.EACCES, SourcePermission),
        (errno.EPERM, SourcePermission),
        (errno.EMFILE, SourceBusy),
        (errno.ENFILE, SourceBusy),
        (errno.ELOOP, SourceReplaced),
        (errno.EIO, SourceTransient),
        (errno.ESTALE, SourceTransient),
    ],
)
def test_only_enoent_means_gone(code: int, kind: type[SourceError]) -> None:
    assert type(classify_os_error(OSError(code, os.strerror(code)), "f")) is kind


async def test_cancelled_while_opening_closes_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x")
    before = _open_fds()
    for _ in range(20):
        task = asyncio.create_task(open_source(path))
        await asyncio.sleep(0)
        task.cancel()
        try:
            opened = await task
            os.close(opened.fd)
        except asyncio.CancelledError:
            pass
    # The opens run in worker threads (some may not even have started yet): let them all
    # finish, then whatever nobody awaits any more must have been closed.
    await asyncio.get_running_loop().shutdown_default_executor()
    for _ in range(1000):
        if _open_fds() == before:
            break
        await asyncio.sleep(0.01)
    assert _open_fds() == before


def test_reading_past_the_end_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"abc")
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(SourceError, match="file ended"):
            hash_range(fd, 0, 10)
        body = FileRange(fd, 2, 5)
        assert body.read(1) == b"c"
        with pytest.raises(SourceError, match="file ended"):
            body.read(4)
    finally:
        os.close(fd)
