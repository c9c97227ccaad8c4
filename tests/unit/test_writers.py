"""Writer signals (inotify close-write, /proc open-for-write) and the completion policy."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cefmp4.core.ending import CompletedBy
from cefmp4.intake.writers import (
    CloseWatcher,
    Ident,
    WriterScanner,
    no_writer_now,
    probe_signals,
    scan_writers,
)
from cefmp4.streams.writer_policy import CompletionPolicy


def _ident(path: Path) -> Ident:
    st = path.stat()
    return (st.st_dev, st.st_ino)


# --- /proc ---------------------------------------------------------------------------------


def test_scan_sees_this_process_writing_but_not_reading(tmp_path: Path) -> None:
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"x")
    ident = _ident(path)
    with open(path, "rb"):
        assert scan_writers([ident]).writers[ident] == frozenset()
    with open(path, "ab"):
        assert os.getpid() in scan_writers([ident]).writers[ident]
    with open(path, "r+b"):  # O_RDWR counts too
        assert os.getpid() in scan_writers([ident]).writers[ident]
    assert scan_writers([ident]).writers[ident] == frozenset()


def test_scan_sees_another_process_and_a_deleted_file(tmp_path: Path) -> None:
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"")
    ident = _ident(path)
    with open(path, "ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.read()"],
            stdout=out, stdin=subprocess.PIPE,
        )
    try:
        path.unlink()  # the writer keeps the inode alive
        assert child.pid in scan_writers([ident]).writers[ident]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    assert child.pid not in scan_writers([ident]).writers[ident]


def test_scan_reads_fdinfo_flags(tmp_path: Path) -> None:
    """A fake /proc: the access mode comes from fdinfo, not from the link."""
    target = tmp_path / "rec.mp4"
    target.write_bytes(b"x")
    ident = _ident(target)
    proc = tmp_path / "proc"
    for pid, flags in ((10, "0100001"), (11, "0100000"), (12, "02"), (13, "garbage")):
        (proc / str(pid) / "fd").mkdir(parents=True)
        (proc / str(pid) / "fdinfo").mkdir()
        (proc / str(pid) / "fd" / "4").symlink_to(target)
        (proc / str(pid) / "fdinfo" / "4").write_text(f"pos:\t0\nflags:\t{flags}\nmnt_id:\t1\n")
    (proc / "20" / "fd").mkdir(parents=True)
    (proc / "20" / "fd" / "1").symlink_to("socket:[123]")
    (proc / "self").mkdir()
    result = scan_writers([ident], proc)
    assert result.writers[ident] == frozenset({10, 12})
    assert result.processes == 5


async def test_scanner_shares_scans_and_answers_off_loop(tmp_path: Path) -> None:
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"x")
    ident = _ident(path)
    scanner = WriterScanner(cache_s=60)
    with open(path, "ab"):
        results = await asyncio.gather(*(scanner.writers_of(ident) for _ in range(5)))
    assert all(r is not None and os.getpid() in r for r in results)
    assert scanner.scans == 1  # five streams asking at once cost one walk of /proc


async def test_scanner_without_proc_says_unknown(tmp_path: Path) -> None:
    scanner = WriterScanner(tmp_path / "no-proc")
    assert await scanner.writers_of((1, 2)) is None


# --- inotify -------------------------------------------------------------------------------


async def test_close_watcher_sees_a_writer_close(tmp_path: Path) -> None:
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"")
    watcher = CloseWatcher()
    assert watcher.start(), watcher.error
    closed = asyncio.Event()
    ident = _ident(path)
    assert watcher.watch(ident, str(path), closed.set)
    task = asyncio.create_task(watcher.run())
    try:
        with open(path, "rb") as f:  # a reader closing is not a writer closing
            f.read()
        with open(path, "ab") as f:
            f.write(b"data")
            await asyncio.sleep(0)
            assert watcher.closed_at(ident) is None
        async with asyncio.timeout(5):
            await closed.wait()
        assert watcher.closed_at(ident) is not None
        # Renamed: the watch follows the inode.
        closed.clear()
        path.rename(tmp_path / "renamed.mp4")
        with open(tmp_path / "renamed.mp4", "ab") as f:
            f.write(b"more")
        async with asyncio.timeout(5):
            await closed.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        watcher.unwatch(ident)
        watcher.close()
    assert watcher.closed_at(ident) is None


def test_close_watcher_refuses_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"")
    watcher = CloseWatcher()
    assert watcher.start()
    try:
        assert not watcher.watch((0, 0), str(path), lambda: None)
        assert not watcher.watch(_ident(path), str(tmp_path / "gone.mp4"), lambda: None)
    finally:
        watcher.close()


# --- the policy ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeScanner:
    def __init__(self) -> None:
        self.writers: frozenset[int] | None = frozenset()
        self.calls = 0

    async def writers_of(self, ident: Ident) -> frozenset[int] | None:
        self.calls += 1
        return self.writers


IDENT = (1, 2)


def _policy(clock: FakeClock, scanner: FakeScanner, **kw: object) -> tuple[
    CompletionPolicy, CloseWatcher
]:
    closes = CloseWatcher(clock)
    policy = CompletionPolicy(
        complete_on_close=kw.get("complete_on_close"),  # type: ignore[arg-type]
        hold_while_open=bool(kw.get("hold_while_open", False)),
        max_hold=float(kw.get("max_hold", 100.0)),  # type: ignore[arg-type]
        closes=closes, scanner=scanner, clock=clock,  # type: ignore[arg-type]
    )
    return policy, closes


async def test_defaults_are_the_idle_timeout() -> None:
    clock, scanner = FakeClock(), FakeScanner()
    policy, _ = _policy(clock, scanner)
    assert not policy.enabled
    state = policy.track(IDENT, "/x", lambda: None)
    v = await policy.decide(state, fingerprint=(1, 1), idle_for=29, timeout=30)
    assert v.complete is None
    v = await policy.decide(state, fingerprint=(1, 1), idle_for=30, timeout=30)
    assert v.complete is CompletedBy.IDLE_TIMEOUT
    assert scanner.calls == 0


async def test_writer_closed_completes_after_n_unchanged_seconds() -> None:
    clock, scanner = FakeClock(), FakeScanner()
    policy, closes = _policy(clock, scanner, complete_on_close=2.0)
    state = policy.track(IDENT, "/x", lambda: None)
    fp = (100, 5)
    assert (await policy.decide(state, fingerprint=fp, idle_for=0.1, timeout=30)).complete is None
    closes.note_close(IDENT)
    v = await policy.decide(state, fingerprint=fp, idle_for=0.2, timeout=30)
    assert v.complete is None
    assert v.recheck_in == pytest.approx(2.0)
    clock.now += 1.0
    v = await policy.decide(state, fingerprint=fp, idle_for=1.2, timeout=30)
    assert v.complete is None
    assert v.recheck_in == pytest.approx(1.0)
    clock.now += 1.0
    v = await policy.decide(state, fingerprint=fp, idle_for=2.2, timeout=30)
    assert v.complete is CompletedBy.WRITER_CLOSED
    assert scanner.calls == 1  # /proc is consulted only when the answer would be "complete"


async def test_a_change_after_the_close_waits_for_the_next_close() -> None:
    """+faststart / a reopen: written again after a close, so that close does not count."""
    clock, scanner = FakeClock(), FakeScanner()
    policy, closes = _policy(clock, scanner, complete_on_close=2.0)
    state = policy.track(IDENT, "/x", lambda: None)
    closes.note_close(IDENT)
    await policy.decide(state, fingerprint=(100, 5), idle_for=0, timeout=30)
    clock.now += 1
    await policy.decide(state, fingerprint=(200, 6), idle_for=0, timeout=30)  # rewritten
    clock.now += 5
    v = await policy.decide(state, fingerprint=(200, 6), idle_for=5, timeout=30)
    assert v.complete is None
    closes.note_close(IDENT)
    await policy.decide(state, fingerprint=(200, 6), idle_for=5, timeout=30)
    clock.now += 2
    v = await policy.decide(state, fingerprint=(200, 6), idle_for=7, timeout=30)
    assert v.complete is CompletedBy.WRITER_CLOSED


async def test_a_visible_writer_vetoes_the_close() -> None:
    clock, scanner = FakeClock(), FakeScanner()
    policy, closes = _policy(clock, scanner, complete_on_close=2.0)
    state = policy.track(IDENT, "/x", lambda: None)
    closes.note_close(IDENT)
    await policy.decide(state, fingerprint=(1, 1), idle_for=0, timeout=30)
    clock.now += 3
    scanner.writers = frozenset({42})  # reopened for writing, nothing written yet
    v = await policy.decide(state, fingerprint=(1, 1), idle_for=3, timeout=30)
    assert v.complete is None
    scanner.writers = frozenset()
    v = await policy.decide(state, fingerprint=(1, 1), idle_for=3.5, timeout=30)
    assert v.complete is CompletedBy.WRITER_CLOSED


async def test_hold_while_open_until_closed() -> None:
    clock, scanner = FakeClock(), FakeScanner()
    policy, _ = _policy(clock, scanner, hold_while_open=True, max_hold=100)
    state = policy.track(IDENT, "/x", lambda: None)
    scanner.writers = frozenset({7})
    for idle in (30, 60, 90):
        clock.now += 30
        assert (await policy.decide(state, fingerprint=(1, 1), idle_for=idle,
                                    timeout=30)).complete is None
    scanner.writers = frozenset()
    v = await policy.decide(state, fingerprint=(1, 1), idle_for=91, timeout=30)
    assert v.complete is CompletedBy.WRITER_CLOSED


async def test_hold_expires_and_resets_on_growth() -> None:
    clock, scanner = FakeClock(), FakeScanner()

    async def held(fp: tuple[int, int], idle: float) -> bool:
        v = await policy.decide(state, fingerprint=fp, idle_for=idle, timeout=30)
        return v.complete is None

    policy, _ = _policy(clock, scanner, hold_while_open=True, max_hold=50)
    state = policy.track(IDENT, "/x", lambda: None)
    scanner.writers = frozenset({7})
    assert await held((1, 1), 30)
    clock.now += 40
    assert await held((1, 1), 70)
    # It grew: the hold starts over at the next idle timeout.
    assert await held((2, 2), 0)
    clock.now += 30
    assert await held((2, 2), 30)
    clock.now += 49
    assert await held((2, 2), 79)
    clock.now += 1
    v = await policy.decide(state, fingerprint=(2, 2), idle_for=80, timeout=30)
    assert v.complete is CompletedBy.HOLD_EXPIRED


async def test_no_visible_signal_means_the_idle_timeout() -> None:
    clock, scanner = FakeClock(), FakeScanner()
    scanner.writers = None  # /proc not readable
    policy, _ = _policy(clock, scanner, hold_while_open=True, complete_on_close=1.0)
    state = policy.track(IDENT, "/x", lambda: None)
    v = await policy.decide(state, fingerprint=(1, 1), idle_for=30, timeout=30)
    assert v.complete is CompletedBy.IDLE_TIMEOUT


class FakeProver:
    """Answers for the kernel's lease: None (nobody writes) or why not."""

    def __init__(self, answer: str | None = None) -> None:
        self.answer = answer
        self.asked: list[tuple[int, str]] = []

    async def __call__(self, fd: int, path: str) -> str | None:
        self.asked.append((fd, path))
        return self.answer


