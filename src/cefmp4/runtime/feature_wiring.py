"""Composition of the recorder features from the settings (SPEC §2.14-§2.16): the writer
policy, the outbox sinks and their dispatcher, the free-space gauge. Used by ``app``."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog

from cefmp4.after.after_upload import (
    AfterUploadSink,
    CompletionOutbox,
    KeptOutbox,
    KeptSources,
    Scope,
    Space,
)
from cefmp4.after.notify import RedisStreamSink, WebhookSink
from cefmp4.after.outbox import (
    NOTIFY_SINKS,
    SINK_AFTER_UPLOAD,
    SINK_REDIS,
    SINK_WEBHOOK,
    Dispatcher,
    DispatchHooks,
    Outbox,
    Sink,
)
from cefmp4.checkpoint import CheckpointStore
from cefmp4.config.settings import Settings
from cefmp4.intake.writers import (
    CloseWatcher,
    WriterScanner,
    prove_no_writer,
    visibility_problems,
)
from cefmp4.runtime import logs
from cefmp4.runtime.clock import Clock
from cefmp4.runtime.errors import CefmpError
from cefmp4.runtime.failpoints import Failpoints
from cefmp4.runtime.metrics import Metrics
from cefmp4.runtime.tasks import TaskSupervisor
from cefmp4.storage import ObjectStore
from cefmp4.streams.writer_policy import CompletionPolicy

log = structlog.get_logger("cefmp4.features")

# ``cefmp4 upload`` delivers what it can before it exits; the rest stays in the outbox for
# the daemon (or the next upload) to deliver.
BURST_DELIVERY_TIMEOUT_S = 30.0


@dataclass(slots=True)
class Features:
    """What the app composes for §2.14-§2.16, and the tasks and steps they need."""

    writers: CompletionPolicy | None = None
    dispatcher: Dispatcher | None = None
    plan: CompletionOutbox = field(default_factory=CompletionOutbox)
    upload_command: bool = False
    after_upload_wait: float = 0.0  # the quiet time an after-upload action waits for
    space: Space | None = None  # AFTER_UPLOAD=evict
    kept: KeptSources | None = None  # AFTER_UPLOAD=evict, the daemon

    def context_fields(self) -> dict[str, Any]:
        """The ``Context`` fields of these features."""
        d = self.dispatcher
        fields: dict[str, Any] = {
            "writers": self.writers, "completion_outbox": self.plan,
            "upload_command": self.upload_command,
        }
        if d is not None:
            fields.update(outbox=d.outbox, outbox_poke=d.poke)
        return fields

    def start(self, tasks: TaskSupervisor, watch_dir: Path, metrics: Metrics) -> None:
        """The daemon's supervised tasks: close events, the outbox, the free-space gauge."""
        if self.writers is not None and self.writers.closes is not None:
            tasks.start("close-events", self.writers.closes.run)
        if self.dispatcher is not None:
            tasks.start("outbox", self.dispatcher.run)
            if self.space is not None and self.kept is not None:
                outbox, space, kept = self.dispatcher.outbox, self.space, self.kept
                tasks.start("eviction", lambda: watch_eviction(space, kept, outbox, metrics))
        free = metrics.watch_dir_free_bytes.set
        tasks.start("free-space", lambda: track_free_bytes(watch_dir, free))

    async def deliver_pending(self) -> None:
        """Burst mode: deliver what is pending, within ``BURST_DELIVERY_TIMEOUT_S``."""
        if self.dispatcher is None:
            return
        try:
            if self.after_upload_wait:
                log.info("after_upload_waiting", seconds=self.after_upload_wait,
                         reason="a source is deleted or moved only after it stayed unchanged "
                                "for STREAM_TIMEOUT_SECONDS after its upload")
            async with asyncio.timeout(BURST_DELIVERY_TIMEOUT_S + self.after_upload_wait):
                await self.dispatcher.drain()
        except TimeoutError:
            log.warning(logs.ERROR, operation="outbox",
                        error="notifications or after-upload actions still pending; kept")


