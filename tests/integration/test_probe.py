"""FfprobeProber against the real ffprobe and real files."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from cefmp4.runtime.errors import ConfigError
from cefmp4.streams.probe import FfprobeProber, Prober
from tests.support.media import make_mp4


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_implements_the_protocol() -> None:
    prober: Prober = FfprobeProber()
    assert isinstance(prober, FfprobeProber)


async def test_regular_mp4(sample_mp4: Path) -> None:
    result = await FfprobeProber().probe(sample_mp4)
    assert result.error is None
    assert result.duration_seconds == pytest.approx(4.0, abs=0.1)
    assert result.format_name is not None
    assert "mp4" in result.format_name
    assert result.video_codec == "mpeg4"
    assert (result.width, result.height) == (640, 360)


async def test_fragmented_and_faststart(
    sample_fragmented_mp4: Path, sample_faststart_mp4: Path
) -> None:
    prober = FfprobeProber()
    for path in (sample_fragmented_mp4, sample_faststart_mp4):
        result = await prober.probe(path)
        assert result.duration_seconds == pytest.approx(4.0, abs=0.1), path


async def test_odd_duration(tmp_path: Path) -> None:
    path = make_mp4(tmp_path / "odd name é.MP4", seconds=2.36, mbytes=1)
    result = await FfprobeProber().probe(path)
    assert result.duration_seconds == pytest.approx(2.36, abs=0.1)


async def test_corrupt_file_gives_a_reason_not_an_exception(corrupt_mp4: Path) -> None:
    result = await FfprobeProber().probe(corrupt_mp4)
    assert result.duration_seconds is None
    assert result.error
    assert "\n" not in result.error


def _cut(source: Path, dest: Path, size: int) -> Path:
    dest.write_bytes(source.read_bytes()[:size])
    return dest


async def test_truncated_recording_gives_a_reason(tmp_path: Path, sample_mp4: Path) -> None:
    # A regular MP4 cut short has no moov atom: what a crashed recorder leaves behind.
    cut = _cut(sample_mp4, tmp_path / "cut.mp4", 3 * 1024 * 1024)
    result = await FfprobeProber().probe(cut)
    assert result.duration_seconds is None
    assert result.error


async def test_missing_and_empty_files(tmp_path: Path) -> None:
    prober = FfprobeProber()
    missing = await prober.probe(tmp_path / "nope.mp4")
    assert missing.duration_seconds is None
    assert missing.error
    (tmp_path / "empty.mp4").write_bytes(b"")
    empty = await prober.probe(tmp_path / "empty.mp4")
    assert empty.duration_seconds is None
    assert empty.error


async def test_timeout_kills_and_reaps_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    slow = _script(tmp_path / "slow-ffprobe", f'echo $$ > "{pid_file}"\nexec sleep 30')
    started = time.monotonic()
    result = await FfprobeProber(str(slow), timeout=0.5).probe(tmp_path / "x.mp4")
    assert time.monotonic() - started < 5
    assert result.duration_seconds is None
    assert result.error == "ffprobe timed out after 0.5 s"
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # killed and reaped: not even a zombie
        os.kill(pid, 0)


async def test_cancellation_kills_the_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    slow = _script(tmp_path / "slow-ffprobe", f'echo $$ > "{pid_file}"\nexec sleep 30')
    task = asyncio.create_task(FfprobeProber(str(slow)).probe(tmp_path / "x.mp4"))
    while not pid_file.exists() or not pid_file.read_text().strip():  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)


async def test_garbage_output_is_an_error(tmp_path: Path) -> None:
    liar = _script(tmp_path / "liar", "echo not-json")
    result = await FfprobeProber(str(liar)).probe(tmp_path / "x.mp4")
    assert result.duration_seconds is None
    assert result.error == "ffprobe printed invalid JSON"


async def test_duration_falls_back_to_the_video_stream(tmp_path: Path) -> None:
    json_out = (
        '{"streams": [{"codec_type": "audio", "duration": "9.0"},'
        ' {"codec_type": "video", "codec_name": "h264", "width": 2, "height": 2,'
        ' "duration": "3.5"}], "format": {"format_name": "mov", "duration": "N/A"}}'
    )
    fake = _script(tmp_path / "fake", f"echo '{json_out}'")
    result = await FfprobeProber(str(fake)).probe(tmp_path / "x.mp4")
    assert result.duration_seconds == 3.5
    assert result.error is None
    assert result.video_codec == "h264"


async def test_no_duration_at_all(tmp_path: Path) -> None:
    fake = _script(tmp_path / "fake", "echo '{\"format\": {}, \"streams\": []}'")
    result = await FfprobeProber(str(fake)).probe(tmp_path / "x.mp4")
    assert result.duration_seconds is None
    assert result.error == "ffprobe reported no duration"


async def test_ping_ok() -> None:
    await FfprobeProber().ping()


async def test_ping_missing_binary(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        await FfprobeProber(str(tmp_path / "no-ffprobe")).ping()
    assert info.value.setting == "FFPROBE_PATH"
    assert "not found" in info.value.message
    assert "FFPROBE_PATH" in info.value.message


async def test_ping_missing_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="not found"):
        await FfprobeProber().ping()


async def test_ping_not_executable(tmp_path: Path) -> None:
    plain = tmp_path / "ffprobe"
    plain.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError, match="not executable"):
        await FfprobeProber(str(plain)).ping()


async def test_ping_failing_binary(tmp_path: Path) -> None:
    broken = _script(tmp_path / "broken", "echo 'libavformat missing' >&2\nexit 127")
    with pytest.raises(ConfigError, match="libavformat missing"):
        await FfprobeProber(str(broken)).ping()
