"""discover against a real directory: check_file, scan and the watch (§2.1, §2.4)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, MutableMapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from cefmp4.intake.discover import (
    NOT_REGULAR,
    Notices,
    check_file,
    is_utf8,
    printable,
    scan,
    scan_paths,
)
from cefmp4.intake.watcher import watch
from cefmp4.runtime import logs
from cefmp4.runtime.readiness import Readiness

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


def test_scan_paths_is_scan_as_strings_without_a_stat_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for d in range(5):
        for f in range(20):
            write(tmp_path / f"d{d}" / f"sub{d}" / f"{f}.mp4")
    calls = {"lstat": 0, "stat": 0}
    for name in calls:
        real = getattr(os, name)

        def counting(*args: object, _real: object = real, _name: str = name, **kw: object) -> object:  # noqa: E501
            calls[_name] += 1
            return _real(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(os, name, counting)
    found = scan_paths(tmp_path, notices=Notices())
    monkeypatch.undo()
    assert found == [str(p) for p in scan(tmp_path, notices=Notices())]
    assert len(found) == 100
    assert calls == {"lstat": 0, "stat": 0}  # d_type from scandir: no stat per file


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
    """Runs watcher.watch in a task and collects what it yields."""

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


# --- hostile names and files (§2.1: no single file stops discovery) -------------------


def _bad_name(directory: Path, name: bytes) -> Path:
    """A path whose last component is ``name`` (not valid UTF-8), as Python spells it."""
    return Path(os.fsdecode(os.fsencode(directory) + b"/" + name))


def _skipped(events: list[MutableMapping[str, Any]], path: Path) -> list[MutableMapping[str, Any]]:
    return [e for e in events if e["event"] == logs.FILE_SKIPPED and e["path"] == printable(path)]


def test_scan_skips_a_name_that_is_not_utf8_with_one_warning(tmp_path: Path) -> None:
    good = write(tmp_path / "good.mp4")
    bad = write(_bad_name(tmp_path, b"\xff\xfe.mp4"))
    bad_dir = _bad_name(tmp_path, b"cam\xff")
    inside = write(bad_dir / "inner.mp4")
    notices = Notices()
    with capture_logs() as events:
        assert scan(tmp_path, notices=notices) == [good]
        assert scan(tmp_path, notices=notices) == [good]  # the rescan: no second warning
    assert len(_skipped(events, bad)) == 1
    assert len(_skipped(events, bad_dir)) == 1
    assert not _skipped(events, inside)
    assert "\\xff\\xfe.mp4" in printable(bad)  # the log shows the bytes, escaped


def test_scan_never_opens_a_fifo_and_warns_once(tmp_path: Path) -> None:
    good = write(tmp_path / "good.mp4")
    fifo = tmp_path / "x.mp4"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes
    notices = Notices()
    with capture_logs() as events:
        assert scan(tmp_path, notices=notices) == [good]
        assert scan(tmp_path, notices=notices) == [good]
    assert [e["reason"] for e in _skipped(events, fifo)] == [NOT_REGULAR]


async def test_a_name_that_is_not_utf8_does_not_stop_the_watch(tmp_path: Path) -> None:
    """watchfiles ends its iterator on such a name; the watch must restart and lose nothing."""
    before = write(tmp_path / "before.mp4")
    notices = Notices()
    with capture_logs() as events:
        async with watching_with(tmp_path, notices) as w:
            bad = write(_bad_name(tmp_path, b"rec\xff.mp4"))
            # In the same batch as the bad event, which watchfiles drops: found by the scan.
            beside = write(tmp_path / "beside.mp4")
            await w.wait_for(lambda: beside in w.seen)
            for _ in range(3):  # the recorder keeps writing the bad file: more failures
                with bad.open("ab") as f:
                    f.write(b"more")
                await asyncio.sleep(0.05)
            later = write(tmp_path / "sub" / "later.mp4")
            await w.wait_for(lambda: later in w.seen)
    assert before in w.seen
    assert not any(not is_utf8(str(p)) for p in w.seen)
    assert len(_skipped(events, bad)) == 1
    restarts = [e for e in events if e["event"] == logs.WATCHER_RESTARTED]
    assert restarts
    assert all(e["log_level"] == "info" for e in restarts)  # the warning is the skip's


async def test_a_fifo_appearing_is_warned_about_once_and_not_opened(tmp_path: Path) -> None:
    notices = Notices()
    with capture_logs() as events:
        async with watching_with(tmp_path, notices) as w:
            fifo = tmp_path / "live.mp4"
            os.mkfifo(fifo)
            os.utime(fifo)  # a second event for the same fifo
            after = write(tmp_path / "after.mp4")
            await w.wait_seen(after)
            await w.wait_for(lambda: bool(_skipped(events, fifo)))
    assert fifo not in w.seen
    assert len(_skipped(events, fifo)) == 1


@asynccontextmanager
async def watching_with(watch_dir: Path, notices: Notices) -> AsyncIterator[Watcher]:
    """Like ``watching``, with its own Notices, ready once a marker file has been seen."""
    watcher = Watcher()
    stop = asyncio.Event()

    async def run() -> None:
        async for batch in watch(watch_dir, stop, notices=notices, max_restart_delay=0.2):
            async with watcher.changed:
                watcher.batches.append(batch)
                watcher.seen |= batch
                watcher.changed.notify_all()

    task = asyncio.create_task(run())
    probe = watch_dir / "probe" / "probe.mp4"
    try:
        async with asyncio.timeout(10):
            while probe not in watcher.seen:  # the watches are registered once this is seen
                write(probe)
                with contextlib.suppress(TimeoutError):
                    await watcher.wait_for(lambda: probe in watcher.seen)
        yield watcher
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)


# --- an unreadable subdirectory, for real: the watcher runs as nobody -------------------

_AS_NOBODY = r"""
import asyncio, json, sys
from pathlib import Path
from cefmp4.intake import discover, watcher
from cefmp4.runtime import logs

