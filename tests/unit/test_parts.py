"""The part-size schedule (SPEC §2.8)."""

from __future__ import annotations

import pytest

from cefmp4.checkpoint import PartRecord
from cefmp4.core.parts import (
    GIB,
    MAX_OBJECT_SIZE,
    MAX_PART_SIZE,
    MIB,
    TIB,
    PartSchedule,
    contiguous,
    part_bounds,
)

REAL_BASES_MIB = [5, 6, 10, 64, 100, 1024, 5120]


@pytest.mark.parametrize("base_mib", REAL_BASES_MIB)
def test_first_tier_is_exactly_the_base(base_mib: int) -> None:
    schedule = PartSchedule(base_mib * MIB)
    assert schedule.tier_length == 1000
    assert all(schedule.size_of(n) == base_mib * MIB for n in range(1, 1001))
    assert schedule.offset_of(1000) == 999 * base_mib * MIB


@pytest.mark.parametrize("base_mib", REAL_BASES_MIB)
def test_five_tib_is_reachable_with_real_limits(base_mib: int) -> None:
    assert PartSchedule(base_mib * MIB).capacity() >= MAX_OBJECT_SIZE


def test_plain_doubling_from_5_mib_would_fall_short() -> None:
    # The reason for the floor: 1,000 * 5 MiB * (2**10 - 1) ≈ 4.88 TiB.
    assert 1000 * 5 * MIB * 1023 < 5 * TIB


def test_floor_changes_only_what_it_must() -> None:
    five = PartSchedule(5 * MIB)
    assert five.size_of(1001) == 12 * MIB  # floored: 6 MiB doubled, not 10 MiB
    ten = PartSchedule(10 * MIB)
    assert [ten.size_of(1 + 1000 * k) // MIB for k in range(10)] == [
        10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120,
    ]


@pytest.mark.parametrize("base_mib", REAL_BASES_MIB)
@pytest.mark.parametrize("max_parts", [10_000, 20, 7, 1])
def test_sizes_are_whole_mib_within_s3_limits_and_never_shrink(
    base_mib: int, max_parts: int
) -> None:
    schedule = PartSchedule(base_mib * MIB, max_parts)
    sizes = [schedule.size_of(n) for n in range(1, max_parts + 1)]
    assert all(5 * MIB <= size <= MAX_PART_SIZE for size in sizes)
    assert all(size % MIB == 0 for size in sizes)
    assert sizes == sorted(sizes)
    assert schedule.capacity() == sum(sizes)


@pytest.mark.parametrize(("base", "max_parts"), [
    (5 * MIB, 10_000), (10 * MIB, 10_000), (64 * MIB, 10_000), (5 * MIB, 20), (1000, 37),
])
def test_offsets_are_contiguous(base: int, max_parts: int) -> None:
    schedule = PartSchedule(base, max_parts)
    assert schedule.offset_of(1) == 0
    for n in range(1, max_parts + 1):
        assert schedule.offset_of(n + 1) == schedule.offset_of(n) + schedule.size_of(n)
        assert schedule.end_of(n) == schedule.offset_of(n + 1)
    assert schedule.offset_of(max_parts + 1) == schedule.capacity()


def test_lowered_max_parts_still_doubles_every_tier() -> None:
    schedule = PartSchedule(5 * MIB, max_parts=20)
    assert schedule.tier_length == 2
    assert [schedule.size_of(n) // MIB for n in range(1, 21)] == [
        5, 5, 10, 10, 20, 20, 40, 40, 80, 80, 160, 160, 320, 320, 640, 640,
        1280, 1280, 2560, 2560,
    ]
    # 5 TiB cannot be reached with 20 parts; the cap still holds.
    assert schedule.capacity() < 5 * TIB


def test_tiny_bases_for_in_memory_tests_double_without_a_floor() -> None:
    schedule = PartSchedule(1024, max_parts=20)
    assert [schedule.size_of(n) for n in (1, 2, 3, 5, 20)] == [1024, 1024, 2048, 4096, 524288]


def test_cap_is_5_gib() -> None:
    schedule = PartSchedule(1024 * MIB)
    assert schedule.size_of(10_000) == 5 * GIB
    assert max(schedule.size_of(n) for n in range(1, 10_001, 97)) == 5 * GIB


def test_deterministic_and_comparable() -> None:
    a, b = PartSchedule(5 * MIB), PartSchedule(5 * MIB)
    assert a == b
    assert hash(a) == hash(b)
    assert [a.offset_of(n) for n in range(1, 10_001, 333)] == [
        b.offset_of(n) for n in range(1, 10_001, 333)
    ]
    assert a != PartSchedule(6 * MIB)


def test_part_bounds_cover_a_file_with_a_short_tail() -> None:
    schedule = PartSchedule(10, max_parts=20)  # tiers of 2: 10, 10, 20, 20, 40, ...
    assert part_bounds(schedule, 45) == [(1, 0, 10), (2, 10, 10), (3, 20, 20), (4, 40, 5)]
    assert part_bounds(schedule, 40) == [(1, 0, 10), (2, 10, 10), (3, 20, 20)]
    assert part_bounds(schedule, 0) == []
    with pytest.raises(ValueError, match="part_number"):
        part_bounds(schedule, schedule.capacity() + 1)


def test_contiguous_stops_at_the_first_gap() -> None:
    a, b, d = (PartRecord(n, (n - 1) * 10, 10, f"{n:032x}", "", 1.0) for n in (1, 2, 4))
    assert contiguous({1: a, 2: b, 4: d}) == [a, b]
    assert contiguous({2: b}) == []


@pytest.mark.parametrize(("base", "max_parts"), [(0, 10), (5 * GIB + 1, 10), (5 * MIB, 0)])
def test_invalid_schedules_are_refused(base: int, max_parts: int) -> None:
    with pytest.raises(ValueError, match="must"):
        PartSchedule(base, max_parts)


@pytest.mark.parametrize("part_number", [0, 10_001, -3])
def test_part_numbers_outside_the_schedule_are_refused(part_number: int) -> None:
    with pytest.raises(ValueError, match="part_number"):
        PartSchedule(5 * MIB).size_of(part_number)
