"""The outbox half of both checkpoint stores (cefmp4.after.notify.Outbox): same behaviour."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from cefmp4.checkpoint import StreamState
from cefmp4.checkpoint.sqlite import DB_NAME, SCHEMA_VERSION, open_sqlite_store
from cefmp4.runtime import logs
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


# -- an item that does not parse (SPEC §2.18): kept and reported, never handed out --------

# (name, sqlite statement, redis command on the item's hash): corrupt stream "bad"'s item.
OUTBOX_CORRUPTIONS: list[tuple[str, str, tuple[str | bytes, ...]]] = [
    ("text created_at", "UPDATE outbox SET created_at = 'x' WHERE stream_id = ?",
     ("HSET", "{item}", "created_at", "x")),
    ("nan created_at", "UPDATE outbox SET created_at = 'nan' WHERE stream_id = ?",
     ("HSET", "{item}", "created_at", "nan")),
    ("payload not bytes", "UPDATE outbox SET payload = 5 WHERE stream_id = ?",
     ("HSET", "{item}", "payload", b"\xff\xfe not UTF-8")),
    ("bytes for a stream id", "UPDATE outbox SET stream_id = x'ff' WHERE stream_id = ?",
     ("HSET", "{item}", "seq", "nope")),
    ("unsafe stream id", "UPDATE outbox SET stream_id = '../x' WHERE stream_id = ?",
     ("HDEL", "{item}", "payload")),
]  # fmt: skip


async def _corrupt_item(backend: Backend, sql: str, command: tuple[str | bytes, ...]) -> None:
    if backend.kind == "sqlite":
        assert backend.state_dir is not None
        conn = sqlite3.connect(backend.state_dir / DB_NAME)
        conn.execute(sql, ("bad",))
        conn.commit()
        conn.close()
        return
    item = f"{backend.prefix}outbox-item:webhook:bad"
    async with redis.asyncio.from_url(backend.url) as client:
        await client.execute_command(  # type: ignore[no-untyped-call]
            *(item if c == "{item}" else c for c in command)
        )


async def _kept_as_failed(backend: Backend) -> str | None:
    """The ``failed`` reason stored with the corrupted item (None: not marked)."""
    if backend.kind == "sqlite":
        assert backend.state_dir is not None
        conn = sqlite3.connect(backend.state_dir / DB_NAME)
        rows = conn.execute("SELECT failed FROM outbox WHERE stream_id NOT IN ('g1', 'g2')")
        [(failed,)] = rows.fetchall()
        conn.close()
        return None if failed is None else str(failed)
    async with redis.asyncio.from_url(backend.url, decode_responses=True) as client:
        reason = await client.hget(f"{backend.prefix}outbox-item:webhook:bad", "failed")
    return None if reason is None else str(reason)


@pytest.mark.parametrize(("case", "sql", "command"), OUTBOX_CORRUPTIONS,
                         ids=[c[0] for c in OUTBOX_CORRUPTIONS])
async def test_an_item_that_does_not_parse_is_kept_aside_not_raised(
    backend: Backend, case: str, sql: str, command: tuple[str | bytes, ...]
) -> None:
    async with backend.open() as store:
        s: Any = store
        for sid in ("bad", "g1", "g2"):  # the bad one first: it must not hide the others
            await s.put_stream_with_outbox(make_stream(sid), [("webhook", b"{}")], 1.0)
    await _corrupt_item(backend, sql, command)
    async with backend.open() as store:
        s = store
        with capture_logs() as events:
            for _ in range(2):  # warned about once, however often the queue is read
                assert [i.stream_id for i in await s.outbox_pending("webhook", 1)] == ["g1"]
                assert [i.stream_id for i in await s.outbox_pending("webhook", 10)] == [
                    "g1", "g2"]
        assert await s.outbox_count(NOTIFY) == 2
    warnings = [e for e in events if e["event"] == logs.RECORD_QUARANTINED]
    assert len(warnings) == 1, warnings
    assert warnings[0]["reason"]
    reason = await _kept_as_failed(backend)  # kept for inspection, with the reason
    assert reason is not None
    assert reason.startswith("malformed: ")


async def test_items_of_another_type_or_gone_leave_the_queue(redis_url: str) -> None:
    import uuid

    from cefmp4.checkpoint.redis import open_redis_store

    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        for sid in ("string", "gone", "good"):
            await store.put_stream_with_outbox(make_stream(sid), [("webhook", b"{}")], 1.0)
        async with redis.asyncio.from_url(redis_url) as client:
            await client.delete(f"{prefix}outbox-item:webhook:string",
                                f"{prefix}outbox-item:webhook:gone")
            await client.set(f"{prefix}outbox-item:webhook:string", "not a hash")
            await client.zadd(f"{prefix}outbox:webhook", {b"\xff": 0})  # not UTF-8
            assert [i.stream_id for i in await store.outbox_pending("webhook", 1)] == ["good"]
            assert await store.outbox_count(NOTIFY) == 1
            # Left as found: the operator sees what was there.
            assert await client.get(f"{prefix}outbox-item:webhook:string") == b"not a hash"


async def test_a_cancellation_lost_inside_redis_py_is_delivered(redis_url: str) -> None:
    """Python 3.11's asyncio.wait_for, around redis-py's socket writes, returns the result
    and drops a cancellation that arrives as the write completes: the task then ran on as
    if never cancelled (a dispatcher that never stopped, a shutdown waiting for ever)."""
    import asyncio
    import contextlib
    import uuid

    from cefmp4.checkpoint.redis import open_redis_store

    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        client: Any = store.client
        real = client.execute_command

        async def loses_a_cancel(*args: Any, **options: Any) -> Any:
            result = await real(*args, **options)
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # arrives just as the write completes and is dropped, as
            with contextlib.suppress(asyncio.CancelledError):  # 3.11's wait_for does
                await asyncio.sleep(0)
            return result

        client.execute_command = loses_a_cancel
        claim = asyncio.create_task(store.outbox_claim("a", 5))
        await asyncio.wait({claim}, timeout=10)
        assert claim.cancelled()
