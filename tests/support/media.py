"""Real MP4 files made with ffmpeg, and writers that make files grow like a recorder.

The video is ``testsrc2`` with heavy temporal noise encoded as MPEG-4 Part 2: noise barely
compresses, so a few seconds give tens of megabytes (several 5 MiB parts) in well under a
second of CPU, and the rate control lands within a few percent of a requested size.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

import pytest

__all__ = [
    "FPS",
    "MOVFLAGS",
    "GrowingWriter",
    "Kind",
    "corrupt_mp4",
    "ffprobe_duration",
    "make_corrupt_mp4",
    "make_mp4",
    "media_dir",
    "record_with_ffmpeg",
    "sample_faststart_mp4",
    "sample_fragmented_mp4",
    "sample_mp4",
    "sha256_of",
]

Kind = Literal["regular", "fragmented", "faststart"]

FPS = 25
MOVFLAGS: dict[Kind, str] = {
    "regular": "",
    "faststart": "+faststart",
    # A fragment per keyframe and a keyframe per second (-g FPS), as live recorders do.
    "fragmented": "+frag_keyframe+empty_moov",
}

# (size, bytes per frame the size comfortably reaches) — measured with the filter below.
_RESOLUTIONS = [("320x180", 100_000), ("640x360", 400_000), ("1280x720", 1_600_000),
                ("1920x1080", 3_600_000)]


def _source(size: str) -> str:
    return f"testsrc2=size={size}:rate={FPS},noise=alls=100:allf=t+u"


def _ffmpeg() -> str:
    found = shutil.which("ffmpeg")
    if found is None:
        raise RuntimeError("ffmpeg is not on PATH; install ffmpeg to run the media tests")
    return found


def make_mp4(
    path: Path, *, seconds: float, kind: Kind = "regular", mbytes: float | None = None
) -> Path:
    """Write an MP4 of ``seconds`` (ffprobe agrees within 1/FPS s) to ``path``.

    ``mbytes`` is the wanted size in megabytes (10**6 bytes, within a few percent);
    ``None`` gives about 7 MB per second. Returns ``path``.
    """
    if seconds <= 0:
        raise ValueError("seconds must be positive")
    path.parent.mkdir(parents=True, exist_ok=True)
    if mbytes is None:
        size, rate = "640x360", ["-q:v", "1"]
    else:
        per_frame = mbytes * 1e6 / (seconds * FPS)
        size = next((s for s, cap in _RESOLUTIONS if per_frame <= cap), _RESOLUTIONS[-1][0])
        bits = str(int(mbytes * 8e6 / seconds))
        half = str(int(mbytes * 4e6 / seconds))
        rate = ["-qmin", "1", "-b:v", bits, "-minrate", bits, "-maxrate", bits, "-bufsize", half]
    command = [
        _ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-f", "lavfi", "-i", _source(size), "-t", f"{seconds:.3f}",
        "-c:v", "mpeg4", *rate, "-g", str(FPS), "-pix_fmt", "yuv420p",
    ]
    if MOVFLAGS[kind]:
        command += ["-movflags", MOVFLAGS[kind]]
    subprocess.run([*command, str(path)], check=True, capture_output=True, timeout=120)
    return path


def make_corrupt_mp4(path: Path, size: int, *, seed: int = 0) -> Path:
    """``size`` bytes that look like an MP4 to a file name and to nothing else.

    A plausible ``ftyp`` box followed by random bytes: ffprobe picks the MP4 demuxer and
    fails (no ``moov``), deterministically for a given ``seed``.
    """
    rng = random.Random(seed)
    header = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
    body = rng.randbytes(max(0, size - len(header)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((header + body)[:size])
    return path


def ffprobe_duration(path: Path) -> float | None:
    """The container duration ffprobe reports, or ``None`` when it cannot tell."""
    result = subprocess.run(
        ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", str(path)],
        capture_output=True, check=False, timeout=60,
    )
    if result.returncode != 0:
        return None
    duration = json.loads(result.stdout).get("format", {}).get("duration")
    return None if duration is None else float(duration)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class GrowingWriter:
    """Copies ``source`` to ``dest`` at ``rate`` bytes per second from a background thread.

    Each write is flushed, so another process sees the file grow. With ``patch=(a, b)`` the
    bytes ``[a, b)`` are first written inverted and, once everything else is written (and
    ``patch_delay`` seconds later), rewritten with the true bytes: ffmpeg's MP4 muxer seeks
    back the same way to fix the ``mdat`` size. Either way the finished ``dest`` is
    byte-identical to ``source``; ``stop()`` ends early and leaves a prefix (unpatched).
    """

    def __init__(
        self,
        source: Path,
        dest: Path,
        *,
        rate: float,
        chunk_size: int | None = None,
        patch: tuple[int, int] | None = None,
        patch_delay: float = 0.0,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.source = source
        self.dest = dest
        self.rate = rate
        self.chunk_size = chunk_size or int(min(1 << 20, max(4096, rate / 20)))
        self.patch = patch
        self.patch_delay = patch_delay
        self.bytes_written = 0
        self.patched = False
        self._data = source.read_bytes()
        if patch is not None and not 0 <= patch[0] < patch[1] <= len(self._data):
            raise ValueError(f"patch range {patch} is outside the source")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="growing-writer", daemon=True)
        self._error: BaseException | None = None

    @property
    def done(self) -> bool:
        """The thread has finished (all bytes written and patched, stopped, or failed)."""
        return self._thread.ident is not None and not self._thread.is_alive()

    @property
    def duration(self) -> float:
        """Seconds the whole copy takes at ``rate`` (not counting ``patch_delay``)."""
        return len(self._data) / self.rate

    def start(self) -> Self:
        self._thread.start()
        return self

    def wait(self, timeout: float | None = None) -> None:
        """Block until the copy is finished; re-raise the thread's error, if any."""
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"GrowingWriter for {self.dest} still running after {timeout} s")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Stop writing now and wait for the thread."""
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._copy()
        except BaseException as exc:  # surfaced by wait()
            self._error = exc

    def _copy(self) -> None:
        data = memoryview(self._data)
        started = time.monotonic()
        with self.dest.open("wb") as out:
            while self.bytes_written < len(data):
                due = started + self.bytes_written / self.rate
                if self._stop.wait(max(0.0, due - time.monotonic())):
                    return
                start = self.bytes_written
                chunk = bytes(data[start : start + self.chunk_size])
                out.write(self._placeholder(start, chunk))
                out.flush()
                self.bytes_written += len(chunk)
            if self.patch is None:
                return
            if self._stop.wait(self.patch_delay):
                return
            a, b = self.patch
            out.seek(a)
            out.write(data[a:b])
            out.flush()
            self.patched = True

    def _placeholder(self, start: int, chunk: bytes) -> bytes:
        """``chunk`` with the bytes inside the patch range inverted."""
        if self.patch is None:
            return chunk
        a, b = max(self.patch[0], start), min(self.patch[1], start + len(chunk))
        if a >= b:
            return chunk
        mangled = bytearray(chunk)
        for i in range(a - start, b - start):
            mangled[i] ^= 0xFF
        return bytes(mangled)


def record_with_ffmpeg(
    path: Path, *, seconds: float, movflags: str = "", bitrate: str = "20M"
) -> subprocess.Popen[bytes]:
    """Start a real ffmpeg recorder writing ``path`` in real time (``-re``) for ``seconds``.

    ``movflags``: ``""`` (regular: the muxer seeks back at the end to patch ``mdat``),
    ``"+faststart"`` (the whole file is rewritten at the end) or
    ``"+frag_keyframe+empty_moov"`` (fragmented, append-only). At the default 20 Mbit/s a
    recording grows by about 2.5 MB per second. The caller waits for (or kills) the process;
    its stderr is a pipe holding ffmpeg's errors.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        _ffmpeg(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
        "-re", "-f", "lavfi", "-i", _source("640x360"), "-t", f"{seconds:.3f}",
        "-c:v", "mpeg4", "-qmin", "1", "-b:v", bitrate, "-minrate", bitrate,
        "-maxrate", bitrate, "-bufsize", bitrate, "-g", str(FPS), "-pix_fmt", "yuv420p",
    ]
    if movflags:
        command += ["-movflags", movflags]
    return subprocess.Popen(
        [*command, str(path)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A session-wide directory for generated media; treat its files as read-only."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def sample_mp4(media_dir: Path) -> Path:
    """A regular 4 s MP4 of about 12 MB (two full 5 MiB parts and a tail)."""
    return make_mp4(media_dir / "sample.mp4", seconds=4, mbytes=12)


@pytest.fixture(scope="session")
def sample_fragmented_mp4(media_dir: Path) -> Path:
    """A fragmented 4 s MP4 of about 12 MB."""
    return make_mp4(media_dir / "sample-fragmented.mp4", seconds=4, kind="fragmented", mbytes=12)


@pytest.fixture(scope="session")
def sample_faststart_mp4(media_dir: Path) -> Path:
    """A faststart (moov first) 4 s MP4 of about 12 MB."""
    return make_mp4(media_dir / "sample-faststart.mp4", seconds=4, kind="faststart", mbytes=12)


@pytest.fixture(scope="session")
def corrupt_mp4(media_dir: Path) -> Path:
    """11 MiB of bytes named .mp4 that ffprobe cannot read."""
    return make_corrupt_mp4(media_dir / "corrupt.mp4", 11 * 1024 * 1024)
