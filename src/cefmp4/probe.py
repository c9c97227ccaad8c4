"""Probing a finished recording with ffprobe."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True, slots=True)
class ProbeResult:
    duration_seconds: float | None
    error: str | None = None  # why there is no duration, when there is none
    format_name: str | None = None
    video_codec: str | None = None
    width: int | None = None
    height: int | None = None


class Prober(Protocol):
    async def ping(self) -> None:
        """Raise ``ConfigError`` unless the prober can run."""

    async def probe(self, path: Path) -> ProbeResult:
        """Never raises for a bad file: the reason goes into ``ProbeResult.error``."""
