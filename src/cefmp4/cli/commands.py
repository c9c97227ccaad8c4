"""``cefmp4 upload`` and ``cefmp4 status --watch``: one-shot commands on the same
pipeline (``cefmp4 status`` itself is :mod:`cefmp4.cli.status`).

Everything ``status`` prints goes through ``logs.redact``: paths and errors in checkpoint
records are input, and may carry a URL with a password.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cefmp4.checkpoint import CheckpointStore, StreamRecord, StreamState
from cefmp4.checkpoint.sqlite import DB_NAME, lock_holder, open_sqlite_store
from cefmp4.config.adapters import open_checkpoints
from cefmp4.config.settings import Settings
from cefmp4.runtime import logs
from cefmp4.runtime.errors import CefmpError, ConfigError

if TYPE_CHECKING:  # rich (status) and the App are imported by the functions that use them
    from rich.console import Console
    from rich.table import Table

    from cefmp4.runtime.app import App

__all__ = ["status_watch_command", "upload_command", "upload_files"]

EXIT_OK = 0
EXIT_FAILED = 1


def upload_command(settings: Settings, files: list[Path]) -> int:
    missing = [f for f in files if not f.is_file()]
    for path in missing:
        print(f"cefmp4: error: {path}: not a readable file", file=sys.stderr)
    todo = [f for f in files if f.is_file()]
    if not todo:
        return EXIT_FAILED
    total = sum(f.stat().st_size for f in todo)
    # The bar goes where the logs go (stderr; stdout is each file's result line), so that
    # rich can print every log line above it instead of both fighting over one terminal.
    tty = sys.stderr.isatty()
    began = time.time()
    results = asyncio.run(_upload_with_progress(settings, todo, total, tty))
    failed = bool(missing)
    for path, record in results.items():
        if record is None:
            failed = True
            print(f"FAILED  {path}", file=sys.stderr)
        else:
            # Completed before this command started: the unchanged file was not sent again.
            earlier = record.completed_at is not None and record.completed_at < began
            print(
                f"{'same' if earlier else 'ok':<8}{path} -> s3://{record.bucket}/{record.key} "
                f"({record.final_size} bytes, sha256 {record.sha256}"
                f"{', already uploaded' if earlier else ''})"
            )
    return EXIT_FAILED if failed else EXIT_OK


async def _upload_with_progress(
    settings: Settings, files: list[Path], total: int, tty: bool
) -> dict[Path, StreamRecord | None]:
    if not tty:
        return await upload_files(settings, files)
    # rich only where it draws: its import is start-up time that a pipe does not need.
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    apps: list[App] = []
    # While it draws, rich's proxy stands in for sys.stderr and prints each line written
    # there (the logs: cefmp4.runtime.logs writes to whatever sys.stderr is) above the bar.
    progress = Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), transient=True, console=Console(stderr=True),
        redirect_stdout=False, redirect_stderr=True,
    )

    async def refresh(task_id: Any) -> None:
        while True:
            await asyncio.sleep(0.2)
            if apps:
                uploaded = apps[0].metrics.bytes_uploaded_value()
                progress.update(task_id, completed=min(uploaded, total))

    with progress:
        task_id = progress.add_task(f"uploading {len(files)} file(s)", total=total)
        ticker = asyncio.create_task(refresh(task_id))
        try:
            return await upload_files(settings, files, apps.append)
        finally:
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)


async def upload_files(
    settings: Settings, files: list[Path], on_start: Callable[[App], None] | None = None
) -> dict[Path, StreamRecord | None]:
    """``cefmp4 upload``: the burst path with no idle wait."""
    from cefmp4.runtime.app import App

    results: dict[Path, StreamRecord | None] = {}
    todo = files
    while todo:
        redis = bool(settings.redis_url.get_secret_value())
        holder = None if redis else await asyncio.to_thread(lock_holder, settings.state_dir)
        if holder is None:
            results.update(await App(settings).run_burst(todo, on_start=on_start))
            break
        done, todo = await _upload_beside(settings, todo, holder, on_start)
        results.update(done)  # ``todo``: files whose follower stopped first: ours now
    return results


# --- upload beside a running daemon (the embedded store) -------------------------------------
#
# The daemon holds STATE_DIR's lock so that one process follows each recording: two streams of
# one file would be two uploads and two objects. SQLite itself is safe for two processes, so
# `upload` shares the store (no lock; it never claims the outbox, whose items the daemon then
# delivers) and divides the files:
#   * the daemon's: a file it follows or will follow — named like a recording inside WATCH_DIR
#     (it finds every such file), or one whose inode has a stream still active in the store.
#     `upload` starts no stream for it: it waits until the daemon has completed it (with the
#     recorder profile a finished file completes a few seconds after it was seen) and reports
#     that object; if the lock's holder goes away first (the daemon stopped, or it was another
#     `upload` that never had the file), `upload` takes the file on itself, under the lock.
#   * every other file (outside WATCH_DIR, another extension, hidden): uploaded here, as
#     without a daemon; the daemon never looks at it.
DAEMON_POLL_S = 0.25


async def _upload_beside(
    settings: Settings, files: list[Path], daemon: int, on_start: Callable[[App], None] | None
) -> tuple[dict[Path, StreamRecord | None], list[Path]]:
    """(results, the files whose follower went away before completing them)."""
    from cefmp4.config.adapters import pipeline_config
    from cefmp4.runtime.app import App

    config = pipeline_config(settings)
    results: dict[Path, StreamRecord | None] = {}
    async with open_sqlite_store(settings.state_dir, shared=True) as store:
        theirs: list[Path] = []
        ours: list[Path] = []
        for path in (f.resolve() for f in files):
            followed = await _daemon_follows(store, path, config.watch_dir, config.extensions)
            (theirs if followed else ours).append(path)
        for path in theirs:
            print(f"cefmp4: {path}: followed by the running cefmp4 (pid {daemon}); waiting "
                  "for it to complete the upload", file=sys.stderr)
        if ours:
            app = App(settings, checkpoints=store)
            results.update(await app.run_burst(ours, on_start=on_start))
        left: list[Path] = []
        for path in theirs:
            record = await _completed_by_daemon(store, path, settings.state_dir)
            if isinstance(record, _Gone):
                print(f"cefmp4: {path}: pid {daemon} stopped before completing it; uploading "
                      "it here", file=sys.stderr)
                left.append(path)
            else:
                results[path] = record
    return results, left


async def _daemon_follows(
    store: CheckpointStore, path: Path, watch_dir: Path, extensions: tuple[str, ...]
) -> bool:
    from cefmp4.intake.discover import is_candidate

    if is_candidate(path, watch_dir, extensions):
        return True
    try:
        st = await asyncio.to_thread(path.stat)
    except OSError:
        return False  # reported as missing by the upload itself
    return any(
        r.device == st.st_dev and r.state in _LIVE_STATES
        for r in await store.find_by_inode(st.st_ino)
    )


class _Gone:
    """_completed_by_daemon: the lock's holder went away first."""


