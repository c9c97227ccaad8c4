"""The outbox: durable post-completion work, notifications and after-upload actions.

The checkpoint store keeps it: when a stream is marked completed, the same store write
records one item per sink (``webhook``, ``redis``, ``after_upload``), keyed by
(sink, stream id) so redoing a completion after a crash adds nothing. A
:class:`Dispatcher` loop per sink takes items in completion order (``seq``), delivers the
oldest, and removes it only once delivered. A transient failure retries the *same* item
with capped backoff, so order is kept per sink and a receiver that is down for an hour gets
every notification afterwards; a crash at any point redelivers at most the item in flight
(at least once: receivers dedupe on the ``Idempotency-Key`` / ``stream_id``). One
dispatcher per store delivers (``outbox_claim``), so instances sharing a Redis do not: the
claim is renewed while a delivery runs and checked before each item. An item a sink keeps
failing on with an error it does not classify is set aside after ``BUG_ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from cefmp4.checkpoint import StreamRecord
from cefmp4.runtime.errors import PermanentError, TransientError
from cefmp4.runtime.retry import Backoff

log = structlog.get_logger("cefmp4.after.outbox")

SINK_WEBHOOK = "webhook"
SINK_REDIS = "redis"
SINK_AFTER_UPLOAD = "after_upload"
NOTIFY_SINKS = frozenset({SINK_WEBHOOK, SINK_REDIS})
BATCH = 64
# A sink that raises neither TransientError nor PermanentError has a bug, or met a failure
# it does not classify (a payload it chokes on, an OSError nobody mapped). Retried, since it
# may pass, but not for ever: that would hold back every item behind it. After this many
# attempts (at most a minute of backoff by default) the item is failed like a permanent error,
# named by the error's class, and logged once; a notification is then lost (counted in
# notifications_failed_total) and an after-upload action not taken (the file is kept).
BUG_ATTEMPTS = 8
DEFAULT_BACKOFF = Backoff(initial=0.5, maximum=60.0)


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One pending delivery. ``seq`` grows with completion order across all sinks."""

    seq: int
    sink: str
    stream_id: str
    payload: bytes
    created_at: float


class Outbox(Protocol):
    """The store side (SQLite and Redis checkpoint stores implement it)."""

    async def put_stream_with_outbox(
        self, record: StreamRecord, items: Sequence[tuple[str, bytes]], created_at: float
    ) -> None:
        """``put_stream(record)`` and add ``(sink, payload)`` items for the record's stream,
        in one atomic write; an item that exists already is left as it is."""

    async def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        """The oldest ``limit`` items of ``sink`` not done nor failed, ascending ``seq``."""

    async def outbox_done(self, sink: str, stream_id: str) -> None:
        """Delivered: forget the item (a no-op when already gone)."""

    async def outbox_failed(self, sink: str, stream_id: str, error: str) -> None:
        """Permanently undeliverable: keep it for inspection, never hand it out again."""

    async def outbox_count(self, sinks: frozenset[str]) -> int:
        """Items still pending for these sinks."""

    async def outbox_claim(self, owner: str, ttl: float) -> bool:
        """Take or renew the right to deliver (one dispatcher per store, so several
        instances on one Redis keep the order and do not all deliver everything)."""


class Sink(Protocol):
    name: str

    async def deliver(self, item: OutboxItem) -> None:
        """Deliver once; ``TransientError`` to retry later, ``PermanentError`` to give up."""


# --- the dispatcher -----------------------------------------------------------------------


@dataclass(slots=True)
class DispatchHooks:
    """Metrics and logs, injected (``notifications_failed_total``, ``notifications_pending``)."""

    failed: Callable[[str], None] = lambda _sink: None
    pending: Callable[[int], None] = lambda _n: None


