"""Probing a finished recording with ffprobe.

ffprobe reads what it is given the way the content asks, not the name: a text file named
``x.mp4`` that is an HLS playlist was read as one, and ffprobe opened the segment files it
named, outside WATCH_DIR too (a ``http://`` one just as well), and the metadata reported
their duration. So the probe reads one local file (``-protocol_whitelist file``) as its
container only (``-format_whitelist``, from ``containers.probe_formats``); anything else is
a file that cannot be probed: no duration, the reason recorded, the video still uploaded.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from pathlib import Path, PurePath
from typing import Protocol

from cefmp4.core.containers import probe_formats
from cefmp4.core.metadata import ProbeResult
from cefmp4.runtime.errors import ConfigError

# ProbeResult (what a Prober answers) is a value of core: its metadata is built from it.
__all__ = ["FfprobeProber", "ProbeResult", "Prober", "container_name"]

# What ffprobe says when the content is a format the whitelist refuses.
_NOT_ON_WHITELIST = re.compile(r"^\[(?P<found>[\w,]+) @ 0x[0-9a-f]+\] Format not on whitelist")


class Prober(Protocol):
    async def ping(self) -> None:
        """Raise ``ConfigError`` unless the prober can run."""

    async def probe(self, path: Path) -> ProbeResult:
        """Never raises for a bad file: the reason goes into ``ProbeResult.error``."""


class FfprobeProber:
    """Runs ``ffprobe`` as a subprocess; the event loop never blocks on it.

    ``ffprobe_path`` empty means ``ffprobe`` on PATH. A probe that takes longer than
    ``timeout`` seconds is killed and reaped, and reported as an error.
    """

    def __init__(self, ffprobe_path: str = "", timeout: float = 60.0) -> None:
        self.ffprobe_path = ffprobe_path or "ffprobe"
        self.timeout = timeout

    async def ping(self) -> None:
        fix = (
            "install ffmpeg (which provides ffprobe, e.g. `apt-get install ffmpeg`) "
            "or set FFPROBE_PATH to the ffprobe executable"
        )
        # TimeoutError is an OSError: it must be caught first.
        try:
            code, _, stderr = await self._run(["-version"])
        except TimeoutError:
            raise ConfigError(
                "FFPROBE_PATH", f"{self.ffprobe_path!r} -version timed out; {fix}"
            ) from None
        except FileNotFoundError:
            raise ConfigError("FFPROBE_PATH", f"{self.ffprobe_path!r} not found; {fix}") from None
        except PermissionError:
            raise ConfigError(
                "FFPROBE_PATH", f"{self.ffprobe_path!r} is not executable; {fix}"
            ) from None
        except OSError as exc:
            raise ConfigError(
                "FFPROBE_PATH", f"cannot run {self.ffprobe_path!r}: {exc}; {fix}"
            ) from None
        if code != 0:
            raise ConfigError(
                "FFPROBE_PATH",
                f"{self.ffprobe_path!r} -version exited with {code}: {_first_line(stderr)}; {fix}",
            )

    async def probe(self, path: Path) -> ProbeResult:
        # "file:" so that a name with a colon is never taken for another protocol.
        return await self._probe(f"file:{path}", container_name(path), "file")

    async def probe_url(self, url: str, name: str) -> ProbeResult:
        """Probe an object through a (presigned) HTTP(S) URL, as the container ``name``'s
        extension says: salvage probes the object itself, never a local file."""
        return await self._probe(url, container_name(PurePath(name)), "https,http,tls,tcp")

    async def _probe(self, target: str, container: str, protocols: str) -> ProbeResult:
        formats = probe_formats(container)
        args = [
            "-v", "error", "-protocol_whitelist", protocols, "-format_whitelist", formats,
            "-print_format", "json", "-show_format", "-show_streams", target,
        ]  # fmt: skip
        try:
            code, stdout, stderr = await self._run(args)
        except TimeoutError:  # before OSError, of which it is a subclass
            return ProbeResult(None, error=f"ffprobe timed out after {self.timeout:g} s")
        except OSError as exc:
            return ProbeResult(None, error=f"cannot run {self.ffprobe_path!r}: {exc}")
        if code != 0:
            reason = _first_line(stderr) or f"ffprobe exited with {code}"
            if found := _NOT_ON_WHITELIST.match(reason):
                reason = f"not probed: its content is {found['found']}, not its name's {formats}"
            return ProbeResult(None, error=reason)
        try:
            info = json.loads(stdout)
        except ValueError:
            return ProbeResult(None, error="ffprobe printed invalid JSON")
        if not isinstance(info, dict):
            return ProbeResult(None, error="ffprobe printed unexpected JSON")
        return _result_from(info)

    async def _run(self, args: list[str]) -> tuple[int, bytes, bytes]:
        """Run ffprobe with ``args``; on timeout or cancellation kill it and reap it."""
        process = await asyncio.create_subprocess_exec(
            self.ffprobe_path,
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(self.timeout):
                stdout, stderr = await process.communicate()
        except BaseException:  # TimeoutError or CancelledError: never leave a child behind
            if process.returncode is None:
                process.kill()
                # Shielded so that a second cancellation cannot leave a zombie.
                await asyncio.shield(process.wait())
            raise
        assert process.returncode is not None  # communicate() waits for exit
        return process.returncode, stdout, stderr


def container_name(path: PurePath) -> str:
    """The name that says which container ``path`` holds: its own, or for a descriptor's
    path (``/proc/<pid>/fd/<n>``, how ``probing`` reaches a held file, deleted or renamed)
    the name of the file it leads to."""
    parts = path.parts
    if len(parts) == 5 and parts[:2] == ("/", "proc") and parts[3] == "fd":
        try:
            return os.readlink(path).removesuffix(" (deleted)")
        except OSError:
            pass
    return path.name


def _first_line(stderr: bytes) -> str:
    for line in stderr.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _number(value: object) -> float | None:
    """A finite, non-negative float from ffprobe's strings (``"4.000000"``, ``"N/A"``)."""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _result_from(info: dict[str, object]) -> ProbeResult:
    fmt = info.get("format")
    fmt = fmt if isinstance(fmt, dict) else {}
    streams = info.get("streams")
    streams = streams if isinstance(streams, list) else []
    video = next(
        (s for s in streams if isinstance(s, dict) and s.get("codec_type") == "video"), None
    )
    duration = _number(fmt.get("duration"))
    if duration is None and video is not None:
        duration = _number(video.get("duration"))
    format_name = fmt.get("format_name")
    codec = video.get("codec_name") if video is not None else None
    return ProbeResult(
        duration_seconds=duration,
        error=None if duration is not None else "ffprobe reported no duration",
        format_name=format_name if isinstance(format_name, str) else None,
        video_codec=codec if isinstance(codec, str) else None,
        width=_int(video.get("width")) if video is not None else None,
        height=_int(video.get("height")) if video is not None else None,
    )
