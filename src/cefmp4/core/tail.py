"""Tail segments (SPEC §2.20): the bytes of an active stream that are not in a part yet,
shipped every ``RPO_SECONDS`` as small objects, so that losing the recorder's host loses
seconds of footage, not a part's worth. Pure: names, ranges, and how salvage chains them.

A segment holds bytes ``[start, end)`` of the file, only bytes no earlier segment or part
holds, so each byte is sent at most twice (once in a segment, once in its part). They live
under ``{S3_KEY_PREFIX}.cefmp4/tail/{stream_id}/`` as ``{start:016x}-{end:016x}`` (hex, so
that they sort by offset), and are deleted once the stream's object is complete.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from cefmp4.core.keys import is_stream_id, segment_prefix

_NAME = re.compile(r"(?P<start>[0-9a-f]{16})-(?P<end>[0-9a-f]{16})")


@dataclass(frozen=True, slots=True)
class Segment:
    start: int
    end: int
    key: str
    added_at: float | None = None  # when S3 got it (LastModified)

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Piece:
    """Bytes ``[start, end)`` of the file, read from ``segment``."""

    segment: Segment
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


def tail_prefix(prefix: str, stream_id: str) -> str:
    if not is_stream_id(stream_id):
        raise ValueError(f"invalid stream id: {stream_id!r}")
    return f"{segment_prefix(prefix)}.cefmp4/tail/{stream_id}/"


def segment_key(prefix: str, stream_id: str, start: int, end: int) -> str:
    if not 0 <= start < end:
        raise ValueError(f"not a byte range: [{start}, {end})")
    return f"{tail_prefix(prefix, stream_id)}{start:016x}-{end:016x}"


def parse_segment(prefix: str, stream_id: str, key: str, size: int,
                  added_at: float | None = None) -> Segment | None:
    """The segment a listed object is, or None (a name we did not make, or a size that does
    not match its name: input, not truth)."""
    head = tail_prefix(prefix, stream_id)
    if not key.startswith(head):
        return None
    match = _NAME.fullmatch(key[len(head):])
    if match is None:
        return None
    start, end = int(match["start"], 16), int(match["end"], 16)
    if not start < end or end - start != size:
        return None
    return Segment(start, end, key, added_at)


def next_range(durable: int, shipped: int, size: int, limit: int) -> tuple[int, int] | None:
    """The bytes to ship now: from the end of what parts or segments hold to the file's
    size, at most ``limit`` of them (None: nothing new)."""
    start = max(durable, shipped)
    if size <= start:
        return None
    return start, min(size, start + limit)


def chain(segments: Iterable[Segment], start: int) -> list[Piece]:
    """The pieces of ``segments`` that continue the file from ``start`` without a gap."""
    pieces: list[Piece] = []
    cur = start
    for seg in sorted(segments, key=lambda s: (s.start, -s.end)):
        if seg.start <= cur < seg.end:
            pieces.append(Piece(seg, cur, seg.end))
            cur = seg.end
        elif seg.start > cur:
            break  # a gap: what follows it cannot be placed
    return pieces
