"""The embedded checkpoint store: one SQLite file in WAL mode under ``STATE_DIR``.

Used when ``REDIS_URL`` is empty. One process owns the state directory at a time: an
exclusive ``flock`` on ``STATE_DIR/lock`` is taken on open and held until close, so a second
``cefmp4 run`` on the same directory fails at start-up instead of corrupting the other's
view. ``read_only=True`` skips the lock for ``cefmp4 status`` while a daemon runs.

``shared=True`` is ``cefmp4 upload`` beside a running daemon: SQLite itself serialises the
two processes' writes (WAL, ``BEGIN IMMEDIATE``, the busy timeout), so the store may be
shared; what the lock protects is the daemon's streams — one process following each file.
The upload command keeps off them (``cefmp4.cli.commands``), and a shared store never
claims the outbox: the lock's holder delivers what the upload records.

sqlite3 is blocking, so every call runs on one dedicated worker thread; the connection is
created and used on that thread only, which also serialises the store's operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import structlog

from cefmp4.after.outbox import OutboxItem
from cefmp4.checkpoint import UNFINISHED, StreamState, quarantined
from cefmp4.checkpoint.parse import (
    build_completed,
    build_part,
    build_record,
    outbox_values,
)
from cefmp4.checkpoint.records import (
    CompletedFile,
    MalformedRecord,
    PartRecord,
    QuarantinedRecord,
    StreamRecord,
)
from cefmp4.runtime import logs
from cefmp4.runtime.errors import ConfigError, PermanentError, TransientError

__all__ = [
    "DB_NAME", "LOCK_NAME", "SCHEMA_VERSION", "SqliteCheckpointStore", "lock_holder",
    "open_sqlite_store",
]

DB_NAME = "checkpoints.sqlite3"
LOCK_NAME = "lock"

# PRAGMA user_version of the schema below. A later release that changes the tables adds a
# migration step in ``_migrate`` and bumps this; an older binary refuses a newer file.
# 2: the outbox table (notifications and after-upload actions), streams.completed_by.
SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    stream_id        TEXT PRIMARY KEY,
    path             TEXT NOT NULL,
    rel_path         TEXT NOT NULL,
    device           INTEGER NOT NULL,
    inode            INTEGER NOT NULL,
    bucket           TEXT NOT NULL,
    object_key       TEXT NOT NULL,
    part_size        INTEGER NOT NULL,
    max_parts        INTEGER NOT NULL,
    state            TEXT NOT NULL,
    started_at       REAL NOT NULL,
    last_activity_at REAL NOT NULL,
    upload_id        TEXT,
    status           TEXT,
    completed_at     REAL,
    final_size       INTEGER,
    final_mtime_ns   INTEGER,
    sha256           TEXT,
    error            TEXT,
    completed_by     TEXT
);
CREATE INDEX IF NOT EXISTS streams_identity ON streams (device, inode);
CREATE INDEX IF NOT EXISTS streams_inode ON streams (inode);
CREATE INDEX IF NOT EXISTS streams_state ON streams (state);
CREATE TABLE IF NOT EXISTS parts (
    stream_id    TEXT NOT NULL,
    part_number  INTEGER NOT NULL,
    offset_bytes INTEGER NOT NULL,
    size         INTEGER NOT NULL,
    etag         TEXT NOT NULL,
    md5          TEXT NOT NULL,
    uploaded_at  REAL NOT NULL,
    PRIMARY KEY (stream_id, part_number)
) WITHOUT ROWID;
"""

_V2_COLUMNS = "ALTER TABLE streams ADD COLUMN completed_by TEXT;"

# Post-completion work (cefmp4.after.notify): one row per (sink, stream), written in the same
# transaction that marks the stream completed; ``seq`` is the completion order.
_OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    sink       TEXT NOT NULL,
    stream_id  TEXT NOT NULL,
    payload    BLOB NOT NULL,
    created_at REAL NOT NULL,
    failed     TEXT,
    UNIQUE (sink, stream_id)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, failed, seq);