def _proving(clock: FakeClock, prover: FakeProver, **kw: object) -> tuple[
    CompletionPolicy, CloseWatcher
]:
    closes = CloseWatcher(clock)
    policy = CompletionPolicy(
        complete_on_close=2.0, hold_while_open=bool(kw.get("hold_while_open", False)),
        max_hold=100.0, closes=closes, scanner=FakeScanner(),  # type: ignore[arg-type]
        prove_no_writer=prover, clock=clock,
    )
    return policy, closes


async def test_a_file_closed_before_it_was_seen_completes_a_window_after() -> None:
    """No close event will come (it happened before the watch): the window runs from the
    first look, then the kernel is asked once."""
    clock, prover = FakeClock(), FakeProver(None)
    policy, _ = _proving(clock, prover)
    state = policy.track(IDENT, "/w/seg001.ts", lambda: None, 7)
    v = await policy.decide(state, fingerprint=(100, 5), idle_for=0.0, timeout=30)
    assert v.complete is None
    assert v.recheck_in == pytest.approx(2.0)  # the stream wakes up when the window ends
    clock.now += 1.5
    v = await policy.decide(state, fingerprint=(100, 5), idle_for=1.5, timeout=30)
    assert (v.complete, v.recheck_in) == (None, pytest.approx(0.5))
    assert prover.asked == []  # not before the window ends
    clock.now += 0.5
    v = await policy.decide(state, fingerprint=(100, 5), idle_for=2.0, timeout=30)
    assert v.complete is CompletedBy.WRITER_CLOSED
    assert prover.asked == [(7, "/w/seg001.ts")]


