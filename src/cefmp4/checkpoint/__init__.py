"""The checkpoint store: what has been durably uploaded, per stream.

One Protocol, two implementations (``sqlite`` embedded, ``redis`` for production and
scale-out), both held to ``tests/contract/test_checkpoint_store.py``.

A stream record and its parts are stored separately: a part is written once per upload,
so a checkpoint after part 9,000 costs one small write, not a rewrite of 9,000 parts.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

from cefmp4.errors import PermanentError
from cefmp4.keys import is_stream_id, within_prefix


class StreamState(enum.StrEnum):
    ACTIVE = "active"  # growing or not yet judged idle; parts are being uploaded
    FINALIZING = "finalizing"  # judged complete; tail/verify/complete/metadata in progress
    COMPLETED = "completed"  # object and metadata written
    FAILED = "failed"  # gave up permanently (reason in ``error``)


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
    (see ``cefmp4.parts``): a changed CHUNK_SIZE_MB never moves an in-flight stream's
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


class MalformedRecord(PermanentError):
    """A stored record or part does not parse; the stream is quarantined, never acted on."""


# The StreamRecord fields, their type, and whether they may be absent (None).
_KINDS: dict[str, tuple[type, bool]] = {
    "stream_id": (str, False), "path": (str, False), "rel_path": (str, False),
    "device": (int, False), "inode": (int, False), "bucket": (str, False),
    "key": (str, False), "part_size": (int, False), "max_parts": (int, False),
    "state": (StreamState, False), "started_at": (float, False),
    "last_activity_at": (float, False), "upload_id": (str, True), "status": (str, True),
    "completed_at": (float, True), "final_size": (int, True), "final_mtime_ns": (int, True),
    "sha256": (str, True), "error": (str, True),
}  # fmt: skip
MAX_PARTS_LIMIT = 10_000


def _typed(name: str, kind: type, value: object) -> object:
    if kind is StreamState:
        if not isinstance(value, str):
            raise MalformedRecord(f"{name}: not a state")
        try:
            return StreamState(value)
        except ValueError:
            raise MalformedRecord(f"{name}: unknown state {value[:40]!r}") from None
    if kind is float:
        return _float(name, value)
    if kind is int:
        return _int(name, value)
    return _str(name, value)


def build_record(values: Mapping[str, Any]) -> StreamRecord:
    """A StreamRecord from stored values of the right Python types, checked; else
    ``MalformedRecord`` saying what is wrong (missing, wrong type, out of range)."""
    typed: dict[str, Any] = {}
    for name, (kind, optional) in _KINDS.items():
        value = values.get(name)
        if value is None:
            if not optional:
                raise MalformedRecord(f"{name}: missing")
            typed[name] = None
            continue
        typed[name] = _typed(name, kind, value)
    record = StreamRecord(**typed)
    if not is_stream_id(record.stream_id):
        raise MalformedRecord("stream_id: not a stream id")
    if record.device < 0 or record.inode < 0:
        raise MalformedRecord("device/inode: negative")
    if record.part_size < 1 or not 1 <= record.max_parts <= MAX_PARTS_LIMIT:
        raise MalformedRecord("part_size/max_parts: out of range")
    for name in ("final_size", "final_mtime_ns"):
        value = getattr(record, name)
        if value is not None and value < 0:
            raise MalformedRecord(f"{name}: negative")
    return record


assert set(_KINDS) == {f.name for f in fields(StreamRecord)}


def _int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise MalformedRecord(f"{name}: not an integer")
    return value


def _str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise MalformedRecord(f"{name}: not text")
    return value


def _float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord(f"{name}: not a number")
    if not math.isfinite(value):
        raise MalformedRecord(f"{name}: not a finite number")
    return float(value)


def build_part(part_number: object, values: Mapping[str, Any]) -> PartRecord:
    """A PartRecord from stored values, checked; else ``MalformedRecord``."""
    try:
        number = _int("part_number", part_number)
        offset = _int("offset", values.get("offset"))
        size = _int("size", values.get("size"))
        etag = _str("etag", values.get("etag"))
        md5 = _str("md5", values.get("md5"))
        uploaded_at = _float("uploaded_at", values.get("uploaded_at"))
    except MalformedRecord as exc:
        raise MalformedRecord(f"part {str(part_number)[:20]}: {exc}") from None
    if not 1 <= number <= MAX_PARTS_LIMIT or offset < 0 or size < 1:
        raise MalformedRecord(f"part {number}: number, offset or size out of range")
    return PartRecord(number, offset, size, etag, md5, uploaded_at)


def quarantined(stream_id: str, reason: str, raw: Mapping[str, Any]) -> QuarantinedRecord:
    """The QuarantinedRecord of a record that failed to parse, with what could be read."""

    def text(name: str) -> str | None:
        value = raw.get(name)
        return value if isinstance(value, str) else None

    return QuarantinedRecord(
        stream_id=stream_id, reason=reason, path=text("path"), key=text("key"),
        upload_id=text("upload_id"), state=text("state"),
    )  # fmt: skip


def untrusted_reason(
    record: StreamRecord, watch_dir: Path, key_prefix: str, *, bucket: str | None = None
) -> str | None:
    """Why a parsed record must not be acted on (SPEC §2.18), or None if it may be.

    A record is input, not truth: anyone who can write to the store could otherwise make
    cefmp4 read any file it can read and write it to any key of the bucket. Untrusted: a
    ``path`` that is not absolute or, resolved (symlinks and ``..``), lies outside the
    resolved ``watch_dir``; a ``rel_path`` that is absolute or climbs out with ``..``; a
    ``key`` outside ``key_prefix`` taken as a path segment (``keys.within_prefix``) or
    with a ``..`` segment; and, when ``bucket`` is given, another bucket. Pure apart from
    resolving the two paths (a few ``lstat``s); call it on every record loaded.
    """
    if not os.path.isabs(record.path):
        return "path is not absolute"
    root = os.path.realpath(watch_dir)
    real = os.path.realpath(record.path)
    if os.path.commonpath([real, root]) != root or real == root:
        return "path is outside WATCH_DIR"
    rel = record.rel_path
    if not rel or rel.startswith("/") or ".." in rel.replace("\\", "/").split("/"):
        return "rel_path leaves WATCH_DIR"
    if not within_prefix(key_prefix, record.key):
        return "key is outside S3_KEY_PREFIX"
    if bucket is not None and record.bucket != bucket:
        return "bucket is not S3_BUCKET_NAME"
    return None


class CheckpointStore(Protocol):
    """Durable stream state. Every method may raise ``TransientError`` on an outage."""

    async def ping(self) -> None:
        """Raise ``TransientError`` unless the store answers."""

    async def put_stream(self, record: StreamRecord) -> None:
        """Create or replace the stream's record (not its parts)."""

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        """The stream's record; None if unknown or quarantined (it does not parse)."""

    async def list_streams(
        self, states: frozenset[StreamState] | None = None
    ) -> list[StreamRecord]:
        """All streams, or those in ``states``; no particular order.

        Quarantined records (that do not parse; for unfinished streams, also their parts)
        are left out, with one warning each per store object; see ``list_quarantined``.
        """

    async def list_quarantined(self) -> list[QuarantinedRecord]:
        """Every stored record that does not parse, kept as it is (SPEC §2.18)."""

    async def find_by_inode(self, inode: int) -> list[StreamRecord]:
        """Every stream of the file with this inode, oldest first.

        Keyed by inode alone: on a shared volume the device number differs between hosts.
        """

    async def put_part(self, stream_id: str, part: PartRecord) -> None:
        """Create or replace one part (same part number = re-upload) and touch activity."""

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        """The stream's parts in ascending part number; ``MalformedRecord`` (permanent) if
        one does not parse."""

    async def delete_parts(self, stream_id: str) -> None:
        """Forget every part (the upload was restarted from byte 0)."""

    async def delete_stream(self, stream_id: str) -> None:
        """Forget the stream and its parts."""

    async def aclose(self) -> None: ...


class Leases(Protocol):
    """Expiring ownership of a file's streams for scale-out (SPEC §2.11); Redis only.

    A lease is keyed by the file's inode: one file has at most one live stream at a time.
    ``acquire`` returns a fencing token that grows with every new owner; once registered
    with ``fence``, every checkpoint write of that stream checks the token atomically and
    raises ``LeaseLost`` when a newer owner has taken over.
    """

    async def acquire(self, inode: int, owner: str, ttl: float) -> int | None:
        """The new fencing token, the current one if ``owner`` holds it, else None."""

    async def renew(self, inode: int, owner: str, ttl: float) -> bool:
        """Extend the lease; False if ``owner`` no longer holds it."""

    async def holder(self, inode: int) -> str | None:
        """Who holds the lease now, if anyone."""

    async def steal(self, inode: int, old_owner: str, owner: str, ttl: float) -> int | None:
        """Take the lease from ``old_owner`` (known to be dead); a new token, or None if
        ``old_owner`` no longer holds it."""

    async def release(self, inode: int, owner: str) -> None: ...

    def fence(self, stream_id: str, inode: int, token: int) -> None:
        """Guard every later write of ``stream_id`` with ``token``."""

    def unfence(self, stream_id: str) -> None: ...