"""

# Column order of ``streams`` = StreamRecord field order (``key`` is ``object_key``: KEY is
# an SQL keyword).
_STREAM_COLUMNS = (
    "stream_id", "path", "rel_path", "device", "inode", "bucket", "object_key", "part_size",
    "max_parts", "state", "started_at", "last_activity_at", "upload_id", "status",
    "completed_at", "final_size", "final_mtime_ns", "sha256", "error", "completed_by",
)  # fmt: skip
_FIELDS = tuple("key" if c == "object_key" else c for c in _STREAM_COLUMNS)
_SELECT_STREAMS = f"SELECT {', '.join(_STREAM_COLUMNS)} FROM streams"
_SELECT_COMPLETED = (
    "SELECT rowid, stream_id, device, inode, final_size, final_mtime_ns, path, object_key, "
    "bucket FROM streams WHERE state = 'completed' AND rowid > ? "
    # A completed stream without its final size or mtime is no fingerprint: never skipped.
    "AND final_size IS NOT NULL AND final_mtime_ns IS NOT NULL ORDER BY rowid LIMIT ?"
)
_UPSERT_STREAM = (
    f"INSERT OR REPLACE INTO streams ({', '.join(_STREAM_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_STREAM_COLUMNS))})"
)
_UPSERT_PART = (
    "INSERT OR REPLACE INTO parts "
    "(stream_id, part_number, offset_bytes, size, etag, md5, uploaded_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_TOUCH_STREAM = (
    "UPDATE streams SET last_activity_at = ? WHERE stream_id = ? AND last_activity_at < ?"
)

# SQLite result codes worth retrying: another connection holds a lock, the disk is full
# or failing, the file cannot be opened right now. Everything else (corruption, a bug)
# fails the same way every time.
_TRANSIENT_CODES = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_FULL",
                    "SQLITE_CANTOPEN", "SQLITE_PROTOCOL")  # fmt: skip

_T = TypeVar("_T")

log = structlog.get_logger(__name__)

# st_dev and st_ino are unsigned 64-bit; SQLite's INTEGER is signed. Values ≥ 2**63 occur
# (NFS, FUSE, overlay file systems), so they are stored as their two's-complement.
_I64 = 1 << 64


def _to_i64(value: int) -> int:
    return value - _I64 if value >= 1 << 63 else value


def _from_i64(value: int) -> int:
    return value + _I64 if value < 0 else value


def _map_error(exc: sqlite3.Error, operation: str, db_path: Path) -> Exception:
    name = getattr(exc, "sqlite_errorname", "") or ""
    message = f"checkpoint database {db_path}: {operation} failed: {exc}"
    if name.startswith(_TRANSIENT_CODES) or (
        not name and isinstance(exc, sqlite3.OperationalError)
    ):
        return TransientError(message)
    return PermanentError(message)


def _rollback(conn: sqlite3.Connection) -> None:
    # A failed COMMIT (disk I/O) leaves the transaction open; the next BEGIN would fail.
    if conn.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")


def _row_values(row: tuple[Any, ...]) -> dict[str, Any]:
    values = dict(zip(_FIELDS, row, strict=True))
    for name in ("device", "inode"):  # stored as signed 64-bit, see _to_i64
        if isinstance(values[name], int) and not isinstance(values[name], bool):
            values[name] = _from_i64(values[name])
    return values


def _row_to_record(row: tuple[Any, ...]) -> StreamRecord:
    """The record of a row; ``MalformedRecord`` if a value has the wrong type or range
    (SQLite's columns take any type, and anyone with the file can write to it)."""
    return build_record(_row_values(row))


def _record_to_row(r: StreamRecord) -> tuple[Any, ...]:
    return (
        r.stream_id, r.path, r.rel_path, _to_i64(r.device), _to_i64(r.inode), r.bucket, r.key,
        r.part_size, r.max_parts, r.state.value, float(r.started_at),
        float(r.last_activity_at), r.upload_id, r.status,
        None if r.completed_at is None else float(r.completed_at), r.final_size,
        r.final_mtime_ns, r.sha256, r.error, r.completed_by,
    )  # fmt: skip


class SqliteCheckpointStore:
    """``CheckpointStore`` on one SQLite file. Build it with ``open_sqlite_store``."""

    def __init__(self, conn: sqlite3.Connection, executor: ThreadPoolExecutor, db_path: Path,
                 *, read_only: bool = False, shared: bool = False) -> None:  # fmt: skip
        self._conn = conn
        self._executor = executor
        self._db_path = db_path
        self._read_only = read_only
        self._shared = shared  # beside the lock's holder (`upload` beside a daemon)
        self._closed = False
        self._warned: set[str] = set()  # quarantined stream ids already warned about

    @property
    def db_path(self) -> Path:
        return self._db_path

    async def _run(self, operation: str, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise RuntimeError("the SQLite checkpoint store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except sqlite3.Error as exc:
            raise _map_error(exc, operation, self._db_path) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # The connection is in autocommit mode (isolation_level=None); BEGIN IMMEDIATE takes
        # the write lock up front so a transaction never fails half-way on a lock upgrade.
        if self._read_only:
            raise PermanentError(f"checkpoint database {self._db_path} was opened read-only")
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException:
            _rollback(self._conn)
            raise

    # -- CheckpointStore ------------------------------------------------------------------

    async def ping(self) -> None:
        await self._run("ping", self._ping_sync)

    def _ping_sync(self) -> None:
        self._conn.execute("SELECT count(*) FROM streams LIMIT 1").fetchone()

    async def put_stream(self, record: StreamRecord) -> None:
        await self._run("put_stream", self._put_stream_sync, _record_to_row(record))

    def _put_stream_sync(self, row: tuple[Any, ...]) -> None:
        with self._transaction() as conn:
            conn.execute(_UPSERT_STREAM, row)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        return await self._run("get_stream", self._get_stream_sync, stream_id)

    def _get_stream_sync(self, stream_id: str) -> StreamRecord | None:
        row = self._conn.execute(f"{_SELECT_STREAMS} WHERE stream_id = ?", (stream_id,)).fetchone()
        return None if row is None else self._parse(row, check_parts=False)

    def _parse(self, row: tuple[Any, ...], *, check_parts: bool) -> StreamRecord | None:
        """The row's record, or None (with one warning per stream) if it is quarantined.
        ``check_parts``: an unfinished stream's parts must parse too (resume reads them)."""
        problem = self._problem(row, check_parts=check_parts)
        if isinstance(problem, StreamRecord):
            return problem
        self._warn_once(str(row[0]), problem)
        return None

    def _warn_once(self, stream_id: str, problem: str) -> None:
        if stream_id not in self._warned:
            self._warned.add(stream_id)
            log.warning(logs.RECORD_QUARANTINED, stream_id=stream_id[:80], reason=problem,
                        store="sqlite")  # fmt: skip

    def _problem(self, row: tuple[Any, ...], *, check_parts: bool) -> StreamRecord | str:
        try:
            record = _row_to_record(row)
            if check_parts and record.state in UNFINISHED:
                self._get_parts_sync(record.stream_id)
        except MalformedRecord as exc:
            return str(exc)
        return record

    async def list_quarantined(self) -> list[QuarantinedRecord]:
        return await self._run("list_quarantined", self._list_quarantined_sync)

    def _list_quarantined_sync(self) -> list[QuarantinedRecord]:
        out: list[QuarantinedRecord] = []
        for row in self._conn.execute(_SELECT_STREAMS).fetchall():
            problem = self._problem(row, check_parts=True)
            if isinstance(problem, str):
                out.append(quarantined(str(row[0]), problem, _row_values(row)))
        return out

    async def list_streams(
        self, states: frozenset[StreamState] | None = None
    ) -> list[StreamRecord]:
        return await self._run("list_streams", self._list_streams_sync, states)

    def _list_streams_sync(self, states: frozenset[StreamState] | None) -> list[StreamRecord]:
        if states is None:
            rows = self._conn.execute(_SELECT_STREAMS)
        elif not states:
            return []
        else:
            marks = ", ".join("?" * len(states))
            values = [s.value for s in states]
            rows = self._conn.execute(f"{_SELECT_STREAMS} WHERE state IN ({marks})", values)
        parsed = (self._parse(row, check_parts=True) for row in rows.fetchall())
        return [record for record in parsed if record is not None]

    async def naming_uploads(
        self, upload_ids: frozenset[str]
    ) -> list[StreamRecord | QuarantinedRecord]:
        if not upload_ids:
            return []
        return await self._run("naming_uploads", self._naming_sync, sorted(upload_ids))

    def _naming_sync(self, upload_ids: list[str]) -> list[StreamRecord | QuarantinedRecord]:
        # No index on upload_id: a scan in SQLite's C, ~10 ms per 100,000 rows, and only
        # when an upload is unknown.
        marks = ", ".join("?" * len(upload_ids))
        rows = self._conn.execute(f"{_SELECT_STREAMS} WHERE upload_id IN ({marks})", upload_ids)
        out: list[StreamRecord | QuarantinedRecord] = []
        for row in rows.fetchall():
            problem = self._problem(row, check_parts=True)
            out.append(problem if isinstance(problem, StreamRecord)
                       else quarantined(str(row[0]), problem, _row_values(row)))  # fmt: skip
        return out

    async def completed_files(
        self, cursor: str = "", limit: int = 5000
    ) -> tuple[list[CompletedFile], str]:
        after = int(cursor) if cursor.isdigit() else 0
        return await self._run("completed_files", self._completed_sync, after, max(1, limit))

    def _completed_sync(self, after: int, limit: int) -> tuple[list[CompletedFile], str]:
        # Keyset pages in rowid order through streams_state (an index holds the rowid).
        rows = self._conn.execute(_SELECT_COMPLETED, (after, limit)).fetchall()
        out: list[CompletedFile] = []
        for row in rows:
            values = list(row[1:])
            for i in (1, 2):  # device, inode: see _to_i64
                if isinstance(values[i], int):
                    values[i] = _from_i64(values[i])
            try:
                out.append(build_completed(values))
            except MalformedRecord as exc:
                self._warn_once(str(row[1]), str(exc))
        return out, (str(rows[-1][0]) if len(rows) == limit else "")

    async def find_by_inode(self, inode: int) -> list[StreamRecord]:
        return await self._run("find_by_inode", self._find_by_inode_sync, inode)

    def _find_by_inode_sync(self, inode: int) -> list[StreamRecord]:
        rows = self._conn.execute(
            f"{_SELECT_STREAMS} WHERE inode = ? ORDER BY started_at", (_to_i64(inode),)
        )
        parsed = (self._parse(row, check_parts=True) for row in rows.fetchall())
        return [record for record in parsed if record is not None]

    async def put_part(self, stream_id: str, part: PartRecord) -> None:
        await self._run("put_part", self._put_part_sync, stream_id, part)

    def _put_part_sync(self, stream_id: str, part: PartRecord) -> None:
        uploaded_at = float(part.uploaded_at)
        with self._transaction() as conn:
            conn.execute(_UPSERT_PART, (stream_id, part.part_number, part.offset, part.size,
                                        part.etag, part.md5, uploaded_at))  # fmt: skip
            conn.execute(_TOUCH_STREAM, (uploaded_at, stream_id, uploaded_at))

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        return await self._run("get_parts", self._get_parts_sync, stream_id)

    def _get_parts_sync(self, stream_id: str) -> list[PartRecord]:
        rows = self._conn.execute(
            "SELECT part_number, offset_bytes, size, etag, md5, uploaded_at FROM parts "
            "WHERE stream_id = ? ORDER BY part_number",
            (stream_id,),
        )
        return [
            build_part(number, {"offset": offset, "size": size, "etag": etag, "md5": md5,
                                "uploaded_at": uploaded_at})
            for number, offset, size, etag, md5, uploaded_at in rows
        ]  # fmt: skip

    async def delete_parts(self, stream_id: str) -> None:
        await self._run("delete_parts", self._delete_sync, stream_id, False)

    async def delete_stream(self, stream_id: str) -> None:
        await self._run("delete_stream", self._delete_sync, stream_id, True)

    def _delete_sync(self, stream_id: str, with_stream: bool) -> None:
        with self._transaction() as conn:
            conn.execute("DELETE FROM parts WHERE stream_id = ?", (stream_id,))
            if with_stream:
                conn.execute("DELETE FROM streams WHERE stream_id = ?", (stream_id,))

    # -- the outbox (cefmp4.after.notify.Outbox) --------------------------------------------------

    async def put_stream_with_outbox(
        self, record: StreamRecord, items: Sequence[tuple[str, bytes]], created_at: float
    ) -> None:
        """``put_stream`` and the record's outbox items in one transaction; an item that
        already exists (a redone completion) keeps its place in the order."""
        await self._run("put_stream", self._put_with_outbox_sync, _record_to_row(record),
                        record.stream_id, list(items), float(created_at))  # fmt: skip

    def _put_with_outbox_sync(self, row: tuple[Any, ...], stream_id: str,
                              items: list[tuple[str, bytes]], created_at: float) -> None:
        with self._transaction() as conn:
            conn.execute(_UPSERT_STREAM, row)
            conn.executemany(
                "INSERT OR IGNORE INTO outbox (sink, stream_id, payload, created_at) "
                "VALUES (?, ?, ?, ?)",
                [(sink, stream_id, payload, created_at) for sink, payload in items],
            )

    async def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        return await self._run("outbox_pending", self._outbox_pending_sync, sink, limit)

    def _outbox_pending_sync(self, sink: str, limit: int) -> list[OutboxItem]:
        """The oldest ``limit`` items that parse. One that does not (SPEC §2.18) is marked
        failed with the reason (kept for inspection, never handed out again) and warned
        about once; it neither raises nor takes the place of the items after it."""
        out: list[OutboxItem] = []
        after = None  # seq is an INTEGER PRIMARY KEY: always an integer
        while len(out) < limit:
            rows = self._conn.execute(
                "SELECT seq, stream_id, payload, created_at FROM outbox "
                "WHERE sink = ? AND failed IS NULL AND seq > coalesce(?, -1) "
                "ORDER BY seq LIMIT ?", (sink, after, limit - len(out)),
            ).fetchall()  # fmt: skip
            if not rows:
                break
            for seq, sid, payload, at in rows:
                after = seq
                try:  # SQLite keeps any type in any column: a text time, a number payload
                    number, stream_id, body, created_at = outbox_values(seq, sid, payload, at)
                    out.append(OutboxItem(number, sink, stream_id, body, created_at))
                except MalformedRecord as exc:
                    self._quarantine_item(sink, seq, sid, str(exc))
        return out

    def _quarantine_item(self, sink: str, seq: int, stream_id: object, reason: str) -> None:
        if not self._read_only:  # a read-only look (status) leaves it to the daemon
            with self._transaction() as conn:
                conn.execute("UPDATE outbox SET failed = ? WHERE seq = ? AND failed IS NULL",
                             (f"malformed: {reason}", seq))  # fmt: skip
        if f"outbox:{seq}" not in self._warned:
            self._warned.add(f"outbox:{seq}")
            log.warning(logs.RECORD_QUARANTINED, stream_id=str(stream_id)[:80], sink=sink,
                        reason=f"outbox item: {reason}", store="sqlite")  # fmt: skip

    async def outbox_done(self, sink: str, stream_id: str) -> None:
        await self._run("outbox_done", self._outbox_write_sync,
                        "DELETE FROM outbox WHERE sink = ? AND stream_id = ?", (sink, stream_id))

    async def outbox_failed(self, sink: str, stream_id: str, error: str) -> None:
        await self._run("outbox_failed", self._outbox_write_sync,
                        "UPDATE outbox SET failed = ? WHERE sink = ? AND stream_id = ?",
                        (error or "failed", sink, stream_id))  # fmt: skip

    def _outbox_write_sync(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._transaction() as conn:
            conn.execute(sql, args)

    async def outbox_claim(self, owner: str, ttl: float) -> bool:
        """The holder of the state directory's lock delivers; a store shared beside it
        (``upload`` next to a daemon) leaves its items to that daemon."""
        return not self._shared

    async def outbox_count(self, sinks: frozenset[str]) -> int:
        return await self._run("outbox_count", self._outbox_count_sync, sorted(sinks))

    def _outbox_count_sync(self, sinks: list[str]) -> int:
        if not sinks:
            return 0
        marks = ", ".join("?" * len(sinks))
        (count,) = self._conn.execute(
            f"SELECT count(*) FROM outbox WHERE failed IS NULL AND sink IN ({marks})", sinks
        ).fetchone()
        return int(count)

    async def aclose(self) -> None:
        """Close the connection and stop the worker thread; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=True)


# -- opening ----------------------------------------------------------------------------


def _lock_state_dir(state_dir: Path) -> int:
    """Create ``state_dir`` and take the single-instance lock; returns the locked fd."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ConfigError("STATE_DIR", f"cannot use {state_dir}: {exc.strerror or exc}") from exc
    try:
        # flock, not fcntl/lockf: the lock belongs to this open file description, so a
        # second open in the same process conflicts too, and it dies with the process.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise ConfigError(
            "STATE_DIR",
            f"another cefmp4 instance is already using {state_dir}; the embedded store "
            "supports one instance — use REDIS_URL to run several",
        ) from exc
    except OSError as exc:
        os.close(fd)
        raise ConfigError("STATE_DIR", f"cannot lock {state_dir / LOCK_NAME}: {exc}") from exc
    # The owner's pid, for an operator wondering who holds the directory.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def lock_holder(state_dir: Path) -> int | None:
    """The pid of the instance holding ``state_dir``'s lock (0 when it wrote none), or None
    when nobody holds it. Takes the lock for an instant and gives it back at once."""
    try:
        fd = os.open(Path(state_dir) / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file: nothing ever ran here
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            return int(text) if text.isdigit() else 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _connect(db_path: Path, read_only: bool) -> sqlite3.Connection:
    """Open (and create or migrate) the database; runs on the store's worker thread."""
    if read_only:
        uri = f"{db_path.resolve().as_uri()}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)
    else:
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=5.0)
    try:
        if not read_only:
            conn.execute("PRAGMA journal_mode=WAL")
        # Durability: in WAL mode with synchronous=NORMAL every commit is written to the WAL
        # file before COMMIT returns, so it survives a crash or SIGKILL of this process (the
        # bytes are in the OS page cache); only the fsync is deferred to checkpoints. A power
        # loss or kernel crash can therefore drop the last commits. That is the same class of
        # loss as Redis with ``appendfsync everysec``, and §2.6 recovers from it: a part that
        # is in S3 but not in the checkpoint is adopted from ListParts after an MD5 check, and
        # a completed object is found with HeadObject. FULL would fsync once per part; cheap
        # at one commit per ≥5 MiB part, but it buys nothing reconciliation does not already.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        _migrate(conn, db_path, read_only)
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, db_path: Path, read_only: bool) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise ConfigError(
            "STATE_DIR",
            f"{db_path} has schema version {version}, newer than this cefmp4 understands "
            f"({SCHEMA_VERSION}); upgrade cefmp4 or point STATE_DIR elsewhere",
        )
    if read_only:
        raise ConfigError("STATE_DIR", f"{db_path} is not initialised yet; run cefmp4 first")
    # version 0: a new file; 1: before the outbox. Later versions add ``if version < N:``.
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Not executescript(): it COMMITs first, which would split the migration.
        script = (_SCHEMA if version < 1 else _V2_COLUMNS) + _OUTBOX_SCHEMA
        for statement in filter(None, (s.strip() for s in script.split(";"))):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


@asynccontextmanager
async def open_sqlite_store(
    state_dir: Path, *, read_only: bool = False, shared: bool = False
) -> AsyncIterator[SqliteCheckpointStore]:
    """Open the embedded store in ``state_dir`` (created if missing) for the ``async with``.

    ``ConfigError`` naming ``STATE_DIR`` if the directory cannot be used, is locked by
    another instance, or holds a database this version cannot read. ``read_only=True`` takes
    no lock and refuses writes (``PermanentError``): for ``cefmp4 status`` beside a daemon.
    ``shared=True`` takes no lock either but writes: for ``cefmp4 upload`` beside a daemon
    (see the module's docstring for why that is safe, and what it must stay off).
    """
    state_dir = Path(state_dir)
    db_path = state_dir / DB_NAME
    lock_fd = None
    if read_only:
        if not db_path.exists():
            raise ConfigError("STATE_DIR", f"no checkpoint database at {db_path}")
    elif not shared:
        lock_fd = await asyncio.to_thread(_lock_state_dir, state_dir)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cefmp4-sqlite")
    try:
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, db_path, read_only)
        except sqlite3.Error as exc:
            raise ConfigError("STATE_DIR", f"cannot open {db_path}: {exc}") from exc
        store = SqliteCheckpointStore(conn, executor, db_path, read_only=read_only,
                                      shared=shared)
        try:
            yield store
        finally:
            await store.aclose()
    finally:
        executor.shutdown(wait=True)
        if lock_fd is not None:
            os.close(lock_fd)  # releases the flock
