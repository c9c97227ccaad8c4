"""AFTER_UPLOAD=keep|delete|move: free the disk once a recording is safely in S3 (§2.15).

The intent is an outbox item (``cefmp4.after.notify``) recorded in the same checkpoint write that
marks the stream completed, and only for ``status: complete`` streams: never for
``truncated`` or ``source_deleted`` ones. Carrying it out is idempotent, so a crash at any
step is redone from the start after a restart and converges:

1. Wait until the stream was completed ``STREAM_TIMEOUT_SECONDS`` ago (§2.25), even when
   it was completed on close: a writer that closes and reopens must not lose its file.
2. HeadObject of the video (size and multipart ETag as completed) and of its metadata.
3. Rename the source to a hidden name in its directory (discovery ignores it), so a new
   recording that takes the path can never be the file acted on. Through that name it must
   be the very file uploaded: the same (device, inode), size, mtime and SHA-256 as at
   verification; and the kernel must prove that no process anywhere holds it open for
   writing (``writers.NoWriterProof``: a read lease, held until the unlink; where it cannot
   be proven, a recorder in another PID namespace for instance, the file is kept). Any
   doubt puts the file back, never over another file.
4. delete: unlink the hidden name, fsync the directory. move: hard-link into
   AFTER_UPLOAD_DIR (never overwriting), or across file systems copy to a hidden temporary
   there while hashing, compare the SHA-256 with the object's, fsync, link into place; then
   unlink the hidden name. Every step checks what a previous, interrupted attempt left
   behind (a copy counts as done only if its bytes are the object's).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from cefmp4.after.outbox import SINK_AFTER_UPLOAD, Outbox, OutboxItem
from cefmp4.checkpoint import PartRecord, StreamRecord
from cefmp4.core.evict import KeepFree, shortfall
from cefmp4.core.hashing import multipart_etag, normalize_etag
from cefmp4.core.keys import metadata_key, within_prefix
from cefmp4.intake.writers import NoWriterProof, WriterOpen, WritersUnseen
from cefmp4.runtime.errors import PermanentError

log = structlog.get_logger("cefmp4.after.after_upload")

KEEP, DELETE, MOVE, EVICT = "keep", "delete", "move", "evict"
EVICT_POLL_S = 5.0  # how often a kept source waits to look at the free space again
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
        except (ValueError, TypeError, RecursionError) as exc:
            raise PermanentError(f"after-upload intent does not parse: {exc}") from None
        if intent.action not in (DELETE, MOVE, EVICT) or (
                intent.action == MOVE and not intent.target_dir):
            raise PermanentError(f"after-upload intent has a bad action {intent.action!r}")
        return intent


@dataclass(frozen=True, slots=True)
class Space:
    """AFTER_UPLOAD=evict: the file system holding WATCH_DIR, and the free space to keep."""

    path: Path
    keep: KeepFree

    def short(self) -> int:
        """Bytes to free now (0: enough); blocking (statvfs)."""
        st = os.statvfs(self.path)
        return shortfall(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, self.keep)


@dataclass(frozen=True, slots=True)
class Scope:
    """What an intent may touch under the settings in force: intents are read back from the
    checkpoint store, and records are input, not truth (§2.18)."""

    watch_dir: Path  # resolved
    key_prefix: str
    target_dir: str | None  # AFTER_UPLOAD_DIR, resolved

    def check(self, intent: Intent) -> None:
        path = Path(intent.path)
        if not path.is_absolute() or ".." in path.parts or not path.is_relative_to(
                self.watch_dir) or path == self.watch_dir:
            raise PermanentError("its path is not in WATCH_DIR; not acted on")
        if not within_prefix(self.key_prefix, intent.key) or (
                intent.metadata_key != metadata_key(intent.key)):
            raise PermanentError("its keys are not under S3_KEY_PREFIX; not acted on")
        if intent.action == MOVE and intent.target_dir != self.target_dir:
            raise PermanentError("its target is not AFTER_UPLOAD_DIR; not acted on")


def staged_name(path: Path, stream_id: str) -> Path:
    """The hidden name a source is renamed to while it is proven and acted on. Short, so that
    it fits wherever the source's name does (a 255-byte name plus a suffix would not)."""
    return path.with_name(f".cefmp4-{stream_id}.delete")


