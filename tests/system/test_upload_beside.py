"""``cefmp4 upload`` beside a running daemon on the embedded store (issue #26 item 3), and
its progress bar sharing a terminal with the log lines.

Beside a daemon, ``upload`` shares the SQLite store; a file the daemon follows (a recording
inside WATCH_DIR, or one it has an active stream of) gets no second stream: ``upload`` waits
for the daemon's object and reports it. Any other file is uploaded by ``upload`` itself.
"""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.proc import cefmp4_bin, run_cli
from tests.system.conftest import Rig, wait_until_impl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _ok_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith(("ok ", "same "))]


def test_upload_beside_the_daemon_of_a_file_it_does_not_know(
    rig: Rig, sample_mp4: Path
) -> None:
    rig.configure(stream_timeout_seconds=30)
    daemon = rig.daemon()
    daemon.start()
    outside = rig.tmp_path / "elsewhere" / "clip.mp4"
    outside.parent.mkdir()
    shutil.copyfile(sample_mp4, outside)
    result = run_cli(["upload", str(outside)], rig.env)
    assert result.returncode == 0, result.stderr
    assert "STATE_DIR" not in result.stderr
    [line] = _ok_lines(result.stdout)
    assert line.startswith(f"ok      {outside}")
    [doc] = rig.view.metadata("clip.mp4")
    assert doc["completed_by"] == "upload_command"
    assert rig.view.get(doc["s3_key"]) == outside.read_bytes()
    assert len(rig.view.video_keys("clip.mp4")) == 1
    # The daemon is untouched: it still answers and still uploads its own recordings.
    assert daemon.http_get("/readyz")[0] == 200
    shutil.copyfile(sample_mp4, Path(rig.env["WATCH_DIR"]) / "own.mp4")
    rig.view.wait_metadata(["own.mp4"], timeout=60, alive=(daemon,))
    assert daemon.stop() == 0


def test_upload_beside_the_daemon_of_a_file_it_follows(rig: Rig, sample_mp4: Path) -> None:
    """One stream, one object: the daemon's. ``upload`` waits for it and says so."""
    rig.configure(stream_timeout_seconds=4)
    daemon = rig.daemon()
    daemon.start()
    watched = Path(rig.env["WATCH_DIR"]) / "cam" / "rec.mp4"
    watched.parent.mkdir()
    shutil.copyfile(sample_mp4, watched)
    wait_until_impl(
        lambda: any(e.get("event") == "stream_started" for e in daemon.events()),
        timeout=30, what="the daemon's stream", alive=(daemon,),
    )
    began = time.monotonic()
    result = run_cli(["upload", str(watched)], rig.env)
    waited = time.monotonic() - began
    assert result.returncode == 0, result.stderr
    assert f"followed by the running cefmp4 (pid {daemon.proc.pid})" in result.stderr  # type: ignore[union-attr]
    [line] = _ok_lines(result.stdout)
    assert str(watched) in line
    [doc] = rig.view.assert_converged(Path(rig.env["WATCH_DIR"]), ["cam/rec.mp4"]).values()
    assert doc["completed_by"] == "idle_timeout"  # the daemon's own stream, not a second one
    assert doc["s3_key"] in line
    assert waited < 30
    started = [e for e in daemon.events() if e.get("event") == "stream_started"]
    assert len(started) == 1
    assert daemon.stop() == 0


def test_upload_takes_the_file_on_when_the_lock_holder_goes_away(
    rig: Rig, sample_mp4: Path
) -> None:
    """The lock's holder never completes the file (it is another `upload`, or a daemon that
    stops): once it is gone, `upload` uploads the file itself, under the lock."""
    rig.configure()
    state = Path(rig.env["STATE_DIR"])
    state.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, str(os.getpid()).encode())\n"
         "print('held', flush=True)\n"
         "time.sleep(2)\n", str(state / "lock")],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        watched = Path(rig.env["WATCH_DIR"]) / "w.mp4"
        shutil.copyfile(sample_mp4, watched)
        result = run_cli(["upload", str(watched)], rig.env)
    finally:
        holder.wait(30)
    assert result.returncode == 0, result.stderr
    assert f"pid {holder.pid} stopped before completing it; uploading it here" in result.stderr
    [line] = _ok_lines(result.stdout)
    assert str(watched) in line
    [doc] = rig.view.assert_converged(Path(rig.env["WATCH_DIR"]), ["w.mp4"]).values()
    assert doc["completed_by"] == "upload_command"


# --- the progress bar and the logs on one terminal ---------------------------------------


class Screen:
    """Just enough of a VT100 to replay what rich and the console logs write: text,
    CR/LF, cursor up/down/column, erase line; colours and cursor visibility are ignored."""

    CSI = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])")

    def __init__(self) -> None:
        self.lines: list[list[str]] = [[]]
        self.row = self.col = 0

    def _put(self, ch: str) -> None:
        line = self.lines[self.row]
        line.extend(" " * (self.col - len(line) + 1))
        line[self.col] = ch
        self.col += 1

    def feed(self, text: str) -> None:
        pos = 0
        while pos < len(text):
            match = self.CSI.match(text, pos)
            if match:
                self._csi(match.group(1), match.group(2))
                pos = match.end()
                continue
            ch = text[pos]
            pos += 1
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self.col = 0
                while len(self.lines) <= self.row:
                    self.lines.append([])
            elif ch >= " ":
                self._put(ch)

    def _csi(self, args: str, op: str) -> None:
        n = int(args) if args.isdigit() else 1
        if op == "A":
            self.row = max(0, self.row - n)
        elif op == "B":
            self.row += n
            while len(self.lines) <= self.row:
                self.lines.append([])
        elif op == "G":
            self.col = n - 1
        elif op == "K":
            line = self.lines[self.row]
            if args in ("", "0"):
                del line[self.col:]
            elif args == "2":
                line.clear()

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


def _in_a_terminal(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``argv`` with stdin, stdout and stderr on one pseudo-terminal of 120 columns."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
        env={**env, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"},
    )
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    chunk = b""
                if chunk:
                    out += chunk
                    continue
                if proc.poll() is not None:
                    break
            elif proc.poll() is not None:
                break
        return proc.wait(10), out.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_the_progress_bar_and_the_logs_share_a_terminal(rig: Rig, media_dir: Path) -> None:
    """At INFO on a terminal, every log line is printed whole, above the bar, and the
    (transient) bar is gone at the end: before, log lines were written through the bar,
    which drew itself again below each of them (three bars left on the screen)."""
    from tests.support.media import make_mp4

    big = make_mp4(media_dir / "bar-60mb.mp4", seconds=6, mbytes=60)
    rig.configure(log_level="INFO")
    env = {**rig.env, "LOG_FORMAT": "console"}
    code, raw = _in_a_terminal([cefmp4_bin(), "upload", str(big)], env, timeout=120)
    screen = Screen()
    screen.feed(raw)
    lines = screen.text()
    assert code == 0, "\n".join(lines)
    assert not [ln for ln in lines if "uploading 1 file(s)" in ln], "\n".join(lines)
    events = [ln for ln in lines if re.search(r"\[(info|warning)\s*\]", ln)]
    assert len([ln for ln in events if "part_uploaded" in ln]) >= 4, "\n".join(lines)
    assert len([ln for ln in events if "metadata_written" in ln]) == 1, "\n".join(lines)
    assert [ln for ln in lines if ln.startswith("ok ")], "\n".join(lines)
