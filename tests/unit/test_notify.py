"""Outbox dispatch: order, retry of the same item, permanent failures, hooks (§2.16)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac

import pytest
from structlog.testing import capture_logs

from cefmp4.after.notify import classify_status, signature, webhook_headers
from cefmp4.after.outbox import BUG_ATTEMPTS, Dispatcher, DispatchHooks, OutboxItem
from cefmp4.runtime.errors import PermanentError, TransientError
from cefmp4.runtime.retry import Backoff


class MemoryOutbox:
    def __init__(self) -> None:
        self.items: dict[tuple[str, str], OutboxItem] = {}
        self.failed: dict[tuple[str, str], str] = {}
        self.seq = 0
        self.outage = 0  # the next N calls raise TransientError
        self.broken = 0  # then the next N raise PermanentError

    def add(self, sink: str, stream_id: str, payload: bytes = b"{}") -> None:
        if (sink, stream_id) in self.items:
            return
        self.seq += 1
        self.items[(sink, stream_id)] = OutboxItem(self.seq, sink, stream_id, payload, 0.0)

    def _maybe_fail(self) -> None:
        if self.outage:
            self.outage -= 1
            raise TransientError("store down")
        if self.broken:
            self.broken -= 1
            raise PermanentError("needs the operator")

    async def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        self._maybe_fail()
        items = sorted((i for (s, _), i in self.items.items() if s == sink), key=lambda i: i.seq)
        return items[:limit]

    async def outbox_done(self, sink: str, stream_id: str) -> None:
        self._maybe_fail()
        self.items.pop((sink, stream_id), None)

    async def outbox_failed(self, sink: str, stream_id: str, error: str) -> None:
        self.items.pop((sink, stream_id), None)
        self.failed[(sink, stream_id)] = error

    async def outbox_count(self, sinks: frozenset[str]) -> int:
        return sum(1 for (s, _) in self.items if s in sinks)


class ScriptedSink:
    """Fails as told, then records deliveries."""

    def __init__(self, name: str = "webhook") -> None:
        self.name = name
        self.got_one = asyncio.Event()
        self.script: dict[str, list[Exception]] = {}
        self.delivered: list[str] = []
        self.attempts: list[str] = []

    async def deliver(self, item: OutboxItem) -> None:
        self.attempts.append(item.stream_id)
        errors = self.script.get(item.stream_id)
        if errors:
            raise errors.pop(0)
        self.delivered.append(item.stream_id)
        self.got_one.set()


async def _no_sleep(_s: float) -> None:
    await asyncio.sleep(0)


def _dispatcher(outbox: MemoryOutbox, *sinks: ScriptedSink) -> tuple[Dispatcher, list[str],
                                                                       list[int]]:
    failed: list[str] = []
    pending: list[int] = []
    d = Dispatcher(outbox, sinks, backoff=Backoff(initial=0.01, maximum=0.02),
                   hooks=DispatchHooks(failed=failed.append, pending=pending.append),
                   sleep=_no_sleep)
    return d, failed, pending


async def test_delivers_in_completion_order_and_retries_the_same_item() -> None:
    outbox = MemoryOutbox()
    for sid in ("s1", "s2", "s3"):
        outbox.add("webhook", sid)
    sink = ScriptedSink()
    sink.script["s2"] = [TransientError("503"), TransientError("timeout")]
    d, failed, pending = _dispatcher(outbox, sink)
    await d.drain()
    assert sink.delivered == ["s1", "s2", "s3"]
    assert sink.attempts == ["s1", "s2", "s2", "s2", "s3"]  # s3 waited for s2
    assert failed == ["webhook", "webhook"]
    assert not outbox.items
    assert pending[0] == 3
    assert pending[-1] == 0


async def test_permanent_failure_is_kept_aside_and_the_queue_moves_on() -> None:
    outbox = MemoryOutbox()
    outbox.add("webhook", "bad")
    outbox.add("webhook", "good")
    sink = ScriptedSink()
    sink.script["bad"] = [PermanentError("HTTP 422")]
    d, failed, _ = _dispatcher(outbox, sink)
    await d.drain()
    assert sink.delivered == ["good"]
    assert outbox.failed == {("webhook", "bad"): "HTTP 422"}
    assert failed == ["webhook"]


async def test_a_sink_bug_is_retried_not_fatal() -> None:
    outbox = MemoryOutbox()
    outbox.add("webhook", "s1")
    sink = ScriptedSink()
    sink.script["s1"] = [RuntimeError("bug")]
    d, _, _ = _dispatcher(outbox, sink)
    await d.drain()
    assert sink.delivered == ["s1"]


async def test_store_outage_is_waited_out() -> None:
    outbox = MemoryOutbox()
    outbox.add("redis", "s1")
    outbox.outage = 3
    sink = ScriptedSink("redis")
    d, _, _ = _dispatcher(outbox, sink)
    await d.drain()
    assert sink.delivered == ["s1"]
    assert not outbox.items


async def test_store_errors_never_end_the_dispatcher() -> None:
    outbox = MemoryOutbox()
    outbox.add("webhook", "s1")
    outbox.broken = 2
    sink = ScriptedSink()
    d, _, _ = _dispatcher(outbox, sink)
    await d.drain()
    assert sink.delivered == ["s1"]
    assert not outbox.items


async def test_sinks_are_independent() -> None:
    outbox = MemoryOutbox()
    outbox.add("webhook", "s1")
    outbox.add("redis", "s1")
    web, red = ScriptedSink("webhook"), ScriptedSink("redis")
    web.script["s1"] = [PermanentError("400")]
    d, _, _ = _dispatcher(outbox, web, red)
    await d.drain()
    assert red.delivered == ["s1"]
    assert ("webhook", "s1") in outbox.failed


async def test_run_loop_picks_up_new_items_when_poked() -> None:
    outbox = MemoryOutbox()
    sink = ScriptedSink()
    d, _, _ = _dispatcher(outbox, sink)
    d.idle_poll = 3600  # only a poke can wake it within the test's time
    task = asyncio.create_task(d.run())
    try:
        await asyncio.sleep(0.01)
        outbox.add("webhook", "late")
        d.poke()
        async with asyncio.timeout(5):
            await sink.got_one.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sink.delivered == ["late"]


@pytest.mark.parametrize(
    ("status", "verdict"),
    [(200, "ok"), (204, "ok"), (301, "retry"), (308, "retry"), (400, "permanent"),
     (401, "retry"), (403, "retry"), (404, "retry"), (408, "retry"), (409, "retry"),
     (413, "permanent"), (422, "permanent"), (429, "retry"), (500, "retry"), (503, "retry")],
)
def test_status_policy(status: int, verdict: str) -> None:
    assert classify_status(status) == verdict


def test_signature_and_headers() -> None:
    body = b'{"stream_id":"abc"}'
    sig = signature(b"k3y", body)
    assert sig == "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    headers = webhook_headers("abc", body, b"k3y")
    assert headers["Idempotency-Key"] == "abc"
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Cefmp4-Signature"] == sig
    assert "X-Cefmp4-Signature" not in webhook_headers("abc", body, None)


class ClaimingOutbox(MemoryOutbox):
    def __init__(self) -> None:
        super().__init__()
        self.holder = "other"

    async def outbox_claim(self, owner: str, ttl: float) -> bool:
        return self.holder == owner


async def test_only_the_claim_holder_delivers() -> None:
    outbox = ClaimingOutbox()
    outbox.add("webhook", "s1")
    sink = ScriptedSink()
    d, _, _ = _dispatcher(outbox, sink)
    d.owner = "me"
    await d.drain()
    assert sink.attempts == []
    assert ("webhook", "s1") in outbox.items
    outbox.holder = "me"
    await d.drain()
    assert sink.delivered == ["s1"]


async def test_a_lost_claim_stops_retrying_and_keeps_the_item() -> None:
    outbox = ClaimingOutbox()
    outbox.holder = "me"
    outbox.add("webhook", "s1")

    class Flaky(ScriptedSink):
        async def deliver(self, item: OutboxItem) -> None:
            self.attempts.append(item.stream_id)
            outbox.holder = "other"  # another instance took over meanwhile
            raise TransientError("503")

    flaky = Flaky()
    d, _, _ = _dispatcher(outbox, flaky)
    d.owner = "me"
    await d.drain()
    assert ("webhook", "s1") in outbox.items
    assert flaky.attempts == ["s1"]  # not retried by the instance that lost the claim


async def test_a_sink_bug_that_persists_is_set_aside_and_the_queue_moves_on() -> None:
    """An item whose delivery keeps raising an unclassified error (a sink bug, a payload it
    chokes on) is failed after BUG_ATTEMPTS, named by the error's class: the items behind
    it are delivered."""
    outbox = MemoryOutbox()
    outbox.add("after_upload", "poison")
    outbox.add("after_upload", "next")
    sink = ScriptedSink("after_upload")
    sink.script["poison"] = [ValueError("Expecting value: line 1 column 1")] * 1000
    d, failed, _ = _dispatcher(outbox, sink)
    with capture_logs() as events:
        async with asyncio.timeout(10):
            await d.drain()
    assert sink.delivered == ["next"]
    assert sink.attempts.count("poison") == BUG_ATTEMPTS
    assert "ValueError" in outbox.failed[("after_upload", "poison")]
    assert len(failed) == BUG_ATTEMPTS
    with_traceback = [e for e in events if e.get("exc_info") is not None]
    assert len(with_traceback) == 1  # the traceback once, not once per attempt
    assert [e["event"] for e in events].count("delivery_failed") == 1


async def test_the_claim_is_checked_before_each_item_of_a_batch() -> None:
    outbox = ClaimingOutbox()
    outbox.holder = "me"
    for sid in ("s1", "s2"):
        outbox.add("webhook", sid)

    class HandsOver(ScriptedSink):
        async def deliver(self, item: OutboxItem) -> None:
            await super().deliver(item)
            outbox.holder = "other"  # another instance took over after this one

    sink = HandsOver()
    d, _, _ = _dispatcher(outbox, sink)
    d.owner = "me"
    await d.drain()
    assert sink.delivered == ["s1"]
    assert ("webhook", "s2") in outbox.items  # left to the new holder


async def test_a_claim_lost_during_a_delivery_cancels_it_and_keeps_the_item() -> None:
    """The claim is renewed while a delivery runs; if it is lost anyway (another instance
    holds it), the delivery is cancelled as if this process had crashed: the new holder
    delivers the item (at least once), this one does not act a second time."""
    outbox = ClaimingOutbox()
    outbox.holder = "me"
    outbox.add("after_upload", "s1")
    cancelled = asyncio.Event()

    class Waits(ScriptedSink):
        async def deliver(self, item: OutboxItem) -> None:
            self.attempts.append(item.stream_id)
            outbox.holder = "other"
            try:
                await asyncio.Event().wait()  # the quiet wait of an after-upload action
            except asyncio.CancelledError:
                cancelled.set()
                raise

    sink = Waits("after_upload")
    d, _, _ = _dispatcher(outbox, sink)
    d.owner, d.claim_ttl = "me", 0.06
    async with asyncio.timeout(10):
        await d.drain()
    assert cancelled.is_set()
    assert ("after_upload", "s1") in outbox.items
    assert d.delivered == 0
