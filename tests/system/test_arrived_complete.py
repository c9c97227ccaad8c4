"""Files that arrive complete (issue #26 item 2, SPEC §2.14): with COMPLETE_ON_CLOSE_SECONDS,
a file no writer holds completes the close window after cefmp4 saw it, not after the idle
timeout — segment recorders that close a segment before cefmp4 looks (ffmpeg ``-f segment``
and ``-f hls`` at transcoding speed), a finished file moved or copied in. A file a paused
writer still holds open for writing is not completed early.

Times are measured from the segment's (or the moved/copied file's) last change to the
metadata's ``processed_at_utc``: both are this host's wall clock, and neither depends on how
often the test polls the bucket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.media import FPS
from tests.support.proc import Daemon
from tests.system.conftest import Rig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLOSE_WINDOW = 2.0  # the README's recorder profile
IDLE_TIMEOUT = 30.0
SLACK = 1.0  # the bound: close window + 1 s


def _profile(rig: Rig, **overrides: Any) -> Daemon:
    profile: dict[str, Any] = {
        "stream_timeout_seconds": IDLE_TIMEOUT, "complete_on_close_seconds": CLOSE_WINDOW,
        "hold_while_open": True, "watch_extensions": ".mp4,.ts",
    }
    rig.configure(**{**profile, **overrides})
    daemon = rig.daemon()
    daemon.start()
    return daemon


def _processed_at(doc: dict[str, Any]) -> float:
    return datetime.fromisoformat(doc["processed_at_utc"]).timestamp()


def _segmenter(out: Path, kind: str, seconds: int, pace: str) -> list[str]:
    """ffmpeg cutting 1 s segments. ``burst``: at transcoding speed (no ``-re``), so each
    segment is written and closed in milliseconds, before cefmp4 looks (a batch job, a
    recorder catching up); ``live``: in real time, each segment open while it is written."""
    live = ["-re"] if pace == "live" else []
    source = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *live, "-f",
              "lavfi",
              "-i", f"testsrc2=size=320x180:rate={FPS}", "-t", str(seconds), "-c:v", "mpeg4",
              "-g", str(FPS), "-pix_fmt", "yuv420p"]
    if kind == "segment":
        return [*source, "-f", "segment", "-segment_time", "1", "-reset_timestamps", "1",
                str(out / "seg%03d.mp4")]
    return [*source, "-f", "hls", "-hls_time", "1", "-hls_list_size", "0",
            "-hls_segment_filename", str(out / "seg%03d.ts"), str(out / "index.m3u8")]


@pytest.mark.parametrize("pace", ["burst", "live"])
@pytest.mark.parametrize("kind", ["segment", "hls"])
def test_segments_complete_within_the_close_window(rig: Rig, kind: str, pace: str) -> None:
    daemon = _profile(rig)
    out = Path(rig.env["WATCH_DIR"]) / "cam"
    out.mkdir()
    subprocess.run(_segmenter(out, kind, 4, pace), check=True, timeout=60)
    ext = ".mp4" if kind == "segment" else ".ts"
    rels = sorted(f"cam/{p.name}" for p in out.iterdir() if p.suffix == ext)
    assert len(rels) >= 3, rels
    rig.view.wait_metadata(rels, timeout=IDLE_TIMEOUT + 15, alive=(daemon,))
    docs = rig.view.assert_converged(Path(rig.env["WATCH_DIR"]), rels)
    lags = {}
    for rel, doc in docs.items():
        closed = (Path(rig.env["WATCH_DIR"]) / rel).stat().st_mtime
        lags[rel] = _processed_at(doc) - closed
    print(f"-f {kind} ({pace}): segment close -> metadata " + ", ".join(
        f"{rel.rsplit('/', 1)[1]} {lag:.2f} s" for rel, lag in sorted(lags.items())))
    assert {d["completed_by"] for d in docs.values()} == {"writer_closed"}
    assert max(lags.values()) < CLOSE_WINDOW + SLACK, lags
    assert daemon.stop() == 0


@pytest.mark.parametrize("how", ["moved", "copied"])
def test_a_finished_file_brought_in_completes_within_the_close_window(
    rig: Rig, sample_mp4: Path, how: str
) -> None:
    daemon = _profile(rig)
    watch = Path(rig.env["WATCH_DIR"])
    outside = rig.tmp_path / "outside"
    outside.mkdir()
    staged = outside / "finished.mp4"
    shutil.copyfile(sample_mp4, staged)
    if how == "moved":
        os.rename(staged, watch / "finished.mp4")  # the same file system: one rename
    else:
        shutil.copyfile(staged, watch / "finished.mp4")  # open, write, close
    arrived = time.time()
    rig.view.wait_metadata(["finished.mp4"], timeout=IDLE_TIMEOUT + 15, alive=(daemon,))
    [doc] = rig.view.assert_converged(watch, ["finished.mp4"]).values()
    lag = _processed_at(doc) - arrived
    print(f"{how} in -> metadata {lag:.2f} s ({doc['completed_by']})")
    assert doc["completed_by"] == "writer_closed"
    assert lag < CLOSE_WINDOW + SLACK
    assert daemon.stop() == 0


def test_a_file_found_at_start_up_completes_within_the_close_window(
    rig: Rig, sample_mp4: Path
) -> None:
    watch = rig.tmp_path / "watch"  # make_settings' WATCH_DIR
    watch.mkdir()
    shutil.copyfile(sample_mp4, watch / "waiting.mp4")
    began = time.time()
    daemon = _profile(rig)
    rig.view.wait_metadata(["waiting.mp4"], timeout=IDLE_TIMEOUT + 15, alive=(daemon,))
    [doc] = rig.view.assert_converged(watch, ["waiting.mp4"]).values()
    ready = next(e for e in daemon.events() if e.get("event") == "ready")
    print(f"found at start-up: start -> metadata {_processed_at(doc) - began:.2f} s")
    assert doc["completed_by"] == "writer_closed"
    assert _processed_at(doc) - datetime.fromisoformat(ready["timestamp"]).timestamp() < (
        CLOSE_WINDOW + SLACK)
    assert daemon.stop() == 0


def _pausing_writer(source: bytes, dest: Path, opened: threading.Event, pause: float) -> None:
    """Opens ``dest`` before cefmp4 can see it, writes half, holds it open for ``pause``
    seconds without writing, then writes the rest and closes."""
    with dest.open("wb") as out:
        half = len(source) // 2
        out.write(source[:half])
        out.flush()
        opened.set()
        time.sleep(pause)
        out.write(source[half:])


@pytest.mark.parametrize("hold", [False, True], ids=["idle-timeout", "hold-while-open"])
def test_a_paused_writer_is_not_completed_early(rig: Rig, sample_mp4: Path, hold: bool) -> None:
    """The writer holds the file open through a pause longer than the close window (and, with
    HOLD_WHILE_OPEN, longer than the idle timeout): had cefmp4 completed the half-written file,
    the bucket would hold two objects (the half, then the whole file as a new stream)."""
    pause = 3 * CLOSE_WINDOW
    daemon = _profile(rig, stream_timeout_seconds=CLOSE_WINDOW + 1 if hold else IDLE_TIMEOUT,
                      hold_while_open=hold)
    source = sample_mp4.read_bytes()
    opened = threading.Event()
    writer = threading.Thread(
        target=_pausing_writer,
        args=(source, Path(rig.env["WATCH_DIR"]) / "paused.mp4", opened, pause),
    )
    writer.start()
    writer.join(60)
    closed = time.time()
    rig.view.wait_metadata(["paused.mp4"], timeout=IDLE_TIMEOUT + 15, alive=(daemon,))
    [doc] = rig.view.assert_converged(Path(rig.env["WATCH_DIR"]), ["paused.mp4"]).values()
    assert doc["completed_by"] == "writer_closed"
    assert _processed_at(doc) - closed < CLOSE_WINDOW + SLACK
    assert daemon.stop() == 0
