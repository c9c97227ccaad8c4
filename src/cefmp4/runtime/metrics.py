"""Prometheus collectors of SPEC §1.5, held by one ``Metrics`` object on an injected registry.

Labels are fixed and enumerated: the only label anywhere is ``operation``, whose values are
``OPERATIONS``. Stream ids and paths belong in logs, never in metrics: every stream would add
series that never go away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Final, Literal, get_args

import structlog
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

log = structlog.get_logger(__name__)

Operation = Literal[
    "ensure_bucket",  # HeadBucket / CreateBucket at start-up
    "create",  # CreateMultipartUpload
    "upload_part",  # UploadPart
    "list_parts",  # ListParts during reconciliation
    "list_uploads",  # ListMultipartUploads (rebuilding checkpoints, the orphan sweeper)
    "complete",  # CompleteMultipartUpload
    "abort",  # AbortMultipartUpload (housekeeping, restart from byte 0)
    "put_metadata",  # PutObject of the metadata JSON
    "put_object",  # PutObject of a video too small for multipart (an empty file)
    "get",  # GetObject (verifying a completed object)
    "head",  # HeadObject (was the object completed before a crash?)
    "checkpoint",  # any write or read of the checkpoint store
    "probe",  # ffprobe
    "read",  # reading the source file
    "other",  # anything else; a catch-all so a typo can never create a new series
]
OPERATIONS: Final[tuple[str, ...]] = get_args(Operation)

# Recordings last from seconds to a day or more.
STREAM_DURATION_BUCKETS: Final = (
    10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
)
# One part is 5 MiB to 5 GiB; a healthy upload of the default 10 MiB takes well under a second.
CHUNK_UPLOAD_BUCKETS: Final = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
)

PendingSource = Callable[[], tuple[int, float]]


class Metrics:
    """Every collector cefmp4 exposes, registered on ``registry`` (a fresh one by default).

    Never the global ``REGISTRY``: tests and several apps in one process need their own.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # prometheus_client adds a ``<name>_created`` series (a start timestamp) to every
        # counter and histogram child: 76 lines of /metrics that no rule or dashboard reads
        # (Prometheus ignores them unless created-timestamp ingestion is switched on). Its
        # documented switch is process-wide; cefmp4 is the process.
        disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped upstream
        self.registry = registry if registry is not None else CollectorRegistry()
        counter, gauge, histogram = _makers(self.registry)
        # prometheus_client appends "_total" to counter names itself; giving the full
        # name is accepted too and exposes exactly the SPEC name.
        self.chunks_uploaded = counter(
            "video_chunks_uploaded_total",
            "Parts uploaded to S3 (re-uploads included).",
        )
        self.bytes_uploaded = counter(
            "video_bytes_uploaded_total",
            "Bytes sent to S3 as parts (re-uploads included).",
        )
        self.parts_reuploaded = counter(
            "video_parts_reuploaded_total",
            "Parts sent again after the recorder rewrote them or reconciliation rejected them.",
        )
        self.parts_adopted = counter(
            "video_parts_adopted_total",
            "Parts found in S3 after a restart and adopted without uploading them again.",
        )
        self.streams_started = counter("streams_started_total", "Streams discovered and started.")
        self.streams_resumed = counter(
            "streams_resumed_total",
            "Unfinished streams resumed from a checkpoint.",
        )
        self.streams_completed = counter(
            "streams_completed_total",
            "Streams completed with their metadata written.",
        )
        self.streams_failed = counter(
            "streams_failed_total",
            "Streams that ended with an error, and files skipped because their path cannot"
            " be an object key (over 1,024 bytes, not UTF-8): footage not going to S3.",
        )
        self.metadata_written = counter("metadata_written_total", "Metadata JSON objects written.")
        self.orphan_uploads_aborted = counter(
            "orphan_uploads_aborted_total",
            "Multipart uploads under the prefix that no checkpoint knew and that held no "
            "part, aborted.",
        )
        self.streams_salvaged = counter(
            "streams_salvaged_total",
            "Abandoned multipart uploads turned into readable objects with metadata.",
        )
        self.failed_operations = counter(
            "video_failed_operations_total",
            "Failed attempts of an operation (each retry counts). operation: "
            + ", ".join(OPERATIONS),
            ["operation"],
        )
        self.retries = counter(
            "retries_total",
            "Retries scheduled after a transient error.",
            ["operation"],
        )
        self.active_streams = gauge("active_streams", "Streams being uploaded or finalized now.")
        self.pending_bytes = gauge("pending_bytes", "Bytes on disk not yet in S3, all streams.")
        self.oldest_pending_age_seconds = gauge(
            "oldest_pending_age_seconds",
            "Age of the oldest byte on disk not yet in S3 (the recovery-point objective).",
        )
        self.stream_duration = histogram(
            "video_stream_duration_seconds",
            "Wall-clock time from a stream's discovery to its completion.",
            STREAM_DURATION_BUCKETS,
        )
        self.chunk_upload_seconds = histogram(
            "video_chunk_upload_seconds",
            "Time of one successful UploadPart call.",
            CHUNK_UPLOAD_BUCKETS,
        )
        # Writer-aware completion, after-upload actions, notifications (SPEC §2.14-§2.16).
        self.notifications_pending = gauge(
            "notifications_pending",
            "Notifications recorded but not delivered yet.",
        )
        self.notifications_failed = counter(
            "notifications_failed_total",
            "Failed notification delivery attempts, webhook and Redis (each retry counts).",
        )
        self.after_upload_failed = counter(
            "after_upload_failed_total",
            "After-upload actions (delete/move) that failed or were refused (file kept).",
        )
        self.watch_dir_free_bytes = gauge(
            "watch_dir_free_bytes",
            "Free bytes on the watch directory's file system.",
        )
        self.files_evicted = counter(
            "files_evicted_total",
            "Sources deleted by AFTER_UPLOAD=evict because the watch directory's file system "
            "had less free space than EVICT_KEEP_FREE (their objects confirmed first).",
        )
        self.evictable_files = gauge(
            "evictable_files",
            "AFTER_UPLOAD=evict: sources kept on disk whose objects are confirmed in S3 (safe "
            "to evict when space runs short).",
        )
        self.evictable_bytes = gauge(
            "evictable_bytes",
            "AFTER_UPLOAD=evict: bytes of those sources (their sizes as uploaded), kept on "
            "disk and safe in S3: what eviction can free.",
        )
        self.upload_rate_limit = gauge(
            "upload_rate_limit_bytes_per_second",
            "UPLOAD_BWLIMIT: the cap on bytes per second sent to S3 in force now (0 = no limit).",
        )
        # Every label value exists from the start, at 0, so rate() and alerts see the
        # series before the first failure.
        for op in OPERATIONS:
            self.failed_operations.labels(operation=op)
            self.retries.labels(operation=op)
        self._pending_source: PendingSource | None = None

    # -- recording helpers ---------------------------------------------------------------

    def bytes_uploaded_value(self) -> int:
        """Bytes uploaded so far by this process (for a progress bar)."""
        for family in self.bytes_uploaded.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    return int(sample.value)
        return 0

    def operation_failed(self, operation: str) -> None:
        self.failed_operations.labels(operation=_known(operation)).inc()

    def retried(self, operation: str) -> None:
        self.retries.labels(operation=_known(operation)).inc()

    # -- pending bytes, computed at scrape time --------------------------------------------

    def set_pending_source(self, fn: PendingSource) -> None:
        """``fn()`` → ``(pending_bytes, oldest_pending_age_seconds)``, called on each scrape.

        It runs on the event loop inside the scrape, so it must be cheap and non-blocking
        (sum in-memory counters; no stat() of every file).
        """
        self._pending_source = fn
        self.pending_bytes.set_function(lambda: self._pending(0))
        self.oldest_pending_age_seconds.set_function(lambda: self._pending(1))

    def _pending(self, index: int) -> float:
        if self._pending_source is None:
            return 0.0
        try:
            return float(self._pending_source()[index])
        except Exception:
            # A broken source must not break /metrics; NaN tells the dashboard it is unknown.
            log.exception("error", operation="metrics_pending_source")
            return math.nan

    # -- exposition ------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every collector, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def names(self) -> Iterable[str]:
        """Names of the exposed metric families (counters with their ``_total``)."""
        for family in self.registry.collect():
            yield family.name + "_total" if family.type == "counter" else family.name


def _makers(
    registry: CollectorRegistry,
) -> tuple[Callable[..., Counter], Callable[..., Gauge], Callable[..., Histogram]]:
    """Collector constructors bound to ``registry``: ``counter(name, doc[, labels])``,
    ``gauge(name, doc)``, ``histogram(name, doc, buckets)``."""

    def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    def gauge(name: str, doc: str) -> Gauge:
        return Gauge(name, doc, registry=registry)

    def histogram(name: str, doc: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(name, doc, buckets=buckets, registry=registry)

    return counter, gauge, histogram


def _known(operation: str) -> str:
    return operation if operation in OPERATIONS else "other"
