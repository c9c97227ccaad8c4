"""The outbox half of both checkpoint stores (cefmp4.after.notify.Outbox): same behaviour."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from cefmp4.checkpoint import StreamState
from cefmp4.checkpoint.sqlite import DB_NAME, SCHEMA_VERSION, open_sqlite_store
from cefmp4.runtime.errors import LeaseLost
from tests.contract.test_checkpoint_store import Backend, backend, make_stream

__all__ = ["backend"]  # the parametrised fixture, shared with the store contract

NOTIFY = frozenset({"webhook", "redis"})


async def test_completion_and_outbox_are_one_write(backend: Backend) -> None:
    async with backend.open() as store:
        s: Any = store
        rec = make_stream("s1", state=StreamState.COMPLETED, status="complete")
        await s.put_stream_with_outbox(rec, [("webhook", b'{"a":1}'), ("after_upload", b"{}")],
                                       100.0)
        got = await store.get_stream("s1")
        assert got is not None
        assert got.state is StreamState.COMPLETED
        [item] = await s.outbox_pending("webhook", 10)
        assert (item.sink, item.stream_id, item.payload, item.created_at) == (
            "webhook", "s1", b'{"a":1}', 100.0)
        assert await s.outbox_count(NOTIFY) == 1
        assert await s.outbox_count(frozenset({"after_upload"})) == 1
        assert await s.outbox_count(frozenset()) == 0


async def test_order_is_completion_order_and_a_redo_keeps_its_place(backend: Backend) -> None:
    async with backend.open() as store:
        s: Any = store
        for sid in ("b", "a", "c"):
            await s.put_stream_with_outbox(make_stream(sid), [("webhook", sid.encode())], 1.0)
        # A crash after the write: finalize redoes it with a new payload; the first wins.
        await s.put_stream_with_outbox(make_stream("b"), [("webhook", b"again")], 2.0)
        items = await s.outbox_pending("webhook", 10)
        assert [i.stream_id for i in items] == ["b", "a", "c"]
        assert items[0].payload == b"b"
        assert [i.seq for i in items] == sorted(i.seq for i in items)
        assert [i.stream_id for i in await s.outbox_pending("webhook", 2)] == ["b", "a"]


async def test_done_and_failed_leave_the_queue(backend: Backend) -> None:
    async with backend.open() as store:
        s: Any = store
        for sid in ("s1", "s2", "s3"):
            await s.put_stream_with_outbox(make_stream(sid), [("webhook", b"{}"),
                                                              ("redis", b"{}")], 1.0)
        await s.outbox_done("webhook", "s1")
        await s.outbox_done("webhook", "s1")  # idempotent
        await s.outbox_failed("webhook", "s2", "HTTP 422")
        assert [i.stream_id for i in await s.outbox_pending("webhook", 10)] == ["s3"]
        assert [i.stream_id for i in await s.outbox_pending("redis", 10)] == ["s1", "s2", "s3"]
        assert await s.outbox_count(NOTIFY) == 4
        # A failed item stays failed even if the completion is written again.
        await s.put_stream_with_outbox(make_stream("s2"), [("webhook", b"{}")], 3.0)
        assert [i.stream_id for i in await s.outbox_pending("webhook", 10)] == ["s3"]


async def test_completed_by_round_trips(backend: Backend) -> None:
    async with backend.open() as store:
        await store.put_stream(make_stream("s1", completed_by="hold_expired"))
        got = await store.get_stream("s1")
        assert got is not None
        assert got.completed_by == "hold_expired"


async def test_outbox_survives_reopening(backend: Backend) -> None:
    async with backend.open() as store:
        s: Any = store
        await s.put_stream_with_outbox(make_stream("s1"), [("webhook", "ü".encode())], 1.0)
    async with backend.open() as store:
        [item] = await store.outbox_pending("webhook", 10)  # type: ignore[attr-defined]
        assert item.payload == "ü".encode()


async def test_fenced_completion_is_refused_after_takeover(redis_url: str) -> None:
    import uuid

    from cefmp4.checkpoint.redis import open_redis_store

    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as old, \
            open_redis_store(redis_url, key_prefix=prefix) as new:
        rec = make_stream("s1")
        token = await old.acquire(rec.inode, "old", 30)
        assert token is not None
        old.fence("s1", rec.inode, token)
        await old.release(rec.inode, "old")
        assert await new.acquire(rec.inode, "new", 30) is not None
        try:
            await old.put_stream_with_outbox(replace(rec, state=StreamState.COMPLETED),
                                             [("webhook", b"{}")], 1.0)
        except LeaseLost:
            pass
        else:
            raise AssertionError("a fenced-out owner completed the stream")
        assert await new.outbox_pending("webhook", 10) == []


async def test_sqlite_version_1_database_gains_the_outbox(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with open_sqlite_store(state) as store:
        await store.put_stream(make_stream("old"))
    # Make it exactly what schema 1 was: no outbox table, no completed_by column.
    conn = sqlite3.connect(state / DB_NAME)
    conn.execute("DROP TABLE outbox")
    conn.execute("ALTER TABLE streams DROP COLUMN completed_by")
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    async with open_sqlite_store(state) as store:
        assert await store.get_stream("old") is not None
        await store.put_stream(make_stream("by", completed_by="writer_closed"))
        got = await store.get_stream("by")
        assert got is not None
        assert got.completed_by == "writer_closed"
        await store.put_stream_with_outbox(make_stream("new"), [("webhook", b"{}")], 1.0)
        assert len(await store.outbox_pending("webhook", 10)) == 1
    conn = sqlite3.connect(state / DB_NAME)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    conn.close()


async def test_one_dispatcher_at_a_time(backend: Backend) -> None:
    import asyncio

    async with backend.open() as store:
        s: Any = store
        assert await s.outbox_claim("a", 0.3)
        assert await s.outbox_claim("a", 0.3)  # renewal
        if backend.kind == "sqlite":
            assert await s.outbox_claim("b", 0.3)  # one process per state dir anyway
            return
        assert not await s.outbox_claim("b", 0.3)
        await asyncio.sleep(0.45)  # a: gone without renewing
        assert await s.outbox_claim("b", 0.3)
        assert not await s.outbox_claim("a", 0.3)