def _beside(path: Path, stream_id: str) -> Path:
    """Where a staged file goes back when another file took its path: a visible name,
    within the 255 bytes a name may have."""
    tail = f".kept-{stream_id}{path.suffix}"
    stem = os.fsencode(path.stem)[: 255 - len(os.fsencode(tail))]
    return path.with_name(os.fsdecode(stem) + tail)


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
        proc: Path = Path("/proc"),
        quiet_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        scope: Scope | None = None,
        keep_only: bool = False,
        space: Space | None = None,
        evicted: Callable[[], None] = lambda: None,
    ) -> None:
        self._head = head_object
        self._hit = hit
        self._proc = proc
        self._quiet_s = quiet_s
        self._clock = clock
        self._sleep = sleep
        self._scope = scope
        self._keep_only = keep_only  # AFTER_UPLOAD=keep now: end what is pending, act on nothing
        self._space = space  # AFTER_UPLOAD=evict: wait for this file system to be short
        self._evicted = evicted

    async def deliver(self, item: OutboxItem) -> None:
        intent = Intent.from_json(item.payload)
        with structlog.contextvars.bound_contextvars(path=intent.path, action=intent.action):
            if intent.status != "complete":
                raise PermanentError(f"never acts on a {intent.status} stream; file kept")
            if self._scope is not None:
                self._scope.check(intent)
            # A file left at its hidden name by an interrupted attempt is back in view first:
            # whatever is decided below, it is never left hidden.
            await asyncio.to_thread(_put_back, intent)
            if self._keep_only:
                raise PermanentError("AFTER_UPLOAD is keep now; file kept")
            # A writer that closes and reopens (FTP APPE, rotating recorders) can outlast a
            # fast completion: act only once the file stayed as verified for the idle
            # timeout after its object was completed (§2.25). Items come in completion
            # order, so waiting for this one holds back none that is due earlier.
            # Never longer than the quiet time itself: a clock stepped back (or another host's,
            # through a shared store) must not hold the queue.
            wait = min(self._quiet_s, item.created_at + self._quiet_s - self._clock())
            if wait > 0:
                log.debug("after_upload_waiting", seconds=round(wait, 2))
                await self._sleep(wait)
            if intent.action == EVICT:
                # The oldest kept source waits here until space is short: the ones after
                # it are younger (completion order), so none is due before it.
                await self._until_short_of_space()
            await self._confirm_object(intent)
            outcome = await asyncio.to_thread(self.apply, intent)
            log.info("after_upload_done", outcome=outcome)
            if intent.action == EVICT and outcome == "deleted":
                self._evicted()

    async def _until_short_of_space(self) -> None:
        if self._space is None:
            raise PermanentError("AFTER_UPLOAD is not evict now; file kept")
        while True:
            try:
                short = await asyncio.to_thread(self._space.short)
            except OSError as exc:  # statvfs of a share that stalls or went away: unknown
                log.warning("free_space_unknown", error=str(exc))
                short = 0
            if short > 0:
                log.info("evicting", short_bytes=short, keep_free=str(self._space.keep))
                return
            await self._sleep(EVICT_POLL_S)

    async def _confirm_object(self, intent: Intent) -> None:
        info = await self._head(intent.key)
        if info is None:
            raise PermanentError("video object not found; source kept")
        etag = normalize_etag(str(info.etag))
        # A store that does not compute multipart ETags (no "-n" suffix) is held to the size,
        # as finalize's HeadObject confirmation is; the file itself is checked by SHA-256.
        etag_differs = intent.etag is not None and "-" in etag and etag != intent.etag
        if info.size != intent.size or etag_differs:
            raise PermanentError(
                f"video object is {info.size} bytes with ETag {etag}, expected {intent.size} "
                f"and {intent.etag}; source kept"
            )
        if await self._head(intent.metadata_key) is None:
            raise PermanentError("metadata object not found; source kept")

    # --- blocking part (runs in a thread) --------------------------------------------------
    #
    # Both actions open the source and take the proof that no process holds it open for
    # writing (a lease, held until the unlink), then rename it to a hidden name in its
    # directory (discovery ignores it, and no recorder opens it) and confirm that the name
    # still leads to the descriptor proven: nothing that takes the source's path meanwhile
    # can be the file acted on. Then the bytes: the very file uploaded (identity, size, mtime
    # and SHA-256). Only then the act. Any doubt puts the file back.

    def apply(self, intent: Intent) -> str:
        path = Path(intent.path)
        staged = staged_name(path, intent.stream_id)
        if intent.action == MOVE:
            return self._move(intent, path, staged)  # delete and evict: the same act
        return self._delete(intent, path, staged)

    @contextlib.contextmanager
    def _proven(self, intent: Intent, path: Path, staged: Path) -> Iterator[int]:
        """Inside: the source is at ``staged``, is the uploaded file, and nobody holds it open
        for writing; yields its descriptor. Raises PermanentError (the file put back at
        ``path``) when any of that is not proven or a step fails, FileNotFoundError when
        there is no source."""
        source = staged if os.path.lexists(staged) else path  # staged: an interrupted attempt
        try:
            fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            _put_back(intent)
            raise PermanentError(f"source cannot be opened ({exc.strerror}); kept") from None
        try:
            try:
                st = os.fstat(fd)
                _check_stat(intent, st)
                with NoWriterProof(fd, str(source), self._proc) as proof:
                    if source == path:
                        os.rename(path, staged)
                        _fsync_dir(path.parent)
                        self._hit("after_upload_staged")
                        now = os.lstat(staged)
                        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                            _put_back(intent, (now.st_dev, now.st_ino))  # the newcomer
                            raise PermanentError("another file took the source's path; kept")
                    if _sha256_of(fd, proof.holds) != intent.sha256:
                        raise PermanentError(
                            "source bytes differ from the uploaded object's; kept")
                    _check_stat(intent, os.fstat(fd))
                    if not proof.holds():
                        raise PermanentError("a process opened the source for writing; kept")
                    yield fd
            except (WriterOpen, WritersUnseen) as exc:
                _put_back(intent)
                raise PermanentError(f"{exc}; kept") from None
            except PermanentError:
                _put_back(intent)
                raise
            except OSError as exc:
                # A name too long, a read-only or full file system, an I/O error: the same
                # next time. The file goes back in view; the queue goes on.
                _put_back(intent)
                code = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                raise PermanentError(f"{exc.strerror or code} ({code}); source kept") from None
            except BaseException:
                _put_back(intent)  # a crash point in a test, a cancellation: never hidden
                raise
        finally:
            os.close(fd)

    def _delete(self, intent: Intent, path: Path, staged: Path) -> str:
        try:
            with self._proven(intent, path, staged):
                os.unlink(staged)
        except FileNotFoundError:
            return "already gone"
        _fsync_dir(path.parent)
        self._hit("after_upload_done")
        return "deleted"

    def _move(self, intent: Intent, path: Path, staged: Path) -> str:
        first, fallback = move_targets(intent)
        done = [t for t in (first, fallback) if _is_our_copy(t, intent)]
        try:
            with self._proven(intent, path, staged) as fd:
                if not done:
                    target = fallback if os.path.lexists(first) else first
                    _make_target_dir(target.parent, Path(str(intent.target_dir)))
                    self._place(intent, fd, staged, target)
                self._hit("after_upload_copied")
                # The target holds the uploaded bytes durably: now the source may go.
                os.unlink(staged)
        except FileNotFoundError:
            return "already moved" if done else "already gone"
        _fsync_dir(path.parent)
        self._hit("after_upload_done")
        return "moved"

    def _place(self, intent: Intent, fd: int, source: Path, target: Path) -> None:
        try:
            os.link(source, target)  # same file system: atomic, never overwrites
            _fsync_dir(target.parent)
            return
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise PermanentError(f"{target} appeared meanwhile; source kept") from None
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
        tmp = target.with_name(f".cefmp4-{intent.stream_id}.partial")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # an interrupted copy, or whatever was planted there (not followed)
        # O_EXCL|O_NOFOLLOW: a symlink planted at this name meanwhile is never written through.
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      0o644)
        digest = hashlib.sha256()
        try:
            offset = 0  # from the proven descriptor, not by opening a name again
            while block := os.pread(fd, COPY_BLOCK, offset):
                digest.update(block)
                view = memoryview(block)
                while view:
                    view = view[os.write(out, view):]
                offset += len(block)
            os.fsync(out)
            os.utime(out, ns=(intent.mtime_ns, intent.mtime_ns))
        except BaseException:
            os.close(out)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(out)
        if digest.hexdigest() != intent.sha256:
            os.unlink(tmp)
            raise PermanentError("the copy's SHA-256 differs from the object's; source kept")
        try:
            os.link(tmp, target)
        except FileExistsError:
            os.unlink(tmp)
            raise PermanentError(f"{target} appeared meanwhile; source kept") from None
        except OSError:
            if os.path.lexists(target):
                os.unlink(tmp)
                raise PermanentError(f"{target} appeared meanwhile; source kept") from None
            os.rename(tmp, target)  # no hard links on the target: plain rename
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _fsync_dir(target.parent)


