"""The part-size schedule: where each multipart part of a growing file starts and ends.

S3 allows at most 10,000 parts of 5 MiB to 5 GiB each, and an object of at most 5 TiB.
The final size of a recording is unknown while it grows, so the part size cannot be
chosen from it. Instead parts are grouped in tiers of ``max(1, max_parts // 10)`` parts:

* tier 0 is exactly ``base_size`` (so small streams stay exactly ``CHUNK_SIZE_MB``);
* tier ``k`` doubles: ``base_size * 2**k``, capped at 5 GiB;
* from tier 1 on, a floor keeps 5 TiB reachable: plain doubling from 5 MiB over ten tiers
  of 1,000 parts reaches only 1,000 * 5 MiB * 1,023 ≈ 4.88 TiB. The floor is the smallest
  whole-MiB size ``f`` such that doubling ``f`` instead of ``base_size`` from tier 1 on
  reaches 5 TiB within ``max_parts``. With the real limits it is 6 MiB, so it only changes
  a 5 MiB schedule (tier 1 = 12 MiB instead of 10 MiB); larger bases are untouched.
  When ``max_parts`` is lowered (a testing setting) 5 TiB may be unreachable even with
  5 GiB parts; then there is no floor and the schedule is plain doubling.

The schedule is a pure function of ``(base_size, max_parts)``; both are stored with the
stream, so a changed setting never moves the boundaries of a stream in flight. Every
query walks the tiers (at most ~20), never the parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

MIB = 1024 * 1024
GIB = 1024 * MIB
TIB = 1024 * GIB

MIN_PART_SIZE = 5 * MIB  # S3's minimum for every part but the last
MAX_PART_SIZE = 5 * GIB  # S3's maximum part size
MAX_OBJECT_SIZE = 5 * TIB  # S3's maximum object size
MAX_PARTS = 10_000  # S3's maximum part number

class _Span(Protocol):
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...


P = TypeVar("P", bound=_Span)


@dataclass(frozen=True, slots=True)
class _Tier:
    first_part: int  # 1-based part number of the tier's first part
    first_offset: int  # byte offset of the tier's first part
    count: int  # parts in this tier
    size: int  # size of every part in this tier

    @property
    def end_offset(self) -> int:
        return self.first_offset + self.count * self.size


@dataclass(frozen=True)
class PartSchedule:
    """Part sizes and offsets for one stream. Part numbers are 1-based, as in S3.

    ``base_size`` may be any positive number of bytes up to 5 GiB (the 5 MiB minimum is
    the settings' business; tests use smaller parts against the in-memory store).
    """

    base_size: int
    max_parts: int = MAX_PARTS
    _tiers: tuple[_Tier, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0 < self.base_size <= MAX_PART_SIZE:
            raise ValueError(f"base_size must be in 1..{MAX_PART_SIZE} bytes, got {self.base_size}")
        if self.max_parts < 1:
            raise ValueError(f"max_parts must be at least 1, got {self.max_parts}")
        # Frozen dataclass: the tier table is derived once, here.
        object.__setattr__(self, "_tiers", _build_tiers(self.base_size, self.max_parts))

    @property
    def tier_length(self) -> int:
        """Parts per tier."""
        return _tier_length(self.max_parts)

    def size_of(self, part_number: int) -> int:
        """Size in bytes of part ``part_number`` (1-based) when it is not the file's tail."""
        return self._tier_of_part(part_number).size

    def offset_of(self, part_number: int) -> int:
        """Byte offset where part ``part_number`` starts.

        ``offset_of(max_parts + 1) == capacity()`` is allowed, as the end of the last part.
        """
        if part_number == self.max_parts + 1:
            return self.capacity()
        tier = self._tier_of_part(part_number)
        return tier.first_offset + (part_number - tier.first_part) * tier.size

    def end_of(self, part_number: int) -> int:
        """Byte offset just past part ``part_number``."""
        return self.offset_of(part_number) + self.size_of(part_number)

    def capacity(self) -> int:
        """Bytes reachable within ``max_parts`` parts."""
        return self._tiers[-1].end_offset

    def _tier_of_part(self, part_number: int) -> _Tier:
        if not 1 <= part_number <= self.max_parts:
            raise ValueError(f"part_number must be in 1..{self.max_parts}, got {part_number}")
        return self._tiers[(part_number - 1) // self.tier_length]


def _tier_length(max_parts: int) -> int:
    return max(1, max_parts // 10)


def _tier_sizes(base_size: int, max_parts: int, floor: int) -> list[tuple[int, int]]:
    """``(count, size)`` per tier: tier 0 is ``base_size``, later tiers double."""
    length = _tier_length(max_parts)
    tiers: list[tuple[int, int]] = []
    remaining = max_parts
    k = 0
    while remaining > 0:
        count = min(length, remaining)
        if k == 0:
            size = base_size
        else:
            # Cap the shift: beyond 2**33 every base is past 5 GiB anyway.
            shift = min(k, 33)
            size = min(MAX_PART_SIZE, max(base_size, floor) << shift)
        tiers.append((count, size))
        remaining -= count
        k += 1
    return tiers


def _capacity(tiers: list[tuple[int, int]]) -> int:
    return sum(count * size for count, size in tiers)


def _floor(base_size: int, max_parts: int) -> int:
    """The smallest whole-MiB doubling base from tier 1 on that reaches 5 TiB, or 0."""
    if _capacity(_tier_sizes(base_size, max_parts, 0)) >= MAX_OBJECT_SIZE:
        return 0
    if _capacity(_tier_sizes(base_size, max_parts, MAX_PART_SIZE)) < MAX_OBJECT_SIZE:
        return 0  # unreachable even with 5 GiB parts: plain doubling (lowered max_parts)
    low, high = 1, MAX_PART_SIZE // MIB  # in MiB; high is known to reach 5 TiB
    while low < high:
        middle = (low + high) // 2
        if _capacity(_tier_sizes(base_size, max_parts, middle * MIB)) >= MAX_OBJECT_SIZE:
            high = middle
        else:
            low = middle + 1
    return low * MIB


def _build_tiers(base_size: int, max_parts: int) -> tuple[_Tier, ...]:
    floor = _floor(base_size, max_parts)
    tiers: list[_Tier] = []
    part, offset = 1, 0
    for count, size in _tier_sizes(base_size, max_parts, floor):
        tiers.append(_Tier(first_part=part, first_offset=offset, count=count, size=size))
        part += count
        offset += count * size
    return tuple(tiers)


def part_bounds(schedule: PartSchedule, size: int) -> list[tuple[int, int, int]]:
    """(part_number, offset, size) covering ``size`` bytes; the last part may be short."""
    bounds: list[tuple[int, int, int]] = []
    number, offset = 1, 0
    while offset < size:
        part = min(schedule.size_of(number), size - offset)
        bounds.append((number, offset, part))
        offset += part
        number += 1
    return bounds


def contiguous(parts: Mapping[int, P]) -> list[P]:
    """Parts 1, 2, ... up to the first gap (what a Complete may use): a gap in numbers, or
    in bytes — a part that does not start where the one before it ends (after a short part:
    a kept object's tail part, or an earlier finalize's last part the file grew past)."""
    run: list[P] = []
    end = 0
    while (part := parts.get(len(run) + 1)) is not None and part.offset == end:
        run.append(part)
        end = part.offset + part.size
    return run