async def test_a_change_restarts_the_window() -> None:
    clock, prover = FakeClock(), FakeProver(None)
    policy, _ = _proving(clock, prover)
    state = policy.track(IDENT, "/x", lambda: None, 7)
    await policy.decide(state, fingerprint=(100, 5), idle_for=0, timeout=30)
    clock.now += 1.9
    v = await policy.decide(state, fingerprint=(200, 6), idle_for=0, timeout=30)  # grew
    assert v.recheck_in == pytest.approx(2.0)
    clock.now += 1.9
    assert (await policy.decide(state, fingerprint=(200, 6), idle_for=1.9,
                                timeout=30)).complete is None
    assert prover.asked == []


async def test_a_writer_holding_the_file_open_is_not_completed_early() -> None:
    """The lease is refused (a paused recorder holds the file): asked once for these bytes,
    then the idle timeout rules; a change opens a new window and a new question."""
    clock, prover = FakeClock(), FakeProver("a process holds the file open for writing")
    policy, _ = _proving(clock, prover)
    state = policy.track(IDENT, "/x", lambda: None, 7)
    await policy.decide(state, fingerprint=(100, 5), idle_for=0, timeout=30)
    for idle in (2.0, 5.0, 29.0):
        clock.now += idle - (clock.now - 1000.0)
        v = await policy.decide(state, fingerprint=(100, 5), idle_for=idle, timeout=30)
        assert v.complete is None
    assert len(prover.asked) == 1
    clock.now += 1.0
    v = await policy.decide(state, fingerprint=(100, 5), idle_for=30, timeout=30)
    assert v.complete is CompletedBy.IDLE_TIMEOUT
    state2 = policy.track(IDENT, "/x", lambda: None, 7)
    await policy.decide(state2, fingerprint=(1, 1), idle_for=0, timeout=30)
    clock.now += 2
    await policy.decide(state2, fingerprint=(1, 1), idle_for=2, timeout=30)
    await policy.decide(state2, fingerprint=(2, 2), idle_for=0, timeout=30)
    clock.now += 2
    await policy.decide(state2, fingerprint=(2, 2), idle_for=2, timeout=30)
    assert len(prover.asked) == 3