def _make_target_dir(directory: Path, root: Path) -> None:
    """``directory`` below AFTER_UPLOAD_DIR, created as needed; PermanentError when a symlink
    (planted or not) leads it anywhere else."""
    directory.mkdir(parents=True, exist_ok=True)
    real, top = os.path.realpath(directory), os.path.realpath(root)
    if real != top and not real.startswith(top.rstrip(os.sep) + os.sep):
        raise PermanentError(f"{directory} leads outside AFTER_UPLOAD_DIR; source kept")


def _check_stat(intent: Intent, st: os.stat_result) -> None:
    """PermanentError unless ``st`` is the file as verified at completion."""
    if not stat.S_ISREG(st.st_mode):
        raise PermanentError("source is no longer a regular file; kept")
    # By inode first: on a shared volume the device number is each host's own.
    same = (st.st_ino, st.st_size, st.st_mtime_ns) == (intent.inode, intent.size,
                                                       intent.mtime_ns)
    if not same or st.st_dev != intent.device:
        raise PermanentError(
            "source changed since it was verified (identity, size or mtime); kept"
        )


def _sha256_of(fd: int, still: Callable[[], bool] = lambda: True) -> str:
    """The file's SHA-256; stops early (a PermanentError) when ``still()`` turns False: a
    writer that breaks the lease waits until we let go, so it is not kept waiting for the
    rest of a large file."""
    digest = hashlib.sha256()
    offset = 0
    while block := os.pread(fd, COPY_BLOCK, offset):
        digest.update(block)
        offset += len(block)
        if not still():
            raise PermanentError("a process opened the source for writing; kept")
    return digest.hexdigest()