async def open_features(
    settings: Settings, objects: ObjectStore, checkpoints: CheckpointStore, *,
    clock: Clock, failpoints: Failpoints, metrics: Metrics, daemon: bool, owner: str,
    stack: AsyncExitStack,
) -> Features:
    """Everything the settings ask for; ``stack`` closes it. Burst mode (``upload``) has
    no writer signals: its streams end because the command says so."""
    evict = daemon and settings.after_upload == "evict"
    kept = KeptSources(publish_kept(metrics)) if evict else None
    dispatcher, plan = await open_outbox(
        settings, objects, checkpoints, failpoints=failpoints, metrics=metrics, owner=owner,
        stack=stack, clock=clock, daemon=daemon, kept=kept,
    )
    writers = writer_policy(settings, clock) if daemon else None
    if writers is not None and writers.closes is not None:
        stack.callback(writers.closes.close)
    # `upload` waits the quiet time for delete/move; evict acts only under space pressure,
    # which is the daemon's to watch.
    wait = settings.stream_timeout_seconds if plan.action in ("delete", "move") else 0.0
    space = Space(settings.watch_dir, settings.keep_free) if evict else None
    return Features(writers, dispatcher, plan, upload_command=not daemon, after_upload_wait=wait,
                    space=space, kept=kept)


def publish_kept(metrics: Metrics) -> Callable[[int, int], None]:
    """``evictable_files`` and ``evictable_bytes`` from the tally of kept sources."""

    def publish(files: int, nbytes: int) -> None:
        metrics.evictable_files.set(files)
        metrics.evictable_bytes.set(nbytes)

    return publish


def writer_policy(settings: Settings, clock: Clock) -> CompletionPolicy | None:
    """COMPLETE_ON_CLOSE_SECONDS / HOLD_WHILE_OPEN over the writer signals this host has.
    The caller runs ``closes.run`` as a supervised task and closes it at the end."""
    if settings.complete_on_close_seconds is None and not settings.hold_while_open:
        return None
    closes: CloseWatcher | None = None
    if settings.complete_on_close_seconds is not None:
        closes = CloseWatcher(clock.monotonic)
        if not closes.start():
            log.warning(logs.ERROR, operation="close_events", error=closes.error,
                        consequence="COMPLETE_ON_CLOSE_SECONDS has no effect here")
            closes = None
    return CompletionPolicy(
        complete_on_close=settings.complete_on_close_seconds,
        hold_while_open=settings.hold_while_open, max_hold=settings.max_hold_seconds,
        closes=closes, scanner=WriterScanner(clock=clock.monotonic),
        prove_no_writer=prove_no_writer, clock=clock.monotonic,
    )


