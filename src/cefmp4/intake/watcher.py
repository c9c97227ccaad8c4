"""The file-system watch under WATCH_DIR (§2.1), restarted whenever it fails: watchfiles
stops for good on a name that is not UTF-8 or an OS watcher error, and a discovery that
stops in silence would lose every later recording. What counts as a recording, and the
scans it starts from, are :mod:`cefmp4.intake.discover`'s."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
import watchfiles

from cefmp4.core.containers import DEFAULT_EXTENSIONS
from cefmp4.intake.discover import (
    NOT_REGULAR,
    NOTICES,
    Exts,
    Notices,
    check_file,
    full_scan,
    is_candidate,
    is_hidden,
    walk,
)
from cefmp4.runtime import logs
from cefmp4.runtime.readiness import Readiness

log = structlog.get_logger(__name__)

# Recorders append continuously; the watcher hands over a batch once no event arrived for
# ``step_ms`` or ``debounce_ms`` passed, so new bytes are seen within ~0.1 s.
DEFAULT_DEBOUNCE_MS = 50
DEFAULT_STEP_MS = 25
# Polling (NFS, SMB, some container volumes) re-lists the tree every time: keep it modest.
POLL_DELAY_MS = 300
# Restarting a failed watcher: at once the first time, then 0.5 s, 1 s, ... up to the cap
# while it keeps failing (a recorder writing a file whose name is not UTF-8 fails it on
# every write); a watcher that ran this long before failing counts as healthy again.
RESTART_DELAY_STEP = 0.5
MAX_RESTART_DELAY = 30.0
HEALTHY_RUN_SECONDS = 60.0
_UNDECODABLE = "Unable to decode path"
WATCHER = "watcher"  # the component name in Readiness


def _wanted(
    change: watchfiles.Change, raw_path: str, watch_dir: Path,
    extensions: Exts = DEFAULT_EXTENSIONS,
) -> bool:
    """The watchfiles filter: candidates, plus directories that just appeared.

    A directory created or moved into the tree may already hold recordings whose own
    events were never seen (the watch on the new directory is added after it appears, and a
    moved-in directory produces only its own event), so it must get through to be scanned.
    Only ``added`` events of non-candidates pay for a stat; appends to a noisy log file
    next to the recordings are dropped without touching the disk.
    """
    path = Path(raw_path)
    if is_candidate(path, watch_dir, extensions):
        return True
    if change != watchfiles.Change.added:
        return False
    try:
        relative = path.relative_to(watch_dir)
    except ValueError:
        return False
    if any(is_hidden(part) for part in relative.parts):
        return False
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _nominate(
    raw_path: str, watch_dir: Path, notices: Notices, extensions: Exts = DEFAULT_EXTENSIONS
) -> list[Path]:
    """The paths one filtered event stands for (re-checked now, not as the event said)."""
    path = Path(raw_path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        # Gone (deleted, renamed away): still news for the stream that follows it.
        return [path] if is_candidate(path, watch_dir, extensions) else []
    except OSError:
        return []
    if stat.S_ISDIR(st.st_mode):
        return [Path(e.path) for e in walk(path, watch_dir, notices, extensions=extensions)]
    if not is_candidate(path, watch_dir, extensions):
        return []
    if check_file(path, watch_dir) is not None:
        return [path]
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        notices.skip(raw_path, NOT_REGULAR)
    return []


def _nominate_all(
    changes: set[tuple[watchfiles.Change, str]], watch_dir: Path, notices: Notices,
    extensions: Exts = DEFAULT_EXTENSIONS,
) -> set[Path]:
    nominated: set[Path] = set()
    for _change, raw_path in changes:
        nominated.update(_nominate(raw_path, watch_dir, notices, extensions))
    return nominated


class _Stop:
    """The stop event handed to watchfiles: set by the caller's event, by a change in the
    unreadable directories (restart with new roots), or by watchfiles itself on cancel.
    watchfiles polls ``is_set`` from its thread every ``step_ms``."""

    def __init__(self, outer: asyncio.Event, notices: Notices) -> None:
        self._outer = outer
        self._notices = notices
        self._generation = notices.generation
        self._set = False

    def is_set(self) -> bool:
        return self._set or self._outer.is_set() or self._notices.generation != self._generation

    def set(self) -> None:
        self._set = True


def _watch_roots(
    watch_dir: Path, notices: Notices, extensions: Exts = DEFAULT_EXTENSIONS
) -> tuple[list[str], list[Path]]:
    """(files now, roots to watch). The inotify backend adds its recursive watches in one
    walk that gives up at the first directory it may not read (EACCES), leaving the
    directories after it unwatched; so with unreadable directories about, every readable
    directory is a root of its own (a directory watched twice is one watch)."""
    files, directories = full_scan(watch_dir, notices, extensions)
    if os.fspath(watch_dir) in notices.unreadable:
        # watchfiles ignores a root it cannot watch (ignore_permission_denied covers every
        # error), which would be a watcher that silently sees nothing.
        raise FileNotFoundError(f"the watch directory cannot be read: {watch_dir}")
    if not notices.unreadable:
        return files, [watch_dir]
    return files, directories


async def watch(
    watch_dir: Path,
    stop_event: asyncio.Event,
    *,
    force_polling: bool = False,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    step_ms: int = DEFAULT_STEP_MS,
    notices: Notices | None = None,
    max_restart_delay: float = MAX_RESTART_DELAY,
    readiness: Readiness | None = None,
    extensions: Exts = DEFAULT_EXTENSIONS,
) -> AsyncIterator[set[Path]]:
    """Yield sets of candidate paths that changed under ``watch_dir`` until ``stop_event``.

    A path is nominated when it was added, modified or deleted; when a directory appears,
    every candidate already inside it is nominated as well. Paths that still exist have
    passed :func:`check_file`; paths that no longer exist are nominated too (the stream
    following that file must hear of it). Callers re-stat: the event kind is not passed on.

    ``watch_dir`` is made absolute (not resolved): yielded paths are below it as given, so
    callers can compute keys relative to the same value. It must exist. Stops within about
    ``step_ms`` of ``stop_event`` being set; cancelling the consumer also stops the watcher
    thread.

    The watcher survives what would end it: watchfiles stops for good on an event whose
    path is not valid UTF-8 (``WatchfilesRustInternalError: Unable to decode path``) and on
    errors of the OS watcher (a watch limit, the queue overflowing). Each time, the watcher
    is restarted, after a delay that grows from 0 to ``max_restart_delay`` while the
    failures repeat, and the first batch after a restart is a full scan, so that no file
    created meanwhile is lost. Such files themselves are skipped with one warning each (see
    :func:`scan`). The watcher also restarts when a scan finds that the set of unreadable
    directories changed, so that a directory that became readable is watched. While it
    waits to restart after repeated failures, ``readiness`` reports the component
    ``watcher`` as failing (``/readyz`` 503: discovery rests on the rescan meanwhile).
    """
    watch_dir = Path(os.path.abspath(watch_dir))  # noqa: ASYNC240  (one getcwd, once)
    notices = notices or NOTICES
    failures = 0
    restarted = False
    reported: set[str] = set()
    while not stop_event.is_set():
        started = time.monotonic()
        try:
            files, roots = await asyncio.to_thread(_watch_roots, watch_dir, notices, extensions)
            if readiness is not None:
                readiness.ok(WATCHER)
            if restarted and files:
                yield {Path(file) for file in files}
            async for nominated in _watch_once(
                watch_dir, roots, _Stop(stop_event, notices), notices,
                force_polling=force_polling, debounce_ms=debounce_ms, step_ms=step_ms,
                extensions=extensions,
            ):  # fmt: skip
                yield nominated
        except Exception as caught:  # watchfiles raises its own and OS errors; none may end us
            exc = _leaf(caught)
            message = str(exc) or type(exc).__name__
            if time.monotonic() - started > HEALTHY_RUN_SECONDS:
                failures = 0
            failures += 1
            # A name that is not UTF-8 is warned about by the scan that follows; anything
            # else once per distinct message.
            first_time = message not in reported and not message.startswith(_UNDECODABLE)
            reported.add(message)
            (log.warning if first_time else log.info)(
                logs.WATCHER_RESTARTED, error_class=type(exc).__name__, error=message,
                failures=failures,
            )  # fmt: skip
            delay = min(max_restart_delay, RESTART_DELAY_STEP * 2 ** (failures - 2))
            if failures > 1:
                if readiness is not None:
                    readiness.fail(WATCHER, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_event.wait(), delay)
        restarted = True


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside anyio's task-group wrapping."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _watch_once(
    watch_dir: Path, roots: list[Path], stop: _Stop, notices: Notices, *,
    force_polling: bool, debounce_ms: int, step_ms: int, extensions: Exts,
) -> AsyncIterator[set[Path]]:  # fmt: skip
    """One watchfiles watcher on ``roots`` until ``stop`` is set or it fails."""

    def watch_filter(change: watchfiles.Change, raw_path: str) -> bool:
        return _wanted(change, raw_path, watch_dir, extensions)

    changes_iter = watchfiles.awatch(
        *roots,
        watch_filter=watch_filter,
        debounce=debounce_ms,
        step=step_ms,
        stop_event=stop,
        force_polling=force_polling,
        poll_delay_ms=POLL_DELAY_MS,
        recursive=True,
        # A subdirectory the daemon may not read must not take discovery down with it.
        ignore_permission_denied=True,
    )
    async with contextlib.aclosing(changes_iter):
        async for changes in changes_iter:
            # Off the event loop: a directory moved in may hold thousands of files to walk.
            nominated = await asyncio.to_thread(
                _nominate_all, changes, watch_dir, notices, extensions
            )
            if nominated:
                yield nominated