def _put_back(intent: Intent, ident: tuple[int, int] | None = None) -> None:
    """Return a staged file to view, never over another: at its path if free, else beside it
    (discovery then finds it; a rename keeps its stream). Only a file this action staged
    (the intent's inode, or ``ident``, what it renamed): anything else found at the hidden
    name is left alone."""
    path = Path(intent.path)
    staged = staged_name(path, intent.stream_id)
    try:
        st = os.lstat(staged)
    except OSError:
        return
    ours = ident or (intent.device, intent.inode)
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != ours:
        log.warning("after_upload_staged_name_taken", staged=str(staged),
                    error="not the file this action staged; left alone")
        return
    for name in (path, _beside(path, intent.stream_id)):
        try:
            os.link(staged, name)  # never overwrites
        except FileExistsError:
            continue
        except OSError:
            if os.path.lexists(name):
                continue
            os.rename(staged, name)  # no hard links here
            break
        os.unlink(staged)
        break
    else:
        log.error("after_upload_not_restored", staged=str(staged),
                  error="both its path and the name beside it are taken; left hidden")
        return
    _fsync_dir(path.parent)


def _is_our_copy(target: Path, intent: Intent) -> bool:
    """A previous attempt already placed this stream's bytes at ``target``: the source
    itself (a hard link), or a file with exactly its bytes."""
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != intent.size:
            return False
        if st.st_ino == intent.inode and st.st_dev == intent.device:
            return True
        # Size and mtime are not identity (a camera without a clock, rsync -t): the bytes are.
        return _sha256_of(fd) == intent.sha256
    finally:
        os.close(fd)


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


# --- AFTER_UPLOAD=evict: what is kept -------------------------------------------------------


