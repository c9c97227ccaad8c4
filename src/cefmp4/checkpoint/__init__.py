"""The checkpoint store: what has been durably uploaded, per stream.

One Protocol, two implementations (``sqlite`` embedded, ``redis`` for production and
scale-out), both held to ``tests/contract/test_checkpoint_store.py``.

A stream record and its parts are stored separately: a part is written once per upload,
so a checkpoint after part 9,000 costs one small write, not a rewrite of 9,000 parts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cefmp4.checkpoint.parse import (
    MAX_PARTS_LIMIT,
    build_completed,
    build_part,
    build_record,
)
from cefmp4.checkpoint.records import (
    UNFINISHED,
    CompletedFile,
    MalformedRecord,
    PartRecord,
    QuarantinedRecord,
    StreamRecord,
    StreamState,
    fingerprint_key,
    quarantined,
)
from cefmp4.core.keys import within_prefix

__all__ = [
    "MAX_PARTS_LIMIT", "UNFINISHED", "CheckpointStore", "CompletedFile", "Leases",
    "MalformedRecord", "PartRecord", "QuarantinedRecord", "StreamRecord", "StreamState",
    "build_completed", "build_part", "build_record", "fingerprint_key", "quarantined",
    "untrusted_completed", "untrusted_reason",
]  # fmt: skip


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


def untrusted_completed(
    done: CompletedFile, roots: tuple[str, ...], key_prefix: str, bucket: str | None
) -> str | None:
    """``untrusted_reason`` for a completed stream's fingerprint, with the path checked
    lexically: under one of ``roots`` (WATCH_DIR as given and resolved, each ending in
    ``/``), no ``..`` segment.

    Lexical, because resolving 100,000 paths at start-up costs seconds (several
    ``lstat``s each), and a completed record is never acted on: it only lets the scan
    pass over the file of that identity, which the scan itself found inside WATCH_DIR.
    """
    path = done.path
    if not path.startswith(roots) or "/../" in path or path.endswith("/.."):
        return "path is outside WATCH_DIR"
    if not within_prefix(key_prefix, done.key):
        return "key is outside S3_KEY_PREFIX"
    if bucket is not None and done.bucket != bucket:
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

    async def naming_uploads(
        self, upload_ids: frozenset[str]
    ) -> list[StreamRecord | QuarantinedRecord]:
        """Every stored record whose ``upload_id`` is one of ``upload_ids``, parsed or
        quarantined: which of a few unknown uploads a record that is not acted on still
        names (the sweeper must leave those), without reading every record."""

    async def completed_files(
        self, cursor: str = "", limit: int = 5000
    ) -> tuple[list[CompletedFile], str]:
        """One page of about ``limit`` completed streams' fingerprints, and the cursor of
        the next page ('' after the last); start with ''. Through the state index, reading
        only the fields ``CompletedFile`` holds. A page may repeat a stream seen before;
        a record that does not parse is left out (warned once, see ``list_quarantined``).
        """

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
