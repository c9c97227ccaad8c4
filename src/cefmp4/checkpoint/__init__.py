"""The checkpoint store: what has been durably uploaded, per stream.

One Protocol, two implementations (``sqlite`` embedded, ``redis`` for production and
scale-out), both held to ``tests/contract/test_checkpoint_store.py``.

A stream record and its parts are stored separately: a part is written once per upload,
so a checkpoint after part 9,000 costs one small write, not a rewrite of 9,000 parts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


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
    completed_by: str | None = None  # what ended the stream (metadata ``completed_by``)


class CheckpointStore(Protocol):
    """Durable stream state. Every method may raise ``TransientError`` on an outage."""

    async def ping(self) -> None:
        """Raise ``TransientError`` unless the store answers."""

    async def put_stream(self, record: StreamRecord) -> None:
        """Create or replace the stream's record (not its parts)."""

    async def get_stream(self, stream_id: str) -> StreamRecord | None: ...

    async def list_streams(
        self, states: frozenset[StreamState] | None = None
    ) -> list[StreamRecord]:
        """All streams, or those in ``states``; no particular order."""

    async def find_by_inode(self, inode: int) -> list[StreamRecord]:
        """Every stream of the file with this inode, oldest first.

        Keyed by inode alone: on a shared volume the device number differs between hosts.
        """

    async def put_part(self, stream_id: str, part: PartRecord) -> None:
        """Create or replace one part (same part number = re-upload) and touch activity."""

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        """The stream's parts in ascending part number."""

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
