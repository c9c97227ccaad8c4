"""What every stream needs: the adapters and the values, built once and complete by ``app``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from cefmp4.after.after_upload import CompletionOutbox
from cefmp4.after.outbox import Outbox
from cefmp4.checkpoint import CheckpointStore, StreamRecord
from cefmp4.core.containers import DEFAULT_EXTENSIONS
from cefmp4.core.keys import KeyTemplate
from cefmp4.runtime import logs
from cefmp4.runtime.clock import Clock, SystemClock
from cefmp4.runtime.failpoints import Failpoints
from cefmp4.runtime.metrics import Metrics
from cefmp4.runtime.readiness import Readiness
from cefmp4.runtime.retry import Backoff, retry_transient
from cefmp4.storage import ObjectStore
from cefmp4.streams.budget import ByteBudget
from cefmp4.streams.evidence import Evidence
from cefmp4.streams.probe import Prober
from cefmp4.streams.uplink import Uplink
from cefmp4.streams.writer_policy import CompletionPolicy

T = TypeVar("T")

log = structlog.get_logger("cefmp4")

Guard = Callable[[StreamRecord], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PipelineConfig:
    watch_dir: Path
    key_prefix: str
    part_size: int
    max_parts: int
    stream_timeout: float
    poll_interval: float
    # Parts of one stream read ahead or uploading at once: enough to keep every upload slot
    # busy while the next part is read and hashed, few enough that the first part goes up
    # at once and memory stays low. The byte budget bounds the total across streams.
    parts_in_flight: int = 6
    # How long finalize waits for parts still in flight before it cancels them (they are
    # sent again by the verification if the object needs them): never an unbounded wait.
    drain_timeout: float = 120.0
    backoff: Backoff = field(default_factory=Backoff)
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS  # WATCH_EXTENSIONS (§2.17)
    rpo_seconds: float | None = None  # RPO_SECONDS: ship tail segments this often (§2.20)
    key_template: KeyTemplate = field(default_factory=KeyTemplate)  # S3_KEY_TEMPLATE (§2.23)
    instance: str = ""  # {instance} of the key template: INSTANCE_ID, else the host's name


def component_of(operation: str) -> str:
    """The readiness component an operation's failures are reported under."""
    return "checkpoint_store" if operation == "checkpoint" else "s3"


# Eleven fields: every adapter a stream touches, passed as one value instead of eleven.
@dataclass(frozen=True, slots=True)
class Context:
    """Shared by every stream. Only ``app`` builds one, complete; nothing changes it."""

    config: PipelineConfig
    objects: ObjectStore
    checkpoints: CheckpointStore
    prober: Prober
    metrics: Metrics
    budget: ByteBudget
    upload_slots: ByteBudget  # counted in UploadPart calls, live recordings first
    clock: Clock = field(default_factory=SystemClock)
    readiness: Readiness = field(default_factory=Readiness)
    failpoints: Failpoints = field(default_factory=Failpoints)
    # Called before an irreversible step of a stream (Complete); raises LeaseLost when this
    # instance no longer owns it (scale-out). None: a single instance owns everything.
    guard: Guard | None = None
    # Writer-aware completion (§2.14); None: the idle timeout alone decides.
    writers: CompletionPolicy | None = None
    # Post-completion work recorded with the completion (§2.15, §2.16): what to record,
    # where (the checkpoint store's outbox), and who to tell that it is there.
    completion_outbox: CompletionOutbox = field(default_factory=CompletionOutbox)
    outbox: Outbox | None = None
    outbox_poke: Callable[[], None] = field(default=lambda: None)
    # Burst mode (``cefmp4 upload``): streams end because the command said so.
    upload_command: bool = False
    # Signing and the protection the metadata reports (§2.22); the default: neither.
    evidence: Evidence = field(default_factory=Evidence)
    # UPLOAD_BWLIMIT and UPLOAD_ORDER (§2.21); the default: no limit, oldest first.
    uplink: Uplink = field(default_factory=Uplink)

    async def retry(self, operation: str, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` until it succeeds or fails permanently; transient errors never end it.

        While it fails, its component (``s3``, ``checkpoint_store``) is reported failing on
        behalf of this call: another call's success does not clear it, its end does."""
        component = component_of(operation)
        holder = object()  # this call, among every stream's concurrent retries

        def on_retry(name: str, attempt: int, delay: float, exc: BaseException) -> None:
            self.metrics.operation_failed(name)
            self.metrics.retried(name)
            self.readiness.fail(component, exc, holder)
            log.warning(
                logs.RETRY, operation=name, attempt=attempt, delay_s=round(delay, 2),
                error=str(exc),
            )

        try:
            return await retry_transient(
                op, operation=operation, backoff=self.config.backoff, on_retry=on_retry,
                sleep=self.clock.sleep,
            )
        finally:  # succeeded, failed for good or cancelled: this call retries no more
            self.readiness.ok(component, holder)