async def _completed_by_daemon(
    store: CheckpointStore, path: Path, state_dir: Path
) -> StreamRecord | _Gone | None:
    """The daemon's completed record of the file as it is now; None when the file is gone;
    ``_Gone`` when the lock's holder went away before completing it."""
    while True:
        try:
            st = await asyncio.to_thread(path.stat)
        except OSError:
            return None
        for record in reversed(await store.find_by_inode(st.st_ino)):
            if (record.state is StreamState.COMPLETED and record.device == st.st_dev
                    and record.final_size == st.st_size
                    and record.final_mtime_ns in (None, st.st_mtime_ns)):
                return record
        if await asyncio.to_thread(lock_holder, state_dir) is None:
            return _Gone()
        await asyncio.sleep(DAEMON_POLL_S)


# --- status --watch -------------------------------------------------------------------------

MIB = 1024 * 1024
_LIVE_STATES = frozenset({StreamState.ACTIVE, StreamState.FINALIZING})


@dataclass(frozen=True, slots=True)
class WatchRow:
    stream_id: str
    path: str
    state: str
    on_disk: int | None  # None: the file is gone (or unreadable)
    in_s3: int
    parts: int
    last_part_at: float | None


async def _watch_rows(store: CheckpointStore) -> list[WatchRow]:
    rows = []
    records = await store.list_streams(_LIVE_STATES)
    for rec in sorted(records, key=lambda r: r.started_at):
        parts = await store.get_parts(rec.stream_id)
        try:
            on_disk: int | None = os.stat(rec.path).st_size
        except (OSError, ValueError):
            on_disk = None
        rows.append(WatchRow(
            rec.stream_id, rec.path, rec.state.value, on_disk, sum(p.size for p in parts),
            len(parts), max((p.uploaded_at for p in parts), default=None),
        ))
    return rows


