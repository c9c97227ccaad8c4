"""AFTER_UPLOAD=evict (SPEC §2.24): the free space to keep, and a kept source that waits
for space to run short before it is deleted, with every proof of §2.25."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from cefmp4.after.after_upload import (
    EVICT,
    AfterUploadSink,
    Intent,
    KeptOutbox,
    KeptSources,
    Space,
)
from cefmp4.after.outbox import SINK_AFTER_UPLOAD, OutboxItem
from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.core.evict import KeepFree, parse_keep_free, shortfall
from cefmp4.runtime.errors import PermanentError
from tests.unit.test_after_upload import _item, _setup

GIB = 1 << 30


@pytest.mark.parametrize(("text", "expected"), [
    ("10%", KeepFree(percent=10.0)),
    (" 12.5% ", KeepFree(percent=12.5)),
    ("20G", KeepFree(nbytes=20 * GIB)),
    ("500M", KeepFree(nbytes=500 << 20)),
    ("2TiB", KeepFree(nbytes=2 << 40)),
    ("512k", KeepFree(nbytes=512 << 10)),
    ("1048576", KeepFree(nbytes=1 << 20)),
])
def test_keep_free_parses(text: str, expected: KeepFree) -> None:
    assert parse_keep_free(text) == expected


@pytest.mark.parametrize("text", ["", "0%", "100%", "-5M", "0", "ten", "5 %%", "1e9"])
def test_keep_free_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"must be|percentage"):
        parse_keep_free(text)


def test_shortfall() -> None:
    assert shortfall(free_bytes=5 * GIB, total_bytes=100 * GIB,
                     keep=KeepFree(percent=10)) == 5 * GIB
    assert shortfall(free_bytes=15 * GIB, total_bytes=100 * GIB, keep=KeepFree(percent=10)) == 0
    assert shortfall(free_bytes=1 * GIB, total_bytes=100 * GIB,
                     keep=KeepFree(nbytes=3 * GIB)) == 2 * GIB


class FakeSpace(Space):
    """Short of space only from the n-th look on."""

    def __init__(self, path: Path, short_from: int) -> None:
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "keep", KeepFree(percent=10))
        object.__setattr__(self, "looks", [0])
        object.__setattr__(self, "short_from", short_from)

    def short(self) -> int:
        self.looks[0] += 1  # type: ignore[attr-defined]
        return 1 if self.looks[0] >= self.short_from else 0  # type: ignore[attr-defined]


async def test_a_kept_source_waits_for_short_space_then_goes(tmp_path: Path) -> None:
    path, intent, head = _setup(tmp_path)
    intent = replace(intent, action=EVICT)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        assert path.exists()  # nothing is evicted while space is plentiful

    evicted: list[int] = []
    sink = AfterUploadSink(head, sleep=sleep, space=FakeSpace(tmp_path, short_from=4),
                           evicted=lambda: evicted.append(1))
    await sink.deliver(_item(intent))
    assert len(slept) == 3  # three looks with space enough, then short
    assert not path.exists()
    assert evicted == [1]


async def test_eviction_keeps_every_proof(tmp_path: Path) -> None:
    """Short of space does not lower the bar: an object not confirmed, or a file changed
    since, is never evicted."""
    path, intent, head = _setup(tmp_path)
    intent = replace(intent, action=EVICT)
    del head.objects[intent.key]
    sink = AfterUploadSink(head, space=FakeSpace(tmp_path, short_from=1))
    with pytest.raises(PermanentError, match="not found"):
        await sink.deliver(_item(intent))
    assert path.exists()
    path2, intent2, head2 = _setup(tmp_path / "b")
    with open(path2, "ab") as f:
        f.write(b"more")
    with pytest.raises(PermanentError, match="changed since"):
        await AfterUploadSink(head2, space=FakeSpace(tmp_path, short_from=1)).deliver(
            _item(replace(intent2, action=EVICT)))
    assert path2.exists()
    assert os.path.getsize(path2) == intent2.size + 4


async def test_s3_down_while_space_runs_short_evicts_nothing(tmp_path: Path) -> None:
    """The object cannot be confirmed while S3 is down: the source stays, the action is
    retried (transient) once S3 answers."""
    from cefmp4.runtime.errors import TransientError

    path, intent, head = _setup(tmp_path)
    head.down = True
    sink = AfterUploadSink(head, space=FakeSpace(tmp_path, short_from=1))
    with pytest.raises(TransientError):
        await sink.deliver(_item(replace(intent, action=EVICT)))
    assert path.exists()
    head.down = False
    await sink.deliver(_item(replace(intent, action=EVICT)))
    assert not path.exists()


# --- the tally of kept sources (evictable_files, evictable_bytes) -------------------------


class MemoryOutbox:
    """The store side of the outbox in memory; counts the reads of every item."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], OutboxItem] = {}
        self.seq = 0
        self.full_reads = 0
        self.while_reading: Callable[[], Awaitable[None]] | None = None

    def add(self, sink: str, stream_id: str, payload: bytes) -> None:
        self.seq += 1
        self.items.setdefault((sink, stream_id),
                              OutboxItem(self.seq, sink, stream_id, payload, 0.0))

    async def put_stream_with_outbox(self, record: StreamRecord,
                                     items: Sequence[tuple[str, bytes]],
                                     created_at: float) -> None:
        for sink, payload in items:
            self.add(sink, record.stream_id, payload)

    async def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        self.full_reads += limit > 1
        out = sorted((i for i in self.items.values() if i.sink == sink), key=lambda i: i.seq)
        if self.while_reading is not None:
            await self.while_reading()  # the store answered; the caller has not resumed
        return out[:limit]

    async def outbox_done(self, sink: str, stream_id: str) -> None:
        self.items.pop((sink, stream_id), None)

    async def outbox_failed(self, sink: str, stream_id: str, error: str) -> None:
        self.items.pop((sink, stream_id), None)

    async def outbox_count(self, sinks: frozenset[str]) -> int:
        return sum(sink in sinks for sink, _ in self.items)

    async def outbox_claim(self, owner: str, ttl: float) -> bool:
        return True


