"""AFTER_UPLOAD=evict with 100,000 kept sources on SQLite: the eviction watch's rounds stay a
count of the outbox's index (the tally of ``evictable_files``/``evictable_bytes`` agrees
with it); every item is read once, at start-up. Prints each round's cost (no timing is
asserted: ``pytest -s`` shows them)."""

from __future__ import annotations

import sqlite3
import statistics
import time
from pathlib import Path

import pytest

from cefmp4.after.after_upload import EVICT, Intent, KeptOutbox, KeptSources
from cefmp4.after.outbox import SINK_AFTER_UPLOAD
from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.checkpoint.sqlite import DB_NAME, SqliteCheckpointStore, open_sqlite_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

KEPT = 100_000
ROUNDS = 20


def _record(n: int) -> StreamRecord:
    return StreamRecord(
        stream_id=f"s{n:06d}", path=f"/watch/cam/{n}.mp4", rel_path=f"cam/{n}.mp4", device=1,
        inode=n, bucket="b", key=f"p/cam/{n}.mp4", part_size=8 << 20, max_parts=10_000,
        state=StreamState.COMPLETED, started_at=0.0, last_activity_at=0.0,
        status="complete", completed_at=1.0, final_size=1_000_000 + n, final_mtime_ns=1,
        sha256="0" * 64,
    )


def _intent(record: StreamRecord) -> bytes:
    assert record.final_size is not None
    return Intent(
        action=EVICT, stream_id=record.stream_id, status="complete", path=record.path,
        rel_path=record.rel_path, device=record.device, inode=record.inode,
        size=record.final_size, mtime_ns=1, sha256="0" * 64, key=record.key,
        etag="0" * 32 + "-3", metadata_key=record.key + ".metadata.json",
    ).to_json()


class Counting(KeptOutbox):
    def __init__(self, store: SqliteCheckpointStore, kept: KeptSources) -> None:
        super().__init__(store, kept)
        self.full_reads = 0

    async def outbox_pending(self, sink: str, limit: int) -> list:  # type: ignore[type-arg]
        self.full_reads += 1
        return await super().outbox_pending(sink, limit)


def _ms(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1e3:.1f} ms, max {max(values) * 1e3:.1f} ms"


async def test_rounds_with_100000_kept_sources_are_a_count(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with open_sqlite_store(state) as store:  # the first as a completion writes it
        await store.put_stream_with_outbox(_record(0), [(SINK_AFTER_UPLOAD, _intent(_record(0)))],
                                           1.0)
    conn = sqlite3.connect(state / DB_NAME)  # the rest in one transaction: seconds, not minutes
    with conn:
        conn.executemany(
            "INSERT INTO outbox (sink, stream_id, payload, created_at) VALUES (?, ?, ?, 1.0)",
            ((SINK_AFTER_UPLOAD, f"s{n:06d}", _intent(_record(n))) for n in range(1, KEPT)))
    conn.close()
    async with open_sqlite_store(state) as store:
        kept = KeptSources()
        outbox = Counting(store, kept)
        want = sum(1_000_000 + n for n in range(KEPT))
        began = time.perf_counter()
        assert await kept.reconcile(outbox) == KEPT
        first = time.perf_counter() - began
        assert (len(kept), kept.nbytes) == (KEPT, want)
        rounds, counts = [], []
        for _ in range(ROUNDS):
            began = time.perf_counter()
            await kept.reconcile(outbox)
            rounds.append(time.perf_counter() - began)
            began = time.perf_counter()
            await store.outbox_count(frozenset({SINK_AFTER_UPLOAD}))
            counts.append(time.perf_counter() - began)
        assert outbox.full_reads == 1  # start-up only
        # One evicted: the tally follows at once, and the next round still only counts.
        await outbox.outbox_done(SINK_AFTER_UPLOAD, "s000000")
        assert kept.nbytes == want - 1_000_000
        await kept.reconcile(outbox)
        assert outbox.full_reads == 1
        reads = []
        for _ in range(5):  # what reading every item each round would cost
            began = time.perf_counter()
            await KeptSources().reconcile(store)
            reads.append(time.perf_counter() - began)
    print(f"\n{KEPT} kept sources on SQLite: start-up round (every item read) "
          f"{first * 1e3:.0f} ms; each later round {_ms(rounds)} (the outbox_count alone "
          f"{_ms(counts)}); reading every item each round would be {_ms(reads)}")