def _mib(n: int | None) -> str:
    return "gone" if n is None else f"{n / MIB:,.1f} MiB"


def watch_table(
    rows: Sequence[WatchRow], now: float, note: str = "", *, live: bool = False,
    uplink: Sequence[str] = (),
) -> Table:
    """The live view: per stream, bytes on disk vs in S3 and how far S3 is behind.
    ``live``: drawn on a terminal, where Ctrl-C is how it ends (said only there).
    ``uplink``: the limit in force and the backlog (§2.21), under the table."""
    from rich.table import Table

    from cefmp4.cli.status import redacted  # status imports rich: not on `upload`'s path

    table = Table(
        title=f"cefmp4 active streams ({len(rows)})",
        caption="\n".join([logs.redact(note) or f"{datetime.fromtimestamp(now):%H:%M:%S}"
                            + (" · Ctrl-C to stop" if live else ""), *uplink]),
        show_footer=bool(rows),
    )
    behind = [max(0, (r.on_disk or 0) - r.in_s3) for r in rows]
    id_width = max((len(r.stream_id) for r in rows), default=len("stream_id"))
    table.add_column("stream_id", "total", no_wrap=True, min_width=id_width)
    table.add_column("state", no_wrap=True)
    table.add_column("path", overflow="fold", min_width=16)
    table.add_column("on disk", _mib(sum(r.on_disk or 0 for r in rows)), justify="right",
                     no_wrap=True)
    table.add_column("in S3", _mib(sum(r.in_s3 for r in rows)), justify="right",
                     no_wrap=True)
    table.add_column("lag", _mib(sum(behind)), justify="right", no_wrap=True)
    table.add_column("parts", str(sum(r.parts for r in rows)), justify="right", no_wrap=True)
    table.add_column("last part", justify="right", no_wrap=True)
    for row, lag in zip(rows, behind, strict=True):
        last = "-" if row.last_part_at is None else f"{max(0.0, now - row.last_part_at):.0f}s ago"
        table.add_row(*redacted([
            row.stream_id, row.state, row.path, _mib(row.on_disk), _mib(row.in_s3),
            _mib(lag), str(row.parts), last,
        ]))
    return table


async def _watch(settings: Settings, console: Console, interval: float, count: int) -> None:
    from rich.live import Live

    from cefmp4.cli.uplink_view import streams_backlog, uplink_lines  # not on upload's path

    redis_mode = bool(settings.redis_url.get_secret_value())
    db = settings.state_dir / DB_NAME
    # On a terminal one table redrawn in place; piped, one table per refresh (logs, tests).
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    async with AsyncExitStack() as stack:
        if live is not None:
            stack.enter_context(live)
        store: CheckpointStore | None = None
        shown = 0
        while True:
            note = ""
            rows: list[WatchRow] = []
            try:
                if store is None and (redis_mode or db.exists()):
                    store = await stack.enter_async_context(
                        open_checkpoints(settings, read_only=True)
                    )
                if store is None:
                    note = f"no checkpoint store yet in STATE_DIR {settings.state_dir}"
                else:
                    rows = await asyncio.wait_for(_watch_rows(store), timeout=max(5, interval))
            except (CefmpError, TimeoutError) as exc:
                note = f"checkpoint store did not answer: {exc or 'timeout'}"
            now = time.time()
            backlog = streams_backlog([(r.path, r.in_s3) for r in rows], now,
                                      settings.stream_timeout_seconds)
            uplink = uplink_lines(settings, backlog, now, label="backlog of the open streams")
            table = watch_table(rows, now, note, live=live is not None, uplink=uplink)
            if live is not None:
                live.update(table, refresh=True)
            else:
                console.print(table)
            shown += 1
            if count and shown >= count:
                return
            await asyncio.sleep(interval)


def status_watch_command(settings: Settings, *, interval: float, count: int) -> int:
    if not interval > 0:
        raise ConfigError("--interval", "must be greater than 0")
    if count < 0:
        raise ConfigError("--count", "must not be negative")
    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))
    # Ctrl-C is how a live view ends. Python raises KeyboardInterrupt only when SIGINT was
    # not ignored at its start; a shell's background job (`cmd &` in a script) starts with
    # it ignored, and then `kill -INT` did nothing: install the handler ourselves.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_watch(settings, console, interval, count))
    return EXIT_OK