async def open_outbox(
    settings: Settings, objects: ObjectStore, checkpoints: CheckpointStore, *,
    failpoints: Failpoints, metrics: Metrics, owner: str, stack: AsyncExitStack,
    clock: Clock, daemon: bool = True, kept: KeptSources | None = None,
) -> tuple[Dispatcher | None, CompletionOutbox]:
    """The dispatcher of the post-completion work the settings ask for (None: nothing to
    do), and what a completion records for it. With ``kept``, the writes through the
    dispatcher's outbox (completions and deliveries) keep that tally."""
    sinks: list[Sink] = []
    notify: list[str] = []
    url = settings.notify_webhook_url.get_secret_value()
    if url:
        secret = settings.notify_webhook_secret.get_secret_value().encode() or None
        sinks.append(await stack.enter_async_context(WebhookSink(url, secret)))
        notify.append(SINK_WEBHOOK)
    if settings.notify_redis_stream:
        from cefmp4.checkpoint.redis import RedisCheckpointStore

        assert isinstance(checkpoints, RedisCheckpointStore)  # the settings demand REDIS_URL
        sinks.append(RedisStreamSink(checkpoints.client, settings.notify_redis_stream))
        notify.append(SINK_REDIS)
    if settings.after_upload == "keep" and await _after_upload_pending(checkpoints):
        # Switched to keep with actions still pending (one may have staged its file before
        # a crash): they are ended, and every file comes back into view.
        sinks.append(AfterUploadSink(objects.head_object, keep_only=True))
    # `upload` leaves evictions to the daemon, which watches the free space.
    if settings.after_upload != "keep" and (daemon or settings.after_upload != "evict"):
        target_dir = settings.after_upload_dir
        scope = Scope(settings.watch_dir.resolve(), settings.s3_key_prefix,
                      str(target_dir.resolve()) if target_dir else None)
        space = (Space(settings.watch_dir, settings.keep_free)
                 if settings.after_upload == "evict" else None)
        sinks.append(AfterUploadSink(
            objects.head_object, hit=failpoints.hit, quiet_s=settings.stream_timeout_seconds,
            clock=clock.time, sleep=clock.sleep, scope=scope, space=space,
            evicted=metrics.files_evicted.inc))
        for problem in visibility_problems(settings.watch_dir):
            log.warning(logs.SETTINGS_ADVICE, advice=(
                f"AFTER_UPLOAD={settings.after_upload} keeps every file whose writers it "
                f"cannot prove gone: {problem}"))
    target = settings.after_upload_dir
    plan = CompletionOutbox(
        tuple(notify), settings.after_upload, str(target.resolve()) if target else None
    )
    if not hasattr(checkpoints, "put_stream_with_outbox") or not (sinks or plan.enabled):
        return None, CompletionOutbox()
    # With no sink (`upload` with AFTER_UPLOAD=evict) the dispatcher only records the
    # completions' items, for the daemon to carry out.

    def failed(sink: str) -> None:
        if sink in NOTIFY_SINKS:
            metrics.notifications_failed.inc()
        else:
            metrics.after_upload_failed.inc()

    outbox = cast(Outbox, checkpoints)  # both stores keep an outbox
    dispatcher = Dispatcher(
        outbox if kept is None else KeptOutbox(outbox, kept), sinks, owner=owner,
        hooks=DispatchHooks(failed=failed, pending=metrics.notifications_pending.set),
    )
    return dispatcher, plan


async def _after_upload_pending(checkpoints: CheckpointStore) -> bool:
    """Whether after-upload actions wait in the store. Asked once at start-up, when the store
    may be down (the daemon waits for it later): unknown counts as none, and the next
    start asks again."""
    if not hasattr(checkpoints, "outbox_count"):
        return False
    try:
        pending = await cast(Outbox, checkpoints).outbox_count(frozenset({SINK_AFTER_UPLOAD}))
    except CefmpError as exc:
        log.debug("after_upload_pending_unknown", error=str(exc))
        return False
    return pending > 0


async def watch_eviction(space: Space, kept: KeptSources, outbox: Outbox, metrics: Metrics,
                         *, interval: float = 15.0) -> None:
    """AFTER_UPLOAD=evict: the confirmed sources kept (``evictable_files`` and
    ``evictable_bytes``, checked against the store each round: a count, see
    ``KeptSources``), and one WARNING per episode of short space with nothing to evict,
    saying how many bytes of footage not yet in S3 are at risk (eviction itself is the
    outbox's, oldest first)."""
    episode = False
    while True:
        try:
            count = await kept.reconcile(outbox)
        except CefmpError:  # the store is down: the outbox's own loop says so
            await asyncio.sleep(interval)
            continue
        try:
            short = await asyncio.to_thread(space.short)
        except OSError:
            short = 0  # unknown: track_free_bytes says so
        if short > 0 and count == 0 and not episode:
            at_risk = metrics.registry.get_sample_value("pending_bytes") or 0.0
            log.warning("evict_nothing_to_evict", short_bytes=short,
                        keep_free=str(space.keep), at_risk_bytes=int(at_risk),
                        reason="no source on disk is confirmed in S3 yet")
        episode = (short > 0 and count == 0) or (episode and short > 0)
        await asyncio.sleep(interval)


async def track_free_bytes(
    path: Path, set_value: Callable[[float], None], *, interval: float = 15.0
) -> None:
    """Keep ``watch_dir_free_bytes`` current (statvfs off the loop: NFS may stall)."""
    while True:
        try:
            st = await asyncio.to_thread(os.statvfs, path)
            set_value(float(st.f_bavail * st.f_frsize))
        except OSError as exc:
            set_value(math.nan)
            log.warning("free_space_unknown", error=str(exc))
        await asyncio.sleep(interval)