class KeptSources:
    """AFTER_UPLOAD=evict: the sources kept on disk whose objects are confirmed, which are
    the outbox's pending ``after_upload`` items: stream id -> bytes as verified at completion
    (``evictable_files``, ``evictable_bytes``). No walk of the tree, and no read of every
    item each time either: that is O(n) in the store (0.3 s of the SQLite thread for 100,000
    items). The outbox writes of this process keep the tally current (:class:`KeptOutbox`);
    :meth:`reconcile` compares it with the store's count (an index count, a few ms) and reads
    every item only when they differ: at start-up, and after another process added or
    removed items (``upload`` beside the daemon, another instance on the same Redis)."""

    def __init__(self, publish: Callable[[int, int], None] = lambda _n, _b: None) -> None:
        self._sizes: dict[str, int] = {}
        self.nbytes = 0
        self._publish = publish  # (files, bytes), once the tally is the store's
        self._read = False  # every item read once
        self._meanwhile: list[tuple[str, int | None]] | None = None  # changes during a read

    def __len__(self) -> int:
        return len(self._sizes)

    def recorded(self, stream_id: str, payload: bytes) -> None:
        """An ``after_upload`` item was written (an item that existed is left as it was,
        the same intent: setting it again changes nothing)."""
        self._set(stream_id, _kept_size(payload))

    def settled(self, stream_id: str) -> None:
        """The item was delivered (the source evicted) or failed (kept for good, no longer
        evictable)."""
        self._set(stream_id, None)

    def _set(self, stream_id: str, size: int | None) -> None:
        if self._meanwhile is not None:
            self._meanwhile.append((stream_id, size))
        self.nbytes -= self._sizes.pop(stream_id, 0)
        if size is not None:
            self._sizes[stream_id] = size
            self.nbytes += size
        if self._read:
            self._publish(len(self._sizes), self.nbytes)

    async def reconcile(self, outbox: Outbox) -> int:
        """The store's count of kept sources; every item read again when the tally differs.
        ``CefmpError`` when the store cannot be read (the tally stays as it was)."""
        count = await outbox.outbox_count(frozenset({SINK_AFTER_UPLOAD}))
        if count != len(self._sizes) or not self._read:
            self._meanwhile = []
            try:
                # Items added since the count are read too, up to a margin; any beyond it
                # make the next round differ again.
                items = await outbox.outbox_pending(SINK_AFTER_UPLOAD, count + 1024)
                sizes = await asyncio.to_thread(
                    lambda: {i.stream_id: _kept_size(i.payload) for i in items})
            finally:
                meanwhile, self._meanwhile = self._meanwhile, None
            self._sizes, self.nbytes, self._read = sizes, sum(sizes.values()), True
            # Changes written while the items were read, again: each sets the final state
            # of its item, so one already in what was read changes nothing.
            for stream_id, size in meanwhile:
                self._set(stream_id, size)
        self._publish(len(self._sizes), self.nbytes)
        return count


def _kept_size(payload: bytes) -> int:
    """The bytes an intent keeps on disk; 0 when it does not parse (the sink fails it when
    its turn comes, and it counts as kept until then, as in the store's count). Only the
    JSON, not an ``Intent``: a third of the cost, 0.35 s for 100,000 at start-up."""
    try:
        size = json.loads(payload).get("size")
    except (ValueError, AttributeError, RecursionError):
        return 0
    return size if type(size) is int and size >= 0 else 0


class KeptOutbox:
    """The store's outbox, telling ``kept`` what the writes of this process (completions
    and the dispatcher) do to the ``after_upload`` items, once the store has done them."""

    def __init__(self, store: Outbox, kept: KeptSources) -> None:
        self.store = store
        self.kept = kept

    async def put_stream_with_outbox(
        self, record: StreamRecord, items: Sequence[tuple[str, bytes]], created_at: float
    ) -> None:
        await self.store.put_stream_with_outbox(record, items, created_at)
        for sink, payload in items:
            if sink == SINK_AFTER_UPLOAD:
                self.kept.recorded(record.stream_id, payload)

    async def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        return await self.store.outbox_pending(sink, limit)

    async def outbox_done(self, sink: str, stream_id: str) -> None:
        await self.store.outbox_done(sink, stream_id)
        if sink == SINK_AFTER_UPLOAD:
            self.kept.settled(stream_id)

    async def outbox_failed(self, sink: str, stream_id: str, error: str) -> None:
        await self.store.outbox_failed(sink, stream_id, error)
        if sink == SINK_AFTER_UPLOAD:
            self.kept.settled(stream_id)

    async def outbox_count(self, sinks: frozenset[str]) -> int:
        return await self.store.outbox_count(sinks)

    async def outbox_claim(self, owner: str, ttl: float) -> bool:
        return await self.store.outbox_claim(owner, ttl)
