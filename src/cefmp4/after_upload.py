"""AFTER_UPLOAD=keep|delete|move: free the disk once a recording is safely in S3 (§2.15).

The intent is an outbox item (``cefmp4.notify``) recorded in the same checkpoint write that
marks the stream completed, and only for ``status: complete`` streams: never for
``truncated`` or ``source_deleted`` ones. Carrying it out is idempotent, so a crash at any
step is redone from the start after a restart and converges:

1. HeadObject of the video (size and multipart ETag as completed) and of its metadata.
2. The file at the recorded path must be the bytes that were uploaded: the same (device,
   inode), size and mtime as at verification, and no visible process holds it open for
   writing. Otherwise it is kept, with one warning.
3. delete: rename to a hidden name in the same directory (discovery ignores it), check the
   identity again through that name (closing the stat-then-unlink race), unlink, fsync the
   directory. move: hard-link into AFTER_UPLOAD_DIR (never overwriting), or across file
   systems copy to a hidden temporary there while hashing, compare the SHA-256 with the
   object's, fsync, link into place; then unlink the source. Every step checks what a
   previous, interrupted attempt left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.errors import PermanentError
from cefmp4.hashing import multipart_etag, normalize_etag
from cefmp4.outbox import SINK_AFTER_UPLOAD, OutboxItem
from cefmp4.writers import scan_writers

log = structlog.get_logger("cefmp4.after_upload")

KEEP, DELETE, MOVE = "keep", "delete", "move"
COPY_BLOCK = 4 * 1024 * 1024


class _HeadInfo(Protocol):
    size: int
    etag: str


class HeadObject(Protocol):
    async def __call__(self, key: str) -> _HeadInfo | None: ...


@dataclass(frozen=True, slots=True)
class Intent:
    """What to do with one source file, and what it must still be to do it."""

    action: str  # delete | move
    stream_id: str
    status: str
    path: str
    rel_path: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    sha256: str
    key: str
    etag: str | None  # multipart ETag the object must have (None: a single PUT)
    metadata_key: str
    target_dir: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Intent:
        try:
            data = json.loads(raw)
            intent = cls(**data)
        except (ValueError, TypeError) as exc:
            raise PermanentError(f"after-upload intent does not parse: {exc}") from None
        if intent.action not in (DELETE, MOVE) or (intent.action == MOVE and not intent.target_dir):
            raise PermanentError(f"after-upload intent has a bad action {intent.action!r}")
        return intent


def staged_name(path: Path, stream_id: str) -> Path:
    """The hidden name a source is renamed to just before it is deleted."""
    return path.with_name(f".{path.name}.cefmp4-{stream_id}.delete")


def move_targets(intent: Intent) -> tuple[Path, Path]:
    """(preferred target, fallback when a different file already has that name)."""
    assert intent.target_dir is not None
    rel = Path(intent.rel_path)
    if rel.is_absolute() or ".." in rel.parts:
        rel = Path(rel.name)  # never write outside AFTER_UPLOAD_DIR
    first = Path(intent.target_dir) / rel
    return first, first.with_name(f"{first.stem}.{intent.stream_id}{first.suffix}")


class AfterUploadSink:
    """The ``after_upload`` outbox sink."""

    name = SINK_AFTER_UPLOAD

    def __init__(
        self,
        head_object: Callable[[str], Any],
        *,
        hit: Callable[[str], None] = lambda _name: None,
        proc: Path | None = Path("/proc"),
    ) -> None:
        self._head = head_object
        self._hit = hit
        self._proc = proc

    async def deliver(self, item: OutboxItem) -> None:
        intent = Intent.from_json(item.payload)
        with structlog.contextvars.bound_contextvars(path=intent.path, action=intent.action):
            if intent.status != "complete":
                raise PermanentError(f"never acts on a {intent.status} stream; file kept")
            await self._confirm_object(intent)
            outcome = await asyncio.to_thread(self.apply, intent)
            log.info("after_upload_done", outcome=outcome)

    async def _confirm_object(self, intent: Intent) -> None:
        info = await self._head(intent.key)
        if info is None:
            raise PermanentError("video object not found; source kept")
        etag = normalize_etag(str(info.etag))
        # A store that does not compute multipart ETags (no "-n" suffix) is held to the size,
        # as finalize's HeadObject confirmation is; the move's copy is checked by SHA-256.
        etag_differs = intent.etag is not None and "-" in etag and etag != intent.etag
        if info.size != intent.size or etag_differs:
            raise PermanentError(
                f"video object is {info.size} bytes with ETag {etag}, expected {intent.size} "
                f"and {intent.etag}; source kept"
            )
        if await self._head(intent.metadata_key) is None:
            raise PermanentError("metadata object not found; source kept")

    # --- blocking part (runs in a thread) --------------------------------------------------

    def apply(self, intent: Intent) -> str:
        path = Path(intent.path)
        staged = staged_name(path, intent.stream_id)
        if intent.action == MOVE:
            return self._move(intent, path, staged)
        return self._delete(intent, path, staged)

    def _verify(self, intent: Intent, path: Path) -> None:
        """Raise PermanentError unless ``path`` is still exactly the uploaded file."""
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise PermanentError("source is no longer a regular file; kept")
        # By inode first: on a shared volume the device number is each host's own.
        same = (st.st_ino, st.st_size, st.st_mtime_ns) == (intent.inode, intent.size,
                                                           intent.mtime_ns)
        if not same or st.st_dev != intent.device:
            raise PermanentError(
                "source changed since it was verified (identity, size or mtime); kept"
            )
        if self._proc is not None:
            writers = scan_writers([(st.st_dev, st.st_ino)], self._proc).writers
            if writers.get((st.st_dev, st.st_ino)):
                raise PermanentError("source is still open for writing; kept")

    def _delete(self, intent: Intent, path: Path, staged: Path) -> str:
        if not staged.exists():
            try:
                self._verify(intent, path)
            except FileNotFoundError:
                return "already gone"
            os.rename(path, staged)
            _fsync_dir(path.parent)
        self._hit("after_upload_staged")
        try:
            self._verify(intent, staged)
        except FileNotFoundError:
            return "already gone"
        except PermanentError:
            # Changed in the instant between the checks: put it back, untouched.
            if not path.exists():
                os.rename(staged, path)
            raise
        os.unlink(staged)
        _fsync_dir(path.parent)
        self._hit("after_upload_done")
        return "deleted"

    def _move(self, intent: Intent, path: Path, staged: Path) -> str:
        first, fallback = move_targets(intent)
        done = [t for t in (first, fallback) if _is_our_copy(t, intent)]
        try:
            self._verify(intent, path)
        except FileNotFoundError:
            if done:
                return "already moved"
            return "already gone"
        if not done:
            target = fallback if first.exists() else first
            target.parent.mkdir(parents=True, exist_ok=True)
            self._place(intent, path, target)
        self._hit("after_upload_copied")
        # The target holds the uploaded bytes durably: now the source may go.
        self._verify(intent, path)
        os.unlink(path)
        _fsync_dir(path.parent)
        self._hit("after_upload_done")
        return "moved"

    def _place(self, intent: Intent, path: Path, target: Path) -> None:
        try:
            os.link(path, target)  # same file system: atomic, never overwrites
            _fsync_dir(target.parent)
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
        tmp = target.with_name(f".{target.name}.cefmp4-{intent.stream_id}.partial")
        digest = hashlib.sha256()
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while block := src.read(COPY_BLOCK):
                digest.update(block)
                dst.write(block)
            dst.flush()
            os.fsync(dst.fileno())
        if digest.hexdigest() != intent.sha256:
            os.unlink(tmp)
            raise PermanentError("the copy's SHA-256 differs from the object's; source kept")
        os.utime(tmp, ns=(intent.mtime_ns, intent.mtime_ns))
        try:
            os.link(tmp, target)
        except FileExistsError:
            os.unlink(tmp)
            raise PermanentError(f"{target} appeared meanwhile; source kept") from None
        except OSError:
            os.rename(tmp, target)  # no hard links on the target: plain rename
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _fsync_dir(target.parent)


def _is_our_copy(target: Path, intent: Intent) -> bool:
    """A previous attempt already placed this stream's bytes at ``target``."""
    try:
        st = os.stat(target)
    except OSError:
        return False
    if st.st_ino == intent.inode and st.st_dev == intent.device:
        return True  # hard link of the source itself
    # A finished copy carries the source's size and mtime (set before it was linked in).
    return st.st_size == intent.size and st.st_mtime_ns == intent.mtime_ns


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class CompletionOutbox:
    """What marking a stream completed records in the outbox (from the settings)."""

    notify_sinks: tuple[str, ...] = ()
    action: str = KEEP
    target_dir: str | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.notify_sinks) or self.action != KEEP

    def items(
        self,
        record: StreamRecord,
        parts: Sequence[PartRecord],
        metadata_body: bytes,
        *,
        status: str,
        metadata_key: str,
    ) -> list[tuple[str, bytes]]:
        """One notification per sink (the metadata document as written to S3), and the
        after-upload intent for a ``complete`` stream whose final file state is known."""
        items = [(sink, metadata_body) for sink in self.notify_sinks]
        known = (record.final_size, record.final_mtime_ns, record.sha256)
        if self.action == KEEP or status != "complete" or None in known:
            return items
        assert record.final_size is not None
        assert record.final_mtime_ns is not None
        assert record.sha256 is not None
        intent = Intent(
            action=self.action, stream_id=record.stream_id, status=status, path=record.path,
            rel_path=record.rel_path, device=record.device, inode=record.inode,
            size=record.final_size, mtime_ns=record.final_mtime_ns, sha256=record.sha256,
            key=record.key, etag=multipart_etag([p.etag for p in parts]) if parts else None,
            metadata_key=metadata_key, target_dir=self.target_dir,
        )
        items.append((SINK_AFTER_UPLOAD, intent.to_json()))
        return items