def _intent(n: int, size: int) -> bytes:
    return Intent(
        action=EVICT, stream_id=f"s{n}", status="complete", path=f"/w/{n}.mp4",
        rel_path=f"{n}.mp4", device=1, inode=n, size=size, mtime_ns=1, sha256="0" * 64,
        key=f"p/{n}.mp4", etag=None, metadata_key=f"p/{n}.mp4.metadata.json",
    ).to_json()


def _record(n: int) -> StreamRecord:
    return StreamRecord(
        stream_id=f"s{n}", path=f"/w/{n}.mp4", rel_path=f"{n}.mp4", device=1, inode=n,
        bucket="b", key=f"p/{n}.mp4", part_size=1 << 20, max_parts=10_000,
        state=StreamState.COMPLETED, started_at=0.0, last_activity_at=0.0,
    )


def _kept() -> tuple[KeptSources, list[tuple[int, int]]]:
    published: list[tuple[int, int]] = []
    return KeptSources(lambda files, nbytes: published.append((files, nbytes))), published


async def test_kept_sources_are_read_once_then_kept_by_the_writes() -> None:
    store = MemoryOutbox()
    store.add(SINK_AFTER_UPLOAD, "s1", _intent(1, 100))
    store.add(SINK_AFTER_UPLOAD, "s2", _intent(2, 20))
    store.add("webhook", "s2", b"{}")  # a notification: not a kept source
    kept, published = _kept()
    outbox = KeptOutbox(store, kept)
    assert await kept.reconcile(outbox) == 2
    assert published[-1] == (2, 120)
    assert store.full_reads == 1
    await outbox.put_stream_with_outbox(
        _record(3), [("webhook", b"{}"), (SINK_AFTER_UPLOAD, _intent(3, 7))], 0.0)
    assert published[-1] == (3, 127)  # at once, not at the next round
    await outbox.outbox_done(SINK_AFTER_UPLOAD, "s1")  # evicted
    assert published[-1] == (2, 27)
    await outbox.outbox_failed(SINK_AFTER_UPLOAD, "s2", "source changed; kept")
    assert published[-1] == (1, 7)  # kept for good, but no longer evictable
    await outbox.outbox_done("webhook", "s2")
    for _ in range(3):
        assert await kept.reconcile(outbox) == 1
    assert store.full_reads == 1  # each round a count only: the tally agreed
    assert (len(kept), kept.nbytes) == (1, 7)


async def test_kept_sources_follow_another_process() -> None:
    """Items added or removed by another process (``upload`` beside the daemon, another
    instance on the same Redis): the count differs, and the next round reads them all."""
    store = MemoryOutbox()
    kept, published = _kept()
    outbox = KeptOutbox(store, kept)
    assert await kept.reconcile(outbox) == 0
    assert published == [(0, 0)]
    store.add(SINK_AFTER_UPLOAD, "s1", _intent(1, 5))
    store.add(SINK_AFTER_UPLOAD, "s2", _intent(2, 6))
    assert await kept.reconcile(outbox) == 2
    assert published[-1] == (2, 11)
    await store.outbox_done(SINK_AFTER_UPLOAD, "s1")
    assert await kept.reconcile(outbox) == 1
    assert published[-1] == (1, 6)
    assert store.full_reads == 3


async def test_kept_sources_keep_what_changed_while_they_were_read() -> None:
    store = MemoryOutbox()
    for n in (1, 2):
        store.add(SINK_AFTER_UPLOAD, f"s{n}", _intent(n, 10 * n))
    kept, published = _kept()
    outbox = KeptOutbox(store, kept)

    async def meanwhile() -> None:
        store.while_reading = None
        await outbox.outbox_done(SINK_AFTER_UPLOAD, "s1")  # evicted after the read
        await outbox.put_stream_with_outbox(_record(3), [(SINK_AFTER_UPLOAD, _intent(3, 1))],
                                            0.0)

    store.while_reading = meanwhile
    await kept.reconcile(outbox)
    assert published[-1] == (2, 21)  # s2 and s3, not s1
    assert await kept.reconcile(outbox) == 2
    assert store.full_reads == 1


async def test_an_item_that_does_not_parse_is_kept_at_no_bytes() -> None:
    """It is in the store's count until the sink fails it: counted, so that the tally agrees
    and is not read again each round."""
    store = MemoryOutbox()
    store.add(SINK_AFTER_UPLOAD, "s1", b"not json")
    store.add(SINK_AFTER_UPLOAD, "s2", _intent(2, 9))
    kept, published = _kept()
    for _ in range(2):
        assert await kept.reconcile(KeptOutbox(store, kept)) == 2
    assert published[-1] == (2, 9)
    assert store.full_reads == 1
