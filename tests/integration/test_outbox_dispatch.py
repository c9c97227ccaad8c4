"""The outbox Dispatcher over the real stores (SQLite, redis-server): a malformed item does
not stop the queue (SPEC §2.18), and two instances sharing Redis deliver each item once."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from typing import Any

import redis.asyncio

from cefmp4.after.outbox import Dispatcher, OutboxItem
from cefmp4.checkpoint.redis import open_redis_store
from cefmp4.checkpoint.sqlite import DB_NAME
from cefmp4.runtime.retry import Backoff
from tests.contract.test_checkpoint_store import Backend, backend, make_stream

__all__ = ["backend"]  # the parametrised fixture (sqlite, redis), shared with the contract

FAST = Backoff(initial=0.01, maximum=0.05)
AFTER = frozenset({"after_upload"})


class Recording:
    """A sink that records each delivery it starts, taking ``takes`` seconds for each."""

    def __init__(self, name: str, owner: str = "", takes: float = 0.0) -> None:
        self.name, self.owner, self.takes = name, owner, takes
        self.started: list[tuple[str, str]] = []

    async def deliver(self, item: OutboxItem) -> None:
        self.started.append((self.owner, item.stream_id))
        if self.takes:
            await asyncio.sleep(self.takes)  # an after-upload item's quiet wait


class CountsDone:
    """A store seen through: ``all_done`` is set once ``n`` items were marked done."""

    def __init__(self, store: Any, done: list[str], n: int, all_done: asyncio.Event) -> None:
        self.store, self.done, self.n, self.all_done = store, done, n, all_done

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def outbox_done(self, sink: str, stream_id: str) -> None:
        await self.store.outbox_done(sink, stream_id)
        self.done.append(stream_id)
        if len(self.done) >= self.n:
            self.all_done.set()


async def test_a_malformed_item_does_not_stop_later_deliveries(backend: Backend) -> None:
    async with backend.open() as store:
        s: Any = store
        for sid in ("s1", "bad", "s2"):
            await s.put_stream_with_outbox(make_stream(sid), [("webhook", b"{}")], 1.0)
    if backend.kind == "sqlite":
        assert backend.state_dir is not None
        conn = sqlite3.connect(backend.state_dir / DB_NAME)
        conn.execute("UPDATE outbox SET created_at = 'x' WHERE stream_id = 'bad'")
        conn.commit()
        conn.close()
    else:
        async with redis.asyncio.from_url(backend.url) as client:
            await client.hset(f"{backend.prefix}outbox-item:webhook:bad", "created_at", "x")
    async with backend.open() as store:
        sink = Recording("webhook")
        dispatcher = Dispatcher(store, [sink], backoff=FAST)  # type: ignore[arg-type]
        async with asyncio.timeout(10):
            await dispatcher.drain()
        assert [sid for _, sid in sink.started] == ["s1", "s2"]
        assert await store.outbox_count(frozenset({"webhook"})) == 0  # type: ignore[attr-defined]


async def test_two_instances_on_one_redis_deliver_each_item_once(redis_url: str) -> None:
    """Each delivery outlasts the claim's TTL three times over (as the after-upload quiet
    wait outlasts the 30 s claim): the claim is renewed while it runs, so the other
    instance never takes over mid-delivery and starts the same item."""
    ttl = 0.3
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as one, \
            open_redis_store(redis_url, key_prefix=prefix) as two:
        for sid in ("s1", "s2", "s3"):
            await one.put_stream_with_outbox(make_stream(sid), [("after_upload", b"{}")], 1.0)
        sinks = [Recording("after_upload", owner, takes=ttl * 3) for owner in ("a", "b")]
        done: list[str] = []
        all_done = asyncio.Event()
        dispatchers = [
            Dispatcher(CountsDone(store, done, 3, all_done), [sink], owner=sink.owner,
                       claim_ttl=ttl, backoff=FAST)
            for store, sink in zip((one, two), sinks, strict=True)
        ]  # fmt: skip
        tasks = [asyncio.create_task(d.run()) for d in dispatchers]
        try:
            async with asyncio.timeout(30):
                await all_done.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert await one.outbox_count(AFTER) == 0
    started = sorted(sid for sink in sinks for _, sid in sink.started)
    assert started == ["s1", "s2", "s3"], [s.started for s in sinks]
    assert sorted(done) == ["s1", "s2", "s3"]
