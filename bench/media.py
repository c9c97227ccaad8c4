"""Media: one short high-bitrate MP4 from ffmpeg (moov first), repeated to the wanted size.

The big file is MP4-ish: a valid first clip (ffprobe reads its duration) followed by more
copies of the same bytes; uploaders only need bytes, cefmp4's metadata needs ffprobe.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

MIB = 1024 * 1024


def base_clip(work: Path) -> Path:
    clip = work / "base.mp4"
    if clip.exists() and clip.stat().st_size > 0:
        return clip
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg not found on PATH (apt-get install ffmpeg)")
    tmp = work / "base.tmp.mp4"
    subprocess.run(
        [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=1280x720:rate=30", "-t", "4", "-c:v", "mjpeg", "-q:v", "2",
         "-pix_fmt", "yuvj420p", "-movflags", "+faststart", str(tmp)],
        check=True,
    )
    tmp.rename(clip)
    return clip


def sized_file(work: Path, size_mb: int) -> Path:
    """``size_mb`` MiB of MP4-ish bytes, cached in ``work`` between bench invocations."""
    path = work / f"media-{size_mb}MiB.mp4"
    if path.exists() and path.stat().st_size == size_mb * MIB:
        return path
    data = base_clip(work).read_bytes()
    tmp = work / f"media-{size_mb}.tmp"
    remaining = size_mb * MIB
    with tmp.open("wb") as out:
        while remaining > 0:
            piece = data[: min(len(data), remaining)]
            out.write(piece)
            remaining -= len(piece)
    tmp.rename(path)
    return path


def small_files(work: Path, directory: Path, count: int) -> list[Path]:
    """``count`` distinct small valid MP4 files (distinct inodes) in ``directory``."""
    ffmpeg = shutil.which("ffmpeg") or "ffmpeg"
    tiny = work / "tiny.mp4"
    if not tiny.exists():
        subprocess.run(
            [ffmpeg, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
             "-i", "testsrc2=size=160x120:rate=10", "-t", "1", "-c:v", "mjpeg",
             "-pix_fmt", "yuvj420p", str(tiny)],
            check=True,
        )
    data = tiny.read_bytes()
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"done-{i:04d}.mp4"
        path.write_bytes(data)
        paths.append(path)
    return paths


def drop_into(src: Path, dest: Path) -> None:
    """Make a complete file appear at ``dest`` at once (hard link, else copy + rename)."""
    try:
        os.link(src, dest)
    except OSError:
        tmp = dest.with_name("." + dest.name + ".tmp")
        shutil.copyfile(src, tmp)
        tmp.rename(dest)
