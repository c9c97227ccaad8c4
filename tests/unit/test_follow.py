"""core.follow as tables: which parts are due, which are doomed, what is durable, when to
look again. No event loop, no file."""

from __future__ import annotations

import pytest

from cefmp4.checkpoint import PartRecord
from cefmp4.core.follow import doomed_parts, due_parts, durable_bytes, next_wake, uploaded_extent
from cefmp4.core.parts import PartSchedule, contiguous

S = PartSchedule(10)  # 10-byte parts


def ledger(*numbers: int) -> dict[int, PartRecord]:
    return {n: PartRecord(n, (n - 1) * 10, 10, f"{n:032x}", "", 1.0) for n in numbers}


@pytest.mark.parametrize(("parts", "extent", "durable"), [
    ((), 0, 0),
    ((1, 2), 20, 20),
    ((1, 2, 4), 40, 20),  # a gap: durable stops at it, the extent does not
    ((2, 3), 30, 0),  # nothing from part 1
])
def test_ledger_numbers(parts: tuple[int, ...], extent: int, durable: int) -> None:
    assert uploaded_extent(ledger(*parts)) == extent
    assert durable_bytes(ledger(*parts)) == durable


def test_a_gap_in_bytes_ends_the_run_like_a_gap_in_numbers() -> None:
    """7000191: a short part 3 (a kept object's tail part, or an earlier finalize's last
    part) is not followed by part 4, which starts where a full part 3 would have ended."""
    parts = ledger(1, 2, 4)
    parts[3] = PartRecord(3, 20, 4, "3" * 32, "", 1.0)
    assert [p.part_number for p in contiguous(parts)] == [1, 2, 3]
    assert durable_bytes(parts) == 24
    parts[3] = PartRecord(3, 20, 17, "3" * 32, "", 1.0)  # past part 4's start: the same
    assert [p.part_number for p in contiguous(parts)] == [1, 2, 3]


@pytest.mark.parametrize(("size", "have", "inflight", "limit", "due"), [
    (9, (), (), 4, []),  # not one full part yet
    (10, (), (), 4, [1]),
    (35, (), (), 4, [1, 2, 3]),  # only full parts while active
    (35, (1,), (2,), 4, [3]),
    (100, (), (), 2, [1, 2]),  # at most `limit` in flight
    (100, (), (5, 6), 2, []),
    (100, (1, 2, 3), (4,), 3, [5, 6]),
    (100, (1, 3), (), 2, [2, 4]),  # a gap is filled first
])
def test_due_parts(size: int, have: tuple[int, ...], inflight: tuple[int, ...], limit: int,
                   due: list[int]) -> None:
    got = due_parts(S, size, ledger(*have), set(inflight), limit=limit)
    assert [n for n, _o, _s in got] == due
    assert all((o, s) == (S.offset_of(n), S.size_of(n)) for n, o, s in got)


def test_no_part_past_max_parts() -> None:
    small = PartSchedule(10, max_parts=2)
    assert [n for n, _o, _s in due_parts(small, 10**9, {}, set(), limit=8)] == [1, 2]


@pytest.mark.parametrize(("inflight", "sent", "size", "doomed"), [
    ((1, 2, 3), (), 30, []),
    ((1, 2, 3), (), 25, [3]),  # 41106: parts past the cut cannot succeed
    ((1, 2, 3), (), 5, [1, 2, 3]),
    ((2, 3), (3,), 15, [2]),  # 481: S3 holds 3 already; only its checkpoint is due
])
def test_doomed_parts(inflight: tuple[int, ...], sent: tuple[int, ...], size: int,
                      doomed: list[int]) -> None:
    assert doomed_parts(S, inflight, set(sent), size) == doomed


@pytest.mark.parametrize(("kw", "wait"), [
    ({"idle_for": 0.0, "timeout": 30.0}, 0.5),
    ({"idle_for": 29.8, "timeout": 30.0}, pytest.approx(0.2)),  # the idle timeout is near
    ({"idle_for": 40.0, "timeout": 30.0}, 0.5),
    ({"idle_for": 0.0, "timeout": 30.0, "recheck_in": 0.1}, 0.1),
    ({"idle_for": 0.0, "timeout": 30.0, "recheck_in": 0.0}, 0.01),  # never a busy loop
    ({"idle_for": 0.0, "timeout": 30.0, "tail_due_in": 0.3}, 0.3),
    ({"idle_for": 0.0, "timeout": 30.0, "tail_due_in": -1.0}, 0.01),
])
def test_next_wake(kw: dict[str, float], wait: float) -> None:
    assert next_wake(poll=0.5, **kw) == wait
