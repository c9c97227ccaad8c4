"""Finding recordings under WATCH_DIR: a startup scan and a file-system watch (§2.1).

Three layers, cheapest first:

* :func:`is_candidate` looks at the name only (``*.mp4`` in any case, no hidden part,
  inside the watch dir). It runs on every raw event, so it touches no disk.
* :func:`check_file` asks the file system whether a candidate is something to upload: a
  regular file, or a symlink whose target is a regular file inside the watch dir.
* :func:`scan` and :func:`watch` produce paths. Both only *nominate* paths: callers re-stat
  (and use :mod:`cefmp4.identity`) rather than trusting event kinds, because events are
  coalesced, reordered by the debounce, and a rename arrives as a delete plus an add.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import watchfiles

from cefmp4.containers import DEFAULT_EXTENSIONS, has_extension

# Recorders append continuously; the watcher hands over a batch once no event arrived for
# ``step_ms`` or ``debounce_ms`` passed, so new bytes are seen within ~0.1 s.
DEFAULT_DEBOUNCE_MS = 50
DEFAULT_STEP_MS = 25
# Polling (NFS, SMB, some container volumes) re-lists the tree every time: keep it modest.
POLL_DELAY_MS = 300


def _is_hidden(name: str) -> bool:
    # "." and ".." count as hidden too, so lexical escapes ("a/../../x.mp4") are rejected.
    return name.startswith(".")


def is_candidate(
    path: Path, watch_dir: Path, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> bool:
    """Whether ``path`` is named like a recording we upload. Pure: no file-system access.

    Accepts names ending in one of ``extensions`` (lower-case, from WATCH_EXTENSIONS; any
    case in the name), inside ``watch_dir``, with no hidden component below ``watch_dir``
    (hidden files are recorders' temporaries; hidden dirs are tool state).
    Both paths are compared as given, so pass them in the same form (both absolute).
    """
    if not has_extension(path.name, extensions):
        return False
    try:
        parts = path.relative_to(watch_dir).parts
    except ValueError:
        return False
    return bool(parts) and not any(_is_hidden(part) for part in parts)


def _inside(path: str, root: str) -> bool:
    """Whether the real path ``path`` lies strictly below the real path ``root``."""
    return os.path.commonpath([path, root]) == root and path != root


def _real_parent(path: Path, watch_dir: Path) -> bool:
    """Whether no directory between ``watch_dir`` and ``path`` is a symlink.

    The OS watcher follows symlinked directories, so without this check a link to
    ``/elsewhere`` inside the watch dir would nominate files outside it, and a link to a
    sibling directory would nominate every file twice. :func:`scan` never enters symlinked
    directories; this keeps the watch consistent with it.
    """
    try:
        relative = path.parent.relative_to(watch_dir)
        root = os.path.realpath(watch_dir, strict=True)
        parent = os.path.realpath(path.parent, strict=True)
    except (ValueError, OSError, RuntimeError):
        return False
    return parent == os.path.normpath(os.path.join(root, relative))


def check_file(path: Path, watch_dir: Path) -> os.stat_result | None:
    """The stat of a candidate that is really a file to upload, else None.

    A regular file gives its own stat. A symlink is followed only when its target is a
    regular file inside ``watch_dir`` (after resolving both), and gives the target's stat, so
    the stream's identity is the file the recorder writes. Directories (even ones named
    ``x.mp4``), fifos, sockets, missing paths, dangling links, links pointing outside the
    watch dir, and anything reached through a symlinked directory give None. The result is
    a snapshot: the file may change right after.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        return None
    if not _real_parent(path, watch_dir):
        return None
    return st if stat.S_ISREG(st.st_mode) else _follow_link(path, watch_dir)


def _follow_link(link: Path, watch_dir: Path) -> os.stat_result | None:
    """The stat of a symlink's target when it is a regular file inside the watch dir."""
    try:
        target = os.path.realpath(link, strict=True)
        root = os.path.realpath(watch_dir, strict=True)
        target_st = os.stat(target)
    except (OSError, RuntimeError):  # dangling, a loop, or gone meanwhile
        return None
    if not _inside(target, root) or not stat.S_ISREG(target_st.st_mode):
        return None
    return target_st


def _walk(
    top: Path, watch_dir: Path, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
) -> Iterator[Path]:
    """Candidate files under ``top`` (a directory inside ``watch_dir``), in no order.

    Iterative, ``os.scandir``-based: directory entries carry their type, so a tree of
    thousands of files costs one ``scandir`` per directory plus a stat per symlink only.
    Hidden directories and symlinked directories are not entered (a link could point
    outside the tree or back into it, making a cycle). Unreadable directories are skipped:
    one bad subdirectory must not stop discovery of everything else.
    """
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if _is_hidden(entry.name):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                        continue
                    path = Path(entry.path)
                    if not is_candidate(path, watch_dir, extensions):
                        continue
                    if entry.is_file(follow_symlinks=False) or (
                        entry.is_symlink() and check_file(path, watch_dir) is not None
                    ):
                        yield path
        except OSError:
            continue


def scan(watch_dir: Path, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS) -> list[Path]:
    """Every candidate file under ``watch_dir`` that :func:`check_file` accepts, sorted.

    Blocking: from async code, run it with ``asyncio.to_thread(scan, watch_dir)``. A file
    that appears between the scan and the start of :func:`watch` is nominated on its next
    write; a file that is never written again after that window is found by the next scan.
    """
    return sorted(_walk(watch_dir, watch_dir, extensions))


def _wanted(
    change: watchfiles.Change, raw_path: str, watch_dir: Path,
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
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
    if any(_is_hidden(part) for part in relative.parts):
        return False
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _nominate(
    raw_path: str, watch_dir: Path, extensions: tuple[str, ...] = DEFAULT_EXTENSIONS
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
        return list(_walk(path, watch_dir, extensions))
    if is_candidate(path, watch_dir, extensions) and check_file(path, watch_dir) is not None:
        return [path]
    return []


def _nominate_all(
    changes: set[tuple[watchfiles.Change, str]], watch_dir: Path,
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
) -> set[Path]:
    nominated: set[Path] = set()
    for _change, raw_path in changes:
        nominated.update(_nominate(raw_path, watch_dir, extensions))
    return nominated


async def watch(
    watch_dir: Path,
    stop_event: asyncio.Event,
    *,
    force_polling: bool = False,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    step_ms: int = DEFAULT_STEP_MS,
    extensions: tuple[str, ...] = DEFAULT_EXTENSIONS,
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
    """
    watch_dir = Path(os.path.abspath(watch_dir))  # noqa: ASYNC240  (one getcwd, once)

    def watch_filter(change: watchfiles.Change, raw_path: str) -> bool:
        return _wanted(change, raw_path, watch_dir, extensions)

    changes_iter = watchfiles.awatch(
        watch_dir,
        watch_filter=watch_filter,
        debounce=debounce_ms,
        step=step_ms,
        stop_event=stop_event,
        force_polling=force_polling,
        poll_delay_ms=POLL_DELAY_MS,
        recursive=True,
        # A subdirectory the daemon may not read must not take discovery down with it.
        ignore_permission_denied=True,
    )
    async with contextlib.aclosing(changes_iter):
        async for changes in changes_iter:
            # Off the event loop: a directory moved in may hold thousands of files to walk.
            nominated = await asyncio.to_thread(_nominate_all, changes, watch_dir, extensions)
            if nominated:
                yield nominated
