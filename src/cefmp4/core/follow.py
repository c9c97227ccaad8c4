"""Following a growing file: which parts are due, which in flight are doomed, what is
durable, and when to look again. Pure: the shell (``streams/stream``, ``streams/upload``)
passes in what it saw (the file's size, the parts checkpointed, the part numbers in
flight) and does what comes back.

The parts ledger is the checkpointed parts by number: a part counts once its checkpoint is
written. Only full parts go up while a stream is active; the tail waits for finalize (or
goes as tail segments, ``core.tail``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from cefmp4.checkpoint import PartRecord
from cefmp4.core.parts import PartSchedule, contiguous


def uploaded_extent(parts: Mapping[int, PartRecord]) -> int:
    """End of the furthest uploaded part (not necessarily contiguous): a file shorter than
    this has lost bytes S3 holds (``core.ending.truncated``)."""
    return max((p.offset + p.size for p in parts.values()), default=0)


def durable_bytes(parts: Mapping[int, PartRecord]) -> int:
    """Length of the contiguous prefix of the file that is uploaded and checkpointed."""
    run = contiguous(parts)
    return run[-1].offset + run[-1].size if run else 0


def due_parts(
    schedule: PartSchedule, size: int, have: Collection[int], inflight: Collection[int], *,
    limit: int,
) -> list[tuple[int, int, int]]:
    """``(number, offset, size)`` of the full parts to start now, lowest first, keeping at
    most ``limit`` in flight: a part is due once the file holds all of it and it is neither
    checkpointed (``have``) nor in flight."""
    due: list[tuple[int, int, int]] = []
    room = limit - len(inflight)
    n = 1
    while room > 0 and n <= schedule.max_parts:
        offset, length = schedule.offset_of(n), schedule.size_of(n)
        if offset + length > size:
            break  # only full parts go up while the stream is active
        if n not in have and n not in inflight:
            due.append((n, offset, length))
            room -= 1
        n += 1
    return due


def doomed_parts(
    schedule: PartSchedule, inflight: Collection[int], sent: Collection[int], size: int
) -> list[int]:
    """The parts in flight to cancel when the file shrank to ``size``: those reaching past
    it cannot succeed. A part S3 already holds (``sent``: only its checkpoint is due) reads
    the file no more and is let finish, so the kept object includes it."""
    return [n for n in inflight if schedule.end_of(n) > size and n not in sent]


def next_wake(
    *, poll: float, idle_for: float, timeout: float, recheck_in: float | None = None,
    tail_due_in: float | None = None,
) -> float:
    """How long the follow loop may wait before it must look again: the poll interval, cut
    short by the idle timeout, the writer policy's next question and the next tail segment."""
    wait = poll
    if idle_for < timeout:
        wait = min(wait, timeout - idle_for)
    if recheck_in is not None:
        wait = min(wait, max(0.01, recheck_in))
    if tail_due_in is not None:
        wait = min(wait, max(0.01, tail_due_in))
    return wait
