"""AFTER_UPLOAD=evict (SPEC §2.24): how much free space to keep, and how short of it the
watch directory's file system is. Pure.

Confirmed sources are kept for local review and deleted, oldest first, only while the file
system has less free space than ``EVICT_KEEP_FREE`` (``N%`` of its size, or bytes such as
``20G``): the oldest first because the outbox hands the actions out in completion order.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SPEC = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>%|[kmgt]i?b?|b)?", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class KeepFree:
    """``percent`` of the file system's size, or ``nbytes``: exactly one is set."""

    percent: float | None = None
    nbytes: int | None = None

    def target(self, total_bytes: int) -> int:
        """The free bytes to keep on a file system of ``total_bytes``."""
        if self.percent is not None:
            return math.ceil(total_bytes * self.percent / 100)
        assert self.nbytes is not None
        return self.nbytes

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.nbytes} bytes"


def parse_keep_free(text: str) -> KeepFree:
    """``10%``, ``20G``, ``500M``, ``1048576``; ValueError with what is wrong otherwise."""
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"must be a percentage (10%) or a size (20G, 500M, bytes): {text!r}")
    number = float(match["number"])
    unit = (match["unit"] or "").lower()
    if unit == "%":
        if not 0 < number < 100:
            raise ValueError(f"a percentage must be above 0 and below 100: {text!r}")
        return KeepFree(percent=number)
    nbytes = int(number * _UNITS[unit.rstrip("ib")[:1] if unit != "b" else ""])
    if nbytes <= 0:
        raise ValueError(f"must be more than 0 bytes: {text!r}")
    return KeepFree(nbytes=nbytes)


def shortfall(free_bytes: int, total_bytes: int, keep: KeepFree) -> int:
    """Bytes to free before the file system has the free space it should keep (0: enough)."""
    return max(0, keep.target(total_bytes) - free_bytes)
