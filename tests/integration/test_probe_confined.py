"""ffprobe reads the recording and nothing else (review #10): a ``*.mp4`` that is really an
HLS playlist naming a segment outside WATCH_DIR used to be probed as ``hls``, and the
metadata reported the outside file's duration. Real ffprobe, real media made by ffmpeg."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cefmp4.config.settings import load_settings
from cefmp4.core.keys import metadata_key
from cefmp4.runtime.app import App
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.probe import FfprobeProber, ProbeResult
from tests.support.media import ffprobe_duration, make_mp4

SEGMENT_SECONDS = 3.0


@pytest.fixture
def outside_segment(tmp_path: Path) -> Path:
    """A real MPEG-TS file outside the watch directory."""
    return make_mp4(tmp_path / "outside" / "secret.ts", seconds=SEGMENT_SECONDS, mbytes=0.5)


@pytest.fixture
def watch(tmp_path: Path) -> Path:
    path = tmp_path / "watch"
    path.mkdir()
    return path


def playlist(path: Path, segment: Path) -> Path:
    """An HLS playlist (text) saved under a video's name, naming ``segment``."""
    path.write_text(
        "#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:4\n#EXT-X-MEDIA-SEQUENCE:0\n"
        f"#EXTINF:{SEGMENT_SECONDS:.1f},\n{segment}\n#EXT-X-ENDLIST\n"
    )
    return path


@pytest.fixture
def held() -> Iterator[list[int]]:
    """Descriptors to close at the end of the test."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        os.close(fd)


async def probe_both_ways(path: Path, fds: list[int]) -> list[ProbeResult]:
    """Probed by its path, and as the pipeline probes: through a held descriptor."""
    fd = os.open(path, os.O_RDONLY)
    fds.append(fd)
    prober = FfprobeProber()
    return [await prober.probe(path), await prober.probe(Path(f"/proc/{os.getpid()}/fd/{fd}"))]


async def test_a_playlist_named_mp4_is_not_followed(
    watch: Path, outside_segment: Path, held: list[int]
) -> None:
    fake = playlist(watch / "x.mp4", outside_segment)
    # Unconfined, ffprobe takes it for HLS and reports the outside file: the hole.
    assert ffprobe_duration(fake) == pytest.approx(SEGMENT_SECONDS, abs=0.2)
    for result in await probe_both_ways(fake, held):
        assert result.duration_seconds is None
        assert result.error == (
            "not probed: its content is hls, not its name's mov,mp4,m4a,3gp,3g2,mj2"
        )
        assert result.format_name is None


@pytest.mark.parametrize(
    ("name", "formats"),
    [("a.mp4", "mov,mp4"), ("b.MOV", "mov,mp4"), ("c.mkv", "matroska"), ("d.ts", "mpegts")],
)
async def test_real_containers_still_probe(
    tmp_path: Path, held: list[int], name: str, formats: str
) -> None:
    path = make_mp4(tmp_path / name, seconds=2.0, mbytes=0.5)
    for result in await probe_both_ways(path, held):
        assert result.error is None, result.error
        assert result.duration_seconds == pytest.approx(2.0, abs=0.15)
        assert result.format_name is not None
        assert result.format_name.startswith(formats)


async def test_a_file_that_is_not_its_container_cannot_be_probed(
    tmp_path: Path, held: list[int]
) -> None:
    matroska = make_mp4(tmp_path / "real.mkv", seconds=1.0, mbytes=0.3)
    disguised = tmp_path / "disguised.mp4"
    disguised.write_bytes(matroska.read_bytes())
    for result in await probe_both_ways(disguised, held):
        assert result.duration_seconds is None
        assert result.error is not None
        assert "its content is matroska,webm" in result.error


async def test_the_metadata_of_a_disguised_playlist_has_no_duration(
    tmp_path: Path, watch: Path, outside_segment: Path
) -> None:
    fake = playlist(watch / "x.mp4", outside_segment)
    store = MemoryObjectStore("test-bucket")
    settings = load_settings(
        watch_dir=watch, state_dir=tmp_path / "state", s3_bucket_name="test-bucket",
        prom_port=0, log_format="console", rescan_interval_seconds=0,
    )  # fmt: skip
    results = await App(settings, objects=store).run_burst()
    record = results[fake]
    assert record is not None  # still uploaded
    assert store.objects[record.key].body == fake.read_bytes()
    doc = json.loads(store.objects[metadata_key(record.key)].body)
    assert doc["duration_seconds"] is None  # not the outside segment's 3 s
    assert "its content is hls" in doc["duration_error"]


async def test_a_deleted_file_is_probed_as_its_container_through_its_descriptor(
    tmp_path: Path, held: list[int]
) -> None:
    """/proc/<pid>/fd/<n> of a deleted file reads ``… (deleted)``: the name still counts."""
    path = make_mp4(tmp_path / "gone.mkv", seconds=1.0, mbytes=0.3)
    fd = os.open(path, os.O_RDONLY)
    held.append(fd)
    path.unlink()
    result = await FfprobeProber().probe(Path(f"/proc/{os.getpid()}/fd/{fd}"))
    assert result.error is None, result.error
    assert result.format_name == "matroska,webm"
    assert result.duration_seconds == pytest.approx(1.0, abs=0.15)
