"""The media helpers the other tests rely on: sizes, durations, growth."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.media import (
    GrowingWriter,
    ffprobe_duration,
    make_corrupt_mp4,
    make_mp4,
    record_with_ffmpeg,
    sha256_of,
)

MIB = 1024 * 1024


def test_sample_mp4(sample_mp4: Path) -> None:
    assert 11e6 < sample_mp4.stat().st_size < 13e6
    assert ffprobe_duration(sample_mp4) == pytest.approx(4.0, abs=0.1)


def test_fragmented_and_faststart_samples(
    sample_fragmented_mp4: Path, sample_faststart_mp4: Path
) -> None:
    data = sample_fragmented_mp4.read_bytes()
    assert b"moof" in data
    assert data.index(b"moov") < data.index(b"mdat")
    fast = sample_faststart_mp4.read_bytes()
    assert fast.index(b"moov") < fast.index(b"mdat")
    for path in (sample_fragmented_mp4, sample_faststart_mp4):
        assert ffprobe_duration(path) == pytest.approx(4.0, abs=0.1)


def test_make_mp4_is_quick_and_sized(tmp_path: Path) -> None:
    started = time.monotonic()
    path = make_mp4(tmp_path / "big.mp4", seconds=3, mbytes=20)
    elapsed = time.monotonic() - started
    assert 18e6 < path.stat().st_size < 22e6
    assert ffprobe_duration(path) == pytest.approx(3.0, abs=0.1)
    assert elapsed < 5  # ~0.4 s on two cores; generous for a loaded CI box


@pytest.mark.parametrize(("seconds", "mbytes"), [(1.5, 0.5), (6.2, 40), (2, None)])
def test_make_mp4_sizes_and_durations(tmp_path: Path, seconds: float, mbytes: float | None) -> None:
    path = make_mp4(tmp_path / "v.mp4", seconds=seconds, mbytes=mbytes)
    assert ffprobe_duration(path) == pytest.approx(seconds, abs=0.1)
    if mbytes is not None:
        assert path.stat().st_size == pytest.approx(mbytes * 1e6, rel=0.15)


def test_corrupt_mp4_is_unreadable(tmp_path: Path) -> None:
    path = make_corrupt_mp4(tmp_path / "bad.mp4", 2 * MIB)
    assert path.stat().st_size == 2 * MIB
    assert ffprobe_duration(path) is None
    assert make_corrupt_mp4(tmp_path / "again.mp4", 2 * MIB).read_bytes() == path.read_bytes()


def test_growing_writer_makes_an_identical_copy(tmp_path: Path, sample_mp4: Path) -> None:
    dest = tmp_path / "copy.mp4"
    size = sample_mp4.stat().st_size
    writer = GrowingWriter(sample_mp4, dest, rate=size / 1.0).start()
    time.sleep(0.3)
    seen = dest.stat().st_size
    assert 0 < seen < size  # visibly growing
    writer.wait(timeout=10)
    assert writer.done
    assert writer.bytes_written == size
    assert sha256_of(dest) == sha256_of(sample_mp4)


def test_growing_writer_patches_the_header_last(tmp_path: Path, sample_mp4: Path) -> None:
    dest = tmp_path / "patched.mp4"
    original = sample_mp4.read_bytes()
    writer = GrowingWriter(
        sample_mp4, dest, rate=len(original) / 0.5, patch=(0, 8), patch_delay=0.5
    ).start()
    deadline = time.monotonic() + 10
    while writer.bytes_written < len(original) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)  # well inside patch_delay: the placeholder is on disk
    head = dest.read_bytes()[:8]
    assert head != original[:8]
    assert not writer.patched
    writer.wait(timeout=10)
    assert writer.patched
    assert dest.read_bytes() == original


def test_growing_writer_stop_leaves_a_prefix(tmp_path: Path, sample_mp4: Path) -> None:
    dest = tmp_path / "prefix.mp4"
    with GrowingWriter(sample_mp4, dest, rate=2 * MIB) as writer:
        time.sleep(0.3)
    assert writer.done
    written = dest.read_bytes()
    assert 0 < len(written) < sample_mp4.stat().st_size
    assert sample_mp4.read_bytes().startswith(written)


def test_growing_writer_surfaces_errors(tmp_path: Path, sample_mp4: Path) -> None:
    writer = GrowingWriter(sample_mp4, tmp_path / "no-such-dir" / "x.mp4", rate=MIB).start()
    with pytest.raises(FileNotFoundError):
        writer.wait(timeout=5)


@pytest.mark.slow
@pytest.mark.parametrize("movflags", ["", "+faststart", "+frag_keyframe+empty_moov"])
def test_real_recorder_grows_past_two_parts(tmp_path: Path, movflags: str) -> None:
    path = tmp_path / "live.mp4"
    started = time.monotonic()
    recorder = record_with_ffmpeg(path, seconds=7, movflags=movflags)
    try:
        time.sleep(3)
        mid = path.stat().st_size
        assert recorder.poll() is None  # still recording in real time
        assert mid > 3 * MIB
        _, stderr = recorder.communicate(timeout=30)
    finally:
        recorder.kill()
        recorder.wait()
    assert recorder.returncode == 0, stderr.decode()
    assert time.monotonic() - started > 6  # it was real time, not as fast as possible
    assert path.stat().st_size > 2 * 5 * MIB
    assert ffprobe_duration(path) == pytest.approx(7.0, abs=0.1)
