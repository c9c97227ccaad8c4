"""discover against a real directory: check_file, scan and the watch (§2.1, §2.4)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from cefmp4.discover import check_file, scan, watch

# The watch must hand over a change well within this; the spec wants ~0.1 s.
DEADLINE = 1.0


def write(path: Path, data: bytes = b"\0" * 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- check_file ------------------------------------------------------------------------


def test_check_file_regular_file(tmp_path: Path) -> None:
    path = write(tmp_path / "a.mp4", b"abc")
    st = check_file(path, tmp_path)
    assert st is not None
    assert st.st_size == 3


@pytest.mark.parametrize("kind", ["dir", "fifo", "missing"])
def test_check_file_rejects_non_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "x.mp4"
    if kind == "dir":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    assert check_file(path, tmp_path) is None


def test_check_file_follows_a_symlink_inside(tmp_path: Path) -> None:
    target = write(tmp_path / "real" / "t.mp4", b"12345")
    link = tmp_path / "link.mp4"
    link.symlink_to(target)
    st = check_file(link, tmp_path)
    assert st is not None
    # The identity is the target's, so the stream follows the file the recorder writes.
    assert (st.st_ino, st.st_size) == (target.stat().st_ino, 5)


def test_check_file_follows_a_relative_symlink_inside(tmp_path: Path) -> None:
    write(tmp_path / "t.mp4")
    (tmp_path / "sub").mkdir()
    link = tmp_path / "sub" / "l.mp4"
    link.symlink_to(Path("..") / "t.mp4")
    assert check_file(link, tmp_path) is not None


def test_check_file_rejects_links_outside_dangling_or_to_dirs(tmp_path: Path) -> None:
    watch_dir = tmp_path / "watch"
    watch_dir.mkdir()
    outside = write(tmp_path / "outside.mp4")
    (watch_dir / "out.mp4").symlink_to(outside)
    (watch_dir / "dangling.mp4").symlink_to(watch_dir / "gone.mp4")
    (watch_dir / "d").mkdir()
    (watch_dir / "dir.mp4").symlink_to(watch_dir / "d")
    (watch_dir / "loop.mp4").symlink_to(watch_dir / "loop.mp4")
    (watch_dir / "self.mp4").symlink_to(watch_dir)
    for name in ["out.mp4", "dangling.mp4", "dir.mp4", "loop.mp4", "self.mp4"]:
        assert check_file(watch_dir / name, watch_dir) is None, name


def test_check_file_with_a_symlinked_watch_dir(tmp_path: Path) -> None:
    real = tmp_path / "real"
    write(real / "t.mp4")
    alias = tmp_path / "alias"
    alias.symlink_to(real)
    (real / "l.mp4").symlink_to(real / "t.mp4")
    assert check_file(alias / "l.mp4", alias) is not None


def test_check_file_rejects_files_reached_through_a_symlinked_dir(tmp_path: Path) -> None:
    watch_dir = tmp_path / "watch"
    outside = write(tmp_path / "outside" / "o.mp4")
    inside = write(watch_dir / "real" / "i.mp4")
    (watch_dir / "out-link").symlink_to(outside.parent)
    (watch_dir / "in-link").symlink_to(inside.parent)
    assert check_file(watch_dir / "out-link" / "o.mp4", watch_dir) is None
    # Inside, but an alias of a file the scan already finds under its real name.
    assert check_file(watch_dir / "in-link" / "i.mp4", watch_dir) is None
    assert check_file(inside, watch_dir) is not None


# --- scan ------------------------------------------------------------------------------


def test_scan_a_tree(tmp_path: Path) -> None:
    expected = [
        write(tmp_path / "a.mp4"),
        write(tmp_path / "B.MP4"),
        write(tmp_path / "cam1" / "2024" / "rec.Mp4"),
        write(tmp_path / "cam2" / "rec.mp4"),
    ]
    write(tmp_path / "notes.txt")
    write(tmp_path / "c.mov")
    write(tmp_path / "c.mp4.part")
    write(tmp_path / ".hidden.mp4")
    write(tmp_path / ".cache" / "x.mp4")
    write(tmp_path / "cam1" / ".tmp" / "x.mp4")
    (tmp_path / "dir.mp4").mkdir()
    os.mkfifo(tmp_path / "fifo.mp4")
    link = tmp_path / "link.mp4"
    link.symlink_to(tmp_path / "a.mp4")
    expected.append(link)
    outside = write(tmp_path.parent / f"{tmp_path.name}-outside" / "o.mp4")
    (tmp_path / "out.mp4").symlink_to(outside)
    # A symlinked directory is not entered, whether it points inside or outside.
    (tmp_path / "linked-dir").symlink_to(outside.parent)
    (tmp_path / "loop-dir").symlink_to(tmp_path)

    assert scan(tmp_path) == sorted(expected)


def test_scan_many_files_is_fast(tmp_path: Path) -> None:
    for d in range(20):
        sub = tmp_path / f"d{d}"
        sub.mkdir()
        for f in range(150):
            (sub / f"{f}.mp4").touch()
            (sub / f"{f}.log").touch()
    started = time.monotonic()
    found = scan(tmp_path)
    assert len(found) == 3000
    assert time.monotonic() - started < 2.0


def test_scan_skips_unreadable_dirs(tmp_path: Path) -> None:
    write(tmp_path / "ok" / "a.mp4")
    locked = tmp_path / "locked"
    write(locked / "b.mp4")
    locked.chmod(0)
    try:
        found = scan(tmp_path)
    finally:
        locked.chmod(0o755)
    assert tmp_path / "ok" / "a.mp4" in found


# --- watch -----------------------------------------------------------------------------


class Watcher:
    """Runs discover.watch in a task and collects what it yields."""

    def __init__(self) -> None:
        self.seen: set[Path] = set()
        self.batches: list[set[Path]] = []
        self.changed = asyncio.Condition()

    async def run(self, watch_dir: Path, stop: asyncio.Event, force_polling: bool) -> None:
        async for batch in watch(watch_dir, stop, force_polling=force_polling):
            async with self.changed:
                self.batches.append(batch)
                self.seen |= batch
                self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE), self.changed:
            await self.changed.wait_for(predicate)

    async def wait_seen(self, path: Path) -> None:
        await self.wait_for(lambda: path in self.seen)

    def reset(self) -> None:
        self.seen.clear()


@pytest.fixture(params=[False, True], ids=["notify", "polling"])
def force_polling(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@asynccontextmanager
async def watching(watch_dir: Path, force_polling: bool = False) -> AsyncIterator[Watcher]:
    watcher = Watcher()
    stop = asyncio.Event()
    task = asyncio.create_task(watcher.run(watch_dir, stop, force_polling))
    # The watcher thread needs a moment to register its watches before events count.
    await asyncio.sleep(0.4 if force_polling else 0.2)
    try:
        yield watcher
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=2)


async def test_new_file_is_seen_quickly(tmp_path: Path, force_polling: bool) -> None:
    async with watching(tmp_path, force_polling) as w:
        started = time.monotonic()
        path = write(tmp_path / "new.mp4")
        await w.wait_seen(path)
        elapsed = time.monotonic() - started
    assert elapsed < (DEADLINE if force_polling else 0.5)


async def test_growing_file_is_seen_repeatedly(tmp_path: Path) -> None:
    path = write(tmp_path / "grow.mp4", b"")
    async with watching(tmp_path) as w:
        with path.open("ab") as f:
            for _ in range(5):
                w.reset()
                f.write(b"x" * 1000)
                f.flush()
                await w.wait_seen(path)
        assert sum(path in batch for batch in w.batches) >= 5


async def test_file_in_a_new_subdir(tmp_path: Path, force_polling: bool) -> None:
    async with watching(tmp_path, force_polling) as w:
        path = write(tmp_path / "cam" / "day" / "rec.mp4")
        await w.wait_seen(path)


async def test_file_written_right_after_mkdir_is_not_missed(tmp_path: Path) -> None:
    # Races the watcher adding its watch on the new directory: the dir event triggers a scan.
    async with watching(tmp_path) as w:
        paths = []
        for i in range(10):
            sub = tmp_path / f"burst{i}"
            sub.mkdir()
            paths.append(write(sub / "rec.mp4"))
        await w.wait_for(lambda: set(paths) <= w.seen)


async def test_renamed_file_new_name_is_seen(tmp_path: Path, force_polling: bool) -> None:
    old = write(tmp_path / "old.mp4")
    async with watching(tmp_path, force_polling) as w:
        new = tmp_path / "sub" / "new.mp4"
        new.parent.mkdir()
        await asyncio.sleep(0.1)
        old.rename(new)
        await w.wait_for(lambda: {old, new} <= w.seen)


async def test_file_moved_in_from_outside(tmp_path: Path, force_polling: bool) -> None:
    watch_dir = tmp_path / "watch"
    watch_dir.mkdir()
    outside = write(tmp_path / "staging" / "rec.mp4")
    async with watching(watch_dir, force_polling) as w:
        outside.rename(watch_dir / "rec.mp4")
        await w.wait_seen(watch_dir / "rec.mp4")


async def test_directory_moved_in_from_outside(tmp_path: Path, force_polling: bool) -> None:
    watch_dir = tmp_path / "watch"
    watch_dir.mkdir()
    staged = tmp_path / "staging" / "cam"
    write(staged / "a.mp4")
    write(staged / "deep" / "b.MP4")
    write(staged / "notes.txt")
    async with watching(watch_dir, force_polling) as w:
        staged.rename(watch_dir / "cam")
        expected = {watch_dir / "cam" / "a.mp4", watch_dir / "cam" / "deep" / "b.MP4"}
        await w.wait_for(lambda: expected <= w.seen)
        assert all(p.suffix.lower() == ".mp4" for p in w.seen)


async def test_deleted_file_is_nominated(tmp_path: Path) -> None:
    path = write(tmp_path / "gone.mp4")
    async with watching(tmp_path) as w:
        path.unlink()
        await w.wait_seen(path)


async def test_noise_is_not_yielded(tmp_path: Path) -> None:
    async with watching(tmp_path) as w:
        write(tmp_path / "a.mov")
        write(tmp_path / "a.mp4.part")
        write(tmp_path / ".hidden.mp4")
        write(tmp_path / ".cache" / "x.mp4")
        (tmp_path / "dir.mp4").mkdir()
        outside = write(tmp_path.parent / f"{tmp_path.name}-out" / "o.mp4")
        (tmp_path / "out.mp4").symlink_to(outside)
        marker = write(tmp_path / "marker.mp4")
        await w.wait_seen(marker)
        await asyncio.sleep(0.2)
        assert w.seen == {marker}


async def test_files_under_a_symlinked_dir_are_not_yielded(tmp_path: Path) -> None:
    # The OS watcher follows symlinked directories; discovery must not.
    watch_dir = tmp_path / "watch"
    watch_dir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (watch_dir / "link").symlink_to(outside)
    async with watching(watch_dir) as w:
        write(outside / "o.mp4")
        write(watch_dir / "link" / "p.mp4")
        marker = write(watch_dir / "marker.mp4")
        await w.wait_seen(marker)
        await asyncio.sleep(0.2)
        assert w.seen == {marker}


async def test_stops_promptly_when_the_event_is_set(tmp_path: Path) -> None:
    stop = asyncio.Event()
    batches: list[set[Path]] = []

    async def consume() -> None:
        async for batch in watch(tmp_path, stop):
            batches.append(batch)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    started = time.monotonic()
    stop.set()
    await asyncio.wait_for(task, timeout=1)
    assert time.monotonic() - started < 0.5


async def test_cancelling_the_consumer_stops_the_watch(tmp_path: Path) -> None:
    stop = asyncio.Event()

    async def consume() -> None:
        async for _ in watch(tmp_path, stop):
            pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=1)