logs.configure_logging(level="INFO", fmt="json")

async def main() -> None:
    watch_dir = Path(sys.argv[1])
    notices = discover.Notices()
    stop = asyncio.Event()

    def emit(**doc: object) -> None:
        print(json.dumps(doc), flush=True)

    async def rescan() -> None:
        while True:
            await asyncio.sleep(0.3)
            files = await asyncio.to_thread(discover.scan, watch_dir, notices=notices)
            emit(scanned=[str(p) for p in files])

    rescans = asyncio.create_task(rescan())
    async for batch in watcher.watch(watch_dir, stop, notices=notices):
        emit(seen=[str(p) for p in batch])
    rescans.cancel()

asyncio.run(main())
"""


def _python_for_nobody() -> list[str]:
    """An interpreter of this Python version that nobody may execute (the venv's links to
    one under /root, which nobody cannot enter)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    candidates = (sys.executable, os.path.realpath(sys.executable), f"/usr/bin/python{version}")
    for candidate in candidates:
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; print(tuple(sys.version_info[:2]))"],
                user="nobody", capture_output=True, text=True, check=False,
            )  # fmt: skip
        except OSError:
            continue
        if probe.stdout.strip() == str(tuple(sys.version_info[:2])):
            return [candidate]
    pytest.fail("no interpreter of this Python version is executable by nobody")


_IMPORTS_PROBE = """
import sys, sysconfig
from cefmp4.intake import discover, watcher
from cefmp4.runtime import logs
logs.configure_logging(level="INFO", fmt="json")
stdlib = sysconfig.get_paths()["stdlib"]
for name, module in list(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if "." not in name and path and not path.startswith(stdlib):
        print(path)
"""