async def test_a_close_event_keeps_its_own_window() -> None:
    """A close seen after the file was: the window runs from the close, not the first look."""
    clock, prover = FakeClock(), FakeProver(None)
    policy, closes = _proving(clock, prover)
    state = policy.track(IDENT, "/x", lambda: None, 7)
    await policy.decide(state, fingerprint=(100, 5), idle_for=0, timeout=30)
    clock.now += 1.5
    closes.note_close(IDENT)
    await policy.decide(state, fingerprint=(100, 5), idle_for=1.5, timeout=30)
    clock.now += 1.0
    v = await policy.decide(state, fingerprint=(100, 5), idle_for=2.5, timeout=30)
    assert (v.complete, v.recheck_in) == (None, pytest.approx(1.0))
    clock.now += 1.0
    v = await policy.decide(state, fingerprint=(100, 5), idle_for=3.5, timeout=30)
    assert v.complete is CompletedBy.WRITER_CLOSED
    assert prover.asked == []


async def test_without_a_descriptor_nothing_is_asked() -> None:
    clock, prover = FakeClock(), FakeProver(None)
    policy, _ = _proving(clock, prover)
    state = policy.track(IDENT, "/x", lambda: None)
    await policy.decide(state, fingerprint=(1, 1), idle_for=0, timeout=30)
    clock.now += 5
    assert (await policy.decide(state, fingerprint=(1, 1), idle_for=5,
                                timeout=30)).complete is None
    assert prover.asked == []


def test_no_writer_now_asks_the_kernel(tmp_path: Path) -> None:
    """The real lease: refused while another process holds the file open for writing (a
    paused recorder), granted and given back once it closed; a reader does not count."""
    path = tmp_path / "rec.mp4"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys,time; f=open(sys.argv[1],'ab'); "
         "print('open', flush=True); time.sleep(60)", str(path)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline() == "open\n"
        why = no_writer_now(fd, str(path))
        assert why is not None
        assert "open for writing" in why
        writer.kill()
        writer.wait(10)
        reader = os.open(path, os.O_RDONLY)
        assert no_writer_now(fd, str(path)) is None
        os.close(reader)
        # Given back: a writer opening now is not made to wait for a lease break.
        with path.open("ab") as again:
            again.write(b"y")
    finally:
        writer.kill()
        writer.wait(10)
        os.close(fd)


def test_check_reports_both_signals() -> None:
    report = probe_signals()
    assert report.close_events is None  # inotify works on this Linux host
    assert report.open_writers is None or "processes" in report.open_writers
    text = "\n".join(report.lines)
    assert "close-write events (inotify): available" in text
    assert "idle timeout" in text


def test_check_without_proc(tmp_path: Path) -> None:
    report = probe_signals(tmp_path)
    assert report.open_writers is not None
    assert "not mounted" in report.open_writers
