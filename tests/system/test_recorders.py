"""Real recorders with writer-aware completion (SPEC §2.14, §2.17): the installed script."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import make_settings
from tests.support.media import MOVFLAGS, record_with_ffmpeg
from tests.support.proc import Daemon, settings_env
from tests.support.seaweed import SeaweedS3

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.mark.parametrize("kind", ["regular", "faststart", "fragmented", "mkv"])
def test_recorder_exit_to_metadata_within_five_seconds(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon], kind: str,
) -> None:
    settings = make_settings(
        tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket, stream_timeout_seconds=30,
        complete_on_close_seconds=2, watch_extensions=".mp4,.MKV",
    )
    daemon = Daemon(settings_env(settings), tmp_path / "run.log")
    daemons.append(daemon)
    daemon.start()
    rel = "cam/rec.mkv" if kind == "mkv" else f"cam/{kind}.mp4"
    movflags = "" if kind == "mkv" else MOVFLAGS[kind]  # type: ignore[index]
    recorder = record_with_ffmpeg(settings.watch_dir / rel, seconds=4, movflags=movflags)
    assert recorder.wait(60) == 0, recorder.stderr.read() if recorder.stderr else ""
    exited = time.monotonic()
    view = bucket_view(s3_server, s3_bucket)
    view.wait_metadata([rel], timeout=25, alive=(daemon,))
    elapsed = time.monotonic() - exited
    docs = view.assert_converged(settings.watch_dir, [rel])
    doc = docs[rel]
    assert doc["completed_by"] == "writer_closed"
    assert elapsed < 5, f"metadata {elapsed:.1f} s after ffmpeg exited"
    head = view.client.head_object(Bucket=s3_bucket, Key=doc["s3_key"])
    assert head["ContentType"] == ("video/x-matroska" if kind == "mkv" else "video/mp4")
    assert doc["duration_seconds"] == pytest.approx(4, abs=0.5)
    print(f"{kind}: ffmpeg exit -> metadata {elapsed:.2f} s")
    assert daemon.stop() == 0


def _pausing_writer(source: bytes, dest: Path, pause: float, paused: threading.Event) -> None:
    """Writes half, holds the file open for ``pause`` seconds, writes the rest, closes."""
    half = len(source) // 2
    with dest.open("wb") as out:
        for start in range(0, half, 1 << 20):
            out.write(source[start:min(half, start + (1 << 20))])
            out.flush()
            time.sleep(0.05)
        paused.set()
        time.sleep(pause)
        out.write(source[half:])
        out.flush()


@pytest.mark.parametrize("hold", [True, False])
def test_a_paused_writer_holding_the_file(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon], sample_mp4: Path, hold: bool,
) -> None:
    timeout = 1.5
    settings = make_settings(
        tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket, stream_timeout_seconds=timeout,
        hold_while_open=hold,
    )
    daemon = Daemon(settings_env(settings), tmp_path / "run.log")
    daemons.append(daemon)
    daemon.start()
    source = sample_mp4.read_bytes()
    rel = "paused.mp4"
    paused = threading.Event()
    writer = threading.Thread(
        target=_pausing_writer, args=(source, settings.watch_dir / rel, 3 * timeout, paused)
    )
    writer.start()
    writer.join(60)
    view = bucket_view(s3_server, s3_bucket)
    if hold:
        view.wait_metadata([rel], timeout=30, alive=(daemon,))
        [doc] = view.assert_converged(settings.watch_dir, [rel]).values()
        assert doc["completed_by"] == "idle_timeout"
        held = [e for e in daemon.events() if e.get("event") == "stream_held_open"]
        assert held, "the hold was never logged"
    else:
        # The documented split: the pause ends the first stream with the first half; the
        # file grows again afterwards, so a new stream uploads the whole file.
        def two() -> bool:
            return len(view.metadata_keys(rel)) == 2

        from tests.system.conftest import wait_until_impl

        wait_until_impl(two, timeout=30, what="two metadata objects", alive=(daemon,))
        docs = sorted(view.metadata(rel), key=lambda d: d["total_size_bytes"])
        assert docs[0]["total_size_bytes"] == len(source) // 2
        assert docs[1]["total_size_bytes"] == len(source)
        assert view.get(docs[0]["s3_key"]) == source[: len(source) // 2]
        assert view.get(docs[1]["s3_key"]) == source
        assert {d["completed_by"] for d in docs} == {"idle_timeout"}
    assert daemon.stop() == 0
