"""The checkpoint store's records: what is stored per stream and per part."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from cefmp4.runtime.errors import PermanentError


class StreamState(enum.StrEnum):
    ACTIVE = "active"  # growing or not yet judged idle; parts are being uploaded
    FINALIZING = "finalizing"  # judged complete; tail/verify/complete/metadata in progress
    COMPLETED = "completed"  # object and metadata written
    FAILED = "failed"  # gave up permanently (reason in ``error``)


# Every state a stream may still be written in (resumed, taken over, finalized).
UNFINISHED = frozenset({StreamState.ACTIVE, StreamState.FINALIZING})


@dataclass(frozen=True, slots=True)
class PartRecord:
    """One uploaded part. ``md5`` is hex; ``uploaded_at`` is a UNIX timestamp."""

    part_number: int
    offset: int
    size: int
    etag: str
    md5: str
    uploaded_at: float


@dataclass(slots=True)
class StreamRecord:
    """Everything needed to resume or finalize a stream after a restart.

    ``part_size`` and ``max_parts`` fix the part-size schedule for the life of the stream
    (see ``cefmp4.core.parts``): a changed CHUNK_SIZE_MB never moves an in-flight stream's
    boundaries. Timestamps are UNIX seconds (float).
    """

    stream_id: str
    path: str  # absolute path where the file was last seen
    rel_path: str  # path relative to WATCH_DIR when the stream started (used in the key)
    device: int
    inode: int
    bucket: str
    key: str
    part_size: int
    max_parts: int
    state: StreamState
    started_at: float
    last_activity_at: float
    upload_id: str | None = None
    status: str | None = None  # final status for the metadata: complete, truncated, ...
    completed_at: float | None = None  # when judged complete
    final_size: int | None = None  # size of the object when completed
    final_mtime_ns: int | None = None  # mtime of the source when completed
    sha256: str | None = None
    error: str | None = None
    completed_by: str | None = None  # what ended the stream (metadata ``completed_by``)


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    """A stored record that is not acted on (SPEC §2.18): kept as it is, for ``status`` and
    ``check``. The other fields are whatever could be read, for the operator (and so that
    the sweeper never aborts an upload a quarantined record still names)."""

    stream_id: str
    reason: str
    path: str | None = None
    key: str | None = None
    upload_id: str | None = None
    state: str | None = None


class CompletedFile(NamedTuple):
    """What the "never upload an unchanged file again" rule needs of a completed stream
    (the file's identity and final size and mtime), and what its trust check reads. A
    NamedTuple: 100,000 are built at start-up, and a tuple is built in C."""

    stream_id: str
    device: int
    inode: int
    final_size: int
    final_mtime_ns: int
    path: str
    key: str
    bucket: str


def fingerprint_key(device: int, inode: int, size: int, mtime_ns: int) -> int:
    """One int for (device, inode, size, mtime_ns), each taken as 64 bits: a set of
    100,000 costs ~9 MiB where the tuples would cost ~23 MiB (measured)."""
    mask = (1 << 64) - 1
    return (device & mask) << 192 | (inode & mask) << 128 | (size & mask) << 64 | mtime_ns & mask


class MalformedRecord(PermanentError):
    """A stored record or part does not parse; the stream is quarantined, never acted on."""


def quarantined(stream_id: str, reason: str, raw: Mapping[str, Any]) -> QuarantinedRecord:
    """The QuarantinedRecord of a record that failed to parse, with what could be read."""

    def text(name: str) -> str | None:
        value = raw.get(name)
        return value if isinstance(value, str) else None

    return QuarantinedRecord(
        stream_id=stream_id, reason=reason, path=text("path"), key=text("key"),
        upload_id=text("upload_id"), state=text("state"),
    )  # fmt: skip