class Dispatcher:
    """One loop per sink: oldest first, the same item again after a transient failure."""

    def __init__(
        self,
        outbox: Outbox,
        sinks: Sequence[Sink],
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        hooks: DispatchHooks | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        idle_poll: float = 30.0,
        owner: str = "cefmp4",
        claim_ttl: float = 30.0,
    ) -> None:
        self.outbox = outbox
        self.sinks = list(sinks)
        self.backoff = backoff
        self.hooks = hooks or DispatchHooks()
        self.sleep = sleep
        self.rng = rng
        self.idle_poll = idle_poll
        self._wake = {sink.name: asyncio.Event() for sink in self.sinks}
        self.delivered = 0
        self.owner = owner
        self.claim_ttl = claim_ttl

    def poke(self) -> None:
        """New items were recorded: look now rather than at the next idle poll."""
        for event in self._wake.values():
            event.set()

    async def run(self) -> None:
        """Until cancelled; every error is retried, never the end of the task."""
        async with asyncio.TaskGroup() as tg:
            for sink in self.sinks:
                tg.create_task(self._run_sink(sink), name=f"outbox-{sink.name}")

    async def drain(self) -> None:
        """Deliver everything pending now, then return (``upload`` and tests). Returns at
        once when another dispatcher holds the claim: it delivers them."""
        for sink in self.sinks:
            while await self._claimed() and await self._one_batch(sink):
                pass

    async def _claimed(self) -> bool:
        claim = getattr(self.outbox, "outbox_claim", None)
        if claim is None:
            return True
        ok: bool = await self._store("outbox_claim", lambda: claim(self.owner, self.claim_ttl))
        return ok

    async def _run_sink(self, sink: Sink) -> None:
        wake = self._wake[sink.name]
        while True:
            wake.clear()
            if not await self._claimed():
                await self.sleep(self.claim_ttl / 3)  # another instance delivers
                continue
            if await self._one_batch(sink):
                continue
            try:
                async with asyncio.timeout(min(self.idle_poll, self.claim_ttl / 3)):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _one_batch(self, sink: Sink) -> bool:
        """Deliver one batch of ``sink``'s items; False when there was nothing pending."""
        items = await self._store("outbox_pending", lambda: self.outbox.outbox_pending(
            sink.name, BATCH))
        await self._report_pending()
        if not items:
            return False
        for item in items:
            # Checked again before each item: the batch was read under a claim that another
            # instance may hold by now (a pause, a partition), and it delivers them then.
            if not await self._claimed() or not await self._deliver(sink, item):
                break
        await self._report_pending()
        return True

    async def _deliver(self, sink: Sink, item: OutboxItem) -> bool:
        """True once the item is done with (delivered or failed for good); False when the
        claim was lost while delivering or retrying (the new holder delivers it)."""
        attempt = bugs = 0
        with structlog.contextvars.bound_contextvars(stream_id=item.stream_id, sink=sink.name):
            while True:
                try:
                    if not await self._deliver_holding_claim(sink, item):
                        return False
                except TransientError as exc:
                    self.hooks.failed(sink.name)
                    wait = self.backoff.delay(attempt, self.rng)
                    log.warning("delivery_retry", attempt=attempt + 1, delay_s=round(wait, 2),
                                error=str(exc))
                    attempt += 1
                    await self.sleep(wait)
                    if not await self._claimed():
                        return False
                    continue
                except PermanentError as exc:
                    self.hooks.failed(sink.name)
                    reason = str(exc)
                    log.error("delivery_failed", error=reason)
                    await self._store("outbox_failed", functools.partial(
                        self.outbox.outbox_failed, sink.name, item.stream_id, reason))
                    return True
                except Exception as exc:
                    # A bug in a sink must not stop the queue for ever (BUG_ATTEMPTS).
                    self.hooks.failed(sink.name)
                    bugs += 1
                    if bugs >= BUG_ATTEMPTS:
                        reason = f"{type(exc).__name__} on each of {bugs} attempts"
                        log.error("delivery_failed", error=reason)
                        await self._store("outbox_failed", functools.partial(
                            self.outbox.outbox_failed, sink.name, item.stream_id, reason))
                        return True
                    wait = self.backoff.delay(attempt, self.rng)
                    if bugs == 1:  # the traceback once; the retries in one line each
                        log.error("delivery_error", error=repr(exc), exc_info=exc)
                    else:
                        log.warning("delivery_retry", attempt=attempt + 1,
                                    delay_s=round(wait, 2), error=repr(exc))
                    attempt += 1
                    await self.sleep(wait)
                    if not await self._claimed():
                        return False
                    continue
                break
            await self._store("outbox_done", lambda: self.outbox.outbox_done(
                sink.name, item.stream_id))
            self.delivered += 1
            log.info("delivered", attempts=attempt + 1)
            return True

    async def _deliver_holding_claim(self, sink: Sink, item: OutboxItem) -> bool:
        """``sink.deliver(item)`` while the claim is renewed every ``claim_ttl / 3`` (an
        after-upload item waits STREAM_TIMEOUT_SECONDS, as long as the claim lasts by
        default: unrenewed, it lapsed mid-delivery and another instance delivered the same
        item). True when the delivery ended (its error raised); False when the claim was
        lost meanwhile: another instance holds it, or it was not renewed for a whole TTL
        (the store unreachable: it may have been taken). The delivery is then cancelled, as
        if this process had crashed there, and not marked done: the new holder delivers the
        item (at least once, as after any crash; receivers dedupe on the Idempotency-Key or
        stream id, and an after-upload action proves the file again before it acts, so one
        whose work had begun in a thread converges). Cancelling rather than finishing keeps
        the usual loss, during the quiet wait, from acting twice. Renewals follow the
        loop's clock (the claim's TTL is real time), not the injected backoff ``sleep``."""
        claim = getattr(self.outbox, "outbox_claim", None)
        if claim is None:
            await sink.deliver(item)
            return True
        loop = asyncio.get_running_loop()
        delivery = asyncio.ensure_future(sink.deliver(item))
        renewed_at = loop.time()  # _one_batch took or renewed it just before
        try:
            while True:
                done, _ = await asyncio.wait({delivery}, timeout=self.claim_ttl / 3)
                if done:
                    delivery.result()
                    return True
                try:
                    held: bool | None = bool(await claim(self.owner, self.claim_ttl))
                except Exception as exc:  # unknown: it lasts its TTL from the last renewal
                    log.warning("outbox_retry", operation="outbox_claim", error=str(exc))
                    held = None
                if held:
                    renewed_at = loop.time()
                elif held is False or loop.time() - renewed_at >= self.claim_ttl:
                    log.warning("outbox_claim_lost", action="delivery cancelled; the "
                                "instance holding the claim delivers the item")
                    return False
        finally:
            if not delivery.done():
                delivery.cancel()
                await asyncio.wait({delivery})
            if delivery.done() and not delivery.cancelled():
                delivery.exception()  # retrieved, whatever became of it

    async def _report_pending(self) -> None:
        names = frozenset(s.name for s in self.sinks) & NOTIFY_SINKS
        if names:
            count = await self._store("outbox_count", lambda: self.outbox.outbox_count(names))
            self.hooks.pending(count)

    async def _store(self, operation: str, op: Callable[[], Awaitable[Any]]) -> Any:
        """The store call until it succeeds: the outbox task recovers from anything but
        cancellation (an outage, or an error that needs the operator, which is logged)."""
        attempt = 0
        while True:
            try:
                return await op()
            except TransientError as exc:
                wait = self.backoff.delay(attempt, self.rng)
                log.warning("outbox_retry", operation=operation, error=str(exc),
                            delay_s=round(wait, 2))
            except Exception as exc:
                wait = self.backoff.delay(attempt, self.rng)
                log.error("outbox_error", operation=operation, error=repr(exc),
                          delay_s=round(wait, 2), exc_info=exc)
            attempt += 1
            await self.sleep(wait)