def _import_paths(into: Path) -> list[str]:
    """A copy of what the watcher imports beyond the standard library, under ``into``
    (which nobody may read): the checkout and its venv need not be (``mktemp -d`` makes
    a clone's directory 0700)."""
    probe = subprocess.run([sys.executable, "-c", _IMPORTS_PROBE], capture_output=True,
                           text=True, check=True, timeout=60)
    into.mkdir()
    for line in sorted(set(probe.stdout.split())):
        source = Path(line)
        if source.name == "__init__.py":
            shutil.copytree(source.parent, into / source.parent.name, dirs_exist_ok=True)
        else:
            shutil.copy2(source, into / source.name)
    for path in [into, *into.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return [str(into)]


class NobodyWatcher:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.seen: set[str] = set()
        self.scanned: list[set[str]] = []

    async def until(self, predicate: Callable[[], bool], timeout: float = 10) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while not predicate():
                line = await self.proc.stdout.readline()
                assert line, "the watcher process ended"
                doc = json.loads(line)
                self.seen.update(doc.get("seen", ()))
                if "scanned" in doc:
                    self.scanned.append(set(doc["scanned"]))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the watcher as nobody")
async def test_an_unreadable_subdirectory_does_not_blind_its_siblings() -> None:
    """A 0700 root-owned directory (lost+found) among readable ones, watched by nobody."""
    top = Path(tempfile.mkdtemp(prefix="cefmp4-unreadable-"))
    try:
        top.chmod(0o755)
        watch_dir = top / "watch"
        siblings = [watch_dir / f"cam{i:02}" for i in range(12)]
        locked = watch_dir / "lost+found"
        for directory in [watch_dir, *siblings[:6], locked, *siblings[6:]]:
            directory.mkdir()
            directory.chmod(0o755)
        locked.chmod(0o700)  # root's; nobody may not read it
        write(locked / "hidden-away.mp4")
        proc = await asyncio.create_subprocess_exec(
            *_python_for_nobody(), "-c", _AS_NOBODY, str(watch_dir), user="nobody",
            env={**os.environ, "PYTHONPATH": os.pathsep.join(_import_paths(top / "lib"))},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        w = NobodyWatcher(proc)
        try:
            await w.until(lambda: len(w.scanned) >= 1)  # the watcher has its roots by now
            probe = watch_dir / "probe.mp4"
            write(probe)
            await w.until(lambda: str(probe) in w.seen)
            fresh = [write(d / "new.mp4") for d in siblings]
            await w.until(lambda: all(str(p) in w.seen for p in fresh))
            # Readable again: the rescan finds what is there, the watch what comes next.
            locked.chmod(0o755)
            found = str(locked / "hidden-away.mp4")
            await w.until(lambda: bool(w.scanned) and found in w.scanned[-1])
            scans_before = len(w.scanned)
            await w.until(lambda: len(w.scanned) >= scans_before + 2)  # watcher restarted
            later = write(locked / "later.mp4")
            await w.until(lambda: str(later) in w.seen)
        finally:
            proc.terminate()
            _, stderr = await asyncio.wait_for(proc.communicate(), 10)
        lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
        unreadable = [e for e in lines if e["event"] == logs.DIRECTORY_UNREADABLE]
        assert [e["path"] for e in unreadable] == [str(locked)]  # once, not once per scan
        assert [e["path"] for e in lines if e["event"] == logs.DIRECTORY_READABLE] == [str(locked)]
    finally:
        for directory in top.rglob("*"):
            if directory.is_dir():
                directory.chmod(0o755)
        shutil.rmtree(top)


async def test_a_watcher_that_cannot_start_is_reported_and_recovers(tmp_path: Path) -> None:
    watch_dir = tmp_path / "watch"
    watch_dir.mkdir()
    readiness = Readiness()
    stop = asyncio.Event()
    seen: set[Path] = set()

    async def run() -> None:
        async for batch in watch(watch_dir, stop, notices=Notices(), max_restart_delay=0.2,
                                 readiness=readiness):  # fmt: skip
            seen.update(batch)

    watch_dir.rmdir()  # gone: every start of the watcher fails
    task = asyncio.create_task(run())
    try:
        await _until(lambda: "watcher" in readiness.failures())
        write(watch_dir / "back.mp4")  # the directory is back, with a file in it
        await _until(lambda: watch_dir / "back.mp4" in seen)
        assert "watcher" not in readiness.failures()
        write(watch_dir / "new.mp4")  # and it is watched again
        await _until(lambda: watch_dir / "new.mp4" in seen)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


async def _until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110  (state changed by another task, no event)
            await asyncio.sleep(0.02)
