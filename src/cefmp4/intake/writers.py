"""Who is writing a recording: close-write events and open-for-write descriptors (§2.14).

Two signals, both Linux-only and both optional:

* **close-write**: inotify ``IN_CLOSE_WRITE`` on each followed file, through
  ``asyncinotify`` (maintained, typed, no C extension: it calls libc through ctypes and plugs
  the inotify descriptor into the event loop; ``watchfiles`` does not surface close events,
  and ``aionotify`` has had no release since 2024). A file watch follows the inode, so a
  rename keeps it. It sees writers in every PID namespace of this kernel, not on NFS peers.
* **open-for-write**: ``/proc/<pid>/fd/*`` whose target is the file (same device and inode)
  and whose ``/proc/<pid>/fdinfo/<n>`` flags have ``O_WRONLY`` or ``O_RDWR``. Visible only
  for processes of this PID namespace that we may inspect (same user, or root).

``cefmp4.streams.writer_policy`` turns them into a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import re
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from cefmp4.core.identity import Ident

if TYPE_CHECKING:
    from asyncinotify import Inotify, Watch

log = structlog.get_logger("cefmp4.intake.writers")


_ACCMODE = os.O_ACCMODE if hasattr(os, "O_ACCMODE") else 3
_WRITE_MODES = (os.O_WRONLY, os.O_RDWR)
# Link targets that are never a regular file: skipping them spares a stat per descriptor.
_NOT_FILES = ("socket:", "pipe:", "anon_inode:", "/dev/", "/proc/", "/sys/")
# A scan is shared by every stream asking within this long (one walk of /proc per second).
SCAN_CACHE_S = 1.0
# Bound on descriptors examined per scan, so a host with a million open files cannot make
# one scan take minutes; past it the scan says "unknown" and the idle timeout rules.
MAX_FDS_PER_SCAN = 200_000


# --- open-for-write: /proc ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ScanResult:
    """Writers per wanted file; ``complete`` is False when part of /proc could not be read
    (another user's processes) or the scan was cut short."""

    writers: dict[Ident, frozenset[int]]
    complete: bool
    processes: int
    unreadable: int


def _write_flags(fdinfo: Path) -> bool | None:
    try:
        text = fdinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags:"):
            try:
                flags = int(line.split(":", 1)[1].strip(), 8)
            except ValueError:
                return None
            return (flags & _ACCMODE) in _WRITE_MODES
    return None


def _fd_target(fd_path: str) -> Ident | None:
    """(device, inode) of what a /proc fd link points at, if it may be a regular file."""
    try:
        if os.readlink(fd_path).startswith(_NOT_FILES):
            return None
        st = os.stat(fd_path)  # follows the magic link: works for deleted files too
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def scan_writers(wanted: Iterable[Ident], proc: Path = Path("/proc")) -> ScanResult:
    """Blocking walk of ``proc``: which processes hold each wanted file open for writing.

    Run it in a thread. Processes and descriptors that vanish mid-walk are skipped.
    """
    found: dict[Ident, set[int]] = {t: set() for t in wanted}
    processes = unreadable = examined = 0
    try:
        pids = [e for e in os.scandir(proc) if e.name.isdigit()]
    except OSError:
        return ScanResult({}, False, 0, 0)
    for entry in pids:
        processes += 1
        try:
            fds = list(os.scandir(os.path.join(entry.path, "fd")))
        except PermissionError:
            unreadable += 1
            continue
        except OSError:
            continue  # exited meanwhile
        examined += len(fds)
        if examined > MAX_FDS_PER_SCAN:
            return ScanResult({k: frozenset(v) for k, v in found.items()}, False, processes,
                              unreadable)
        for fd in fds:
            ident = _fd_target(fd.path)
            if ident in found and _write_flags(Path(entry.path) / "fdinfo" / fd.name):
                found[ident].add(int(entry.name))
    return ScanResult(
        {k: frozenset(v) for k, v in found.items()}, not unreadable, processes, unreadable
    )


class WriterScanner:
    """Off-loop, shared and rate-limited /proc scans for every stream that asks."""

    def __init__(
        self,
        proc: Path = Path("/proc"),
        *,
        cache_s: float = SCAN_CACHE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc = proc
        self.cache_s = cache_s
        self.clock = clock
        self._wanted: dict[Ident, int] = {}
        self._last: tuple[float, ScanResult] | None = None
        self._lock = asyncio.Lock()
        self.scans = 0

    @property
    def available(self) -> bool:
        return os.path.isdir(self.proc / "self" / "fd")

    async def writers_of(self, ident: Ident) -> frozenset[int] | None:
        """PIDs holding ``ident`` open for writing; None when we cannot tell."""
        self._wanted[ident] = self._wanted.get(ident, 0) + 1
        try:
            async with self._lock:  # one scan at a time; latecomers reuse its result
                last = self._last
                fresh = (
                    last is not None
                    and self.clock() - last[0] < self.cache_s
                    and ident in last[1].writers
                )
                if not fresh:
                    wanted = set(self._wanted)
                    result = await asyncio.to_thread(scan_writers, wanted, self.proc)
                    self.scans += 1
                    self._last = last = (self.clock(), result)
                assert last is not None
        finally:
            self._wanted[ident] -= 1
            if not self._wanted[ident]:
                del self._wanted[ident]
        pids = last[1].writers.get(ident)
        if pids:
            return pids  # a visible writer is a certainty, whatever else we cannot see
        if pids is None or not self.available:
            return None
        return pids


# --- close-write: inotify -----------------------------------------------------------------


class CloseWatcher:
    """Per-file ``IN_CLOSE_WRITE`` watches; ``closed_at`` tells when a writer last closed."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._inotify: Inotify | None = None
        self._watches: dict[Ident, Watch] = {}
        self._by_wd: dict[int, Ident] = {}
        self._closed: dict[Ident, float] = {}
        self._listeners: dict[Ident, Callable[[], None]] = {}
        self.error: str | None = None

    def start(self) -> bool:
        """Open the inotify instance; False (with ``error``) where inotify is unavailable."""
        try:
            from asyncinotify import Inotify

            self._inotify = Inotify()
        except (ImportError, OSError, TypeError, AttributeError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        return True

    @property
    def available(self) -> bool:
        return self._inotify is not None

    def watch(self, ident: Ident, path: str, on_close: Callable[[], None]) -> bool:
        """Watch the file now at ``path`` (which must still be ``ident``)."""
        if self._inotify is None:
            return False
        from asyncinotify import Mask

        try:
            st = os.stat(path)
            if (st.st_dev, st.st_ino) != ident:
                return False
            w = self._inotify.add_watch(path, Mask.CLOSE_WRITE)
        except OSError as exc:
            log.debug("close_watch_failed", path=path, error=str(exc))
            return False
        self._watches[ident] = w
        self._by_wd[w.wd] = ident
        self._listeners[ident] = on_close
        return True

    def unwatch(self, ident: Ident) -> None:
        w = self._watches.pop(ident, None)
        self._listeners.pop(ident, None)
        self._closed.pop(ident, None)
        if w is None or self._inotify is None:
            return
        self._by_wd.pop(w.wd, None)
        with contextlib.suppress(OSError, ValueError, KeyError):
            self._inotify.rm_watch(w)

    def closed_at(self, ident: Ident) -> float | None:
        return self._closed.get(ident)

    def note_close(self, ident: Ident) -> None:
        """A writer closed the file (from an event; tests may call it directly)."""
        self._closed[ident] = self.clock()
        listener = self._listeners.get(ident)
        if listener is not None:
            listener()

    async def run(self) -> None:
        """Deliver events until cancelled (a supervised background task)."""
        if self._inotify is None:
            return
        from asyncinotify import Mask

        async for event in self._inotify:
            if Mask.Q_OVERFLOW in event.mask:
                log.warning("close_events_overflowed")  # the idle timeout still rules
                continue
            watch = event.watch
            if watch is None or Mask.CLOSE_WRITE not in event.mask:
                continue
            ident = self._by_wd.get(watch.wd)
            if ident is not None:
                self.note_close(ident)

    def close(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None


# --- proof that nobody writes: for destructive actions (§2.25) ----------------------------
#
# "No writer seen" is not evidence: a recorder in another PID namespace (a container), of
# another user, or on another host is invisible to /proc. The kernel itself knows: it grants
# a read lease (F_SETLEASE F_RDLCK) only while no descriptor anywhere on this kernel (any
# namespace, any user) holds the file open for writing, and while the lease is held an open
# for writing must break it first (the opener waits until we let go). So a held lease is the
# proof, and holding it across the destructive step closes the check-then-act race. It is
# proof only where this kernel sees every writer: a local file system, not NFS/SMB/FUSE.

_PROC_PID_INIT_INO = 0xEFFFFFFC  # the kernel's fixed inode of the initial PID namespace
_CAP_LEASE = 28
# File systems whose files only this kernel can write (no peer host): a lease here is final.
LOCAL_FILE_SYSTEMS = frozenset({
    "ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "ramfs", "zfs", "f2fs", "overlay",
    "bcachefs", "jfs", "reiserfs", "vfat", "exfat", "ntfs3", "hfsplus", "nilfs2",
})


class WriterOpen(Exception):
    """A process holds the file open for writing."""


class WritersUnseen(Exception):
    """Nobody can prove that no process holds the file open for writing."""


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def file_system_type(path: str | os.PathLike[str], proc: Path = Path("/proc")) -> str | None:
    """The type of the file system holding ``path`` (from mountinfo), or None if unknown."""
    try:
        real = os.path.realpath(path)
        lines = (proc / "self" / "mountinfo").read_text(errors="replace").splitlines()
    except OSError:
        return None
    best: tuple[int, str] | None = None
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail:
            continue
        point = _unescape_mount(fields[4])
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= best[0]):  # later mounts hide earlier
            best = (len(point), tail.split()[0])
    return None if best is None else best[1]


def _in_initial_pid_namespace(proc: Path) -> bool:
    try:
        return os.stat(proc / "self" / "ns" / "pid").st_ino == _PROC_PID_INIT_INO
    except OSError:
        return False


def _has_cap_lease(proc: Path) -> bool:
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> _CAP_LEASE & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _leases_enabled(proc: Path) -> bool:
    try:
        return (proc / "sys" / "fs" / "leases-enable").read_text().strip() != "0"
    except OSError:
        return True  # the lease call itself will tell


def _proc_fallback(ident: Ident, proc: Path) -> str | None:
    """No lease: a complete /proc walk from the host's PID namespace still proves it (None),
    with no hold against a later open; else why not."""
    if not _in_initial_pid_namespace(proc):
        return ("no lease, and cefmp4 runs in its own PID namespace: writers in other "
                "namespaces are invisible")
    result = scan_writers([ident], proc)
    if result.writers.get(ident):
        raise WriterOpen("a process holds the file open for writing")
    if not result.complete:
        return (f"no lease, and {result.unreadable} of {result.processes} processes cannot "
                "be inspected in /proc")
    return None


class NoWriterProof:
    """``with NoWriterProof(fd, path):`` — inside, no process holds the file open for
    writing, or the ``with`` raised :class:`WriterOpen` / :class:`WritersUnseen`.
    ``holds()`` tells whether that is still so (an open for writing breaks the lease)."""

    def __init__(self, fd: int, path: str, proc: Path = Path("/proc")) -> None:
        self.fd = fd
        self.path = path
        self.proc = proc
        self._leased = False

    def __enter__(self) -> NoWriterProof:
        fs = file_system_type(self.path, self.proc)
        if fs not in LOCAL_FILE_SYSTEMS:
            raise WritersUnseen(
                f"the file system is {fs or 'unknown'}: writers on other hosts cannot be seen")
        try:
            # A lease break is signalled to the holder, SIGIO by default, whose default action
            # ends the process: SIGURG's default is to ignore it, and holds() reads the state.
            fcntl.fcntl(self.fd, fcntl.F_SETSIG, signal.SIGURG)
            fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                raise WriterOpen("a process holds the file open for writing") from None
            st = os.fstat(self.fd)
            if (why := _proc_fallback((st.st_dev, st.st_ino), self.proc)) is not None:
                raise WritersUnseen(f"{why}; the kernel refused a lease ({exc.strerror}: "
                                    "run as the file's owner or grant CAP_LEASE)") from None
            return self
        self._leased = True
        return self

    def holds(self) -> bool:
        if not self._leased:
            return True
        try:
            return fcntl.fcntl(self.fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK
        except OSError:
            return False

    def __exit__(self, *_exc: object) -> None:
        if self._leased:
            self._leased = False
            with contextlib.suppress(OSError):
                fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def no_writer_now(fd: int, path: str, proc: Path = Path("/proc")) -> str | None:
    """None when no process holds the file open for writing right now, else why that is
    not proven. Blocking (a lease call, or a /proc walk where the lease is not ours to
    take): run it in a thread.

    The lease is given back at once: completing a stream needs the fact, not a hold
    against a later open (a writer that reopens the file changes it, and §2.3's
    verification and §2.4's new stream take it from there). An opener that meets the lease
    in that instant waits for the unlock, not for a lease break."""
    try:
        with NoWriterProof(fd, path, proc):
            return None
    except (WriterOpen, WritersUnseen) as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot ask: {exc.strerror or exc}"


async def prove_no_writer(fd: int, path: str) -> str | None:
    """:func:`no_writer_now` off the event loop."""
    return await asyncio.to_thread(no_writer_now, fd, path)


def visibility_problems(watch_dir: Path, proc: Path = Path("/proc")) -> list[str]:
    """Why cefmp4 may be unable to prove a file in ``watch_dir`` writer-free (empty: it can,
    for every file). For start-up advice and ``check``."""
    fs = file_system_type(watch_dir, proc)
    if fs not in LOCAL_FILE_SYSTEMS:
        return [f"WATCH_DIR is on a {fs or 'unknown'} file system: writers on other hosts "
                "cannot be seen"]
    if _leases_enabled(proc) and _has_cap_lease(proc):
        return []  # the kernel answers for every file
    if _in_initial_pid_namespace(proc):
        walk = scan_writers((), proc)
        if walk.complete:
            return []  # /proc shows every process of the host
        seen = f"{walk.unreadable} of {walk.processes} processes cannot be inspected in /proc"
    else:
        seen = "cefmp4 runs in its own PID namespace (writers in others are invisible)"
    if not _leases_enabled(proc):
        return [f"file leases are disabled (fs.leases-enable=0) and {seen}: no file can be "
                "proven writer-free; enable leases or run cefmp4 in the host's PID namespace"]
    return [f"cefmp4 (uid {os.geteuid()}) has no CAP_LEASE and {seen}: only files owned by "
            f"uid {os.geteuid()} can be proven writer-free; run cefmp4 as the recorders' "
            "user, or grant CAP_LEASE"]


# --- `cefmp4 check` -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SignalReport:
    close_events: str | None  # None = available; else why not
    open_writers: str | None
    note: str

    @property
    def lines(self) -> list[str]:
        return [
            "close-write events (inotify): "
            + ("available" if self.close_events is None else f"unavailable ({self.close_events})"),
            "open-for-write descriptors (/proc): "
            + ("available" if self.open_writers is None else f"unavailable ({self.open_writers})"),
            self.note,
        ]


def probe_signals(proc: Path = Path("/proc")) -> SignalReport:
    """Which writer signals this deployment has (blocking; for ``cefmp4 check``)."""
    closes = CloseWatcher()
    close_problem = None if closes.start() else (closes.error or "inotify not available")
    closes.close()
    open_problem: str | None = None
    if not (proc / "self" / "fd").is_dir():
        open_problem = f"{proc} is not mounted"
    else:
        result = scan_writers((), proc)
        if result.processes <= 1:
            open_problem = "only this process is visible (its own PID namespace?)"
        elif result.unreadable:
            open_problem = (
                f"{result.unreadable} of {result.processes} processes cannot be inspected "
                "(other users; run as the recorder's user or grant CAP_SYS_PTRACE); "
                "writers among them are not seen"
            )
    note = (
        "recorders on other hosts (NFS/SMB) or in other PID namespaces are invisible to "
        "/proc: for them the idle timeout (STREAM_TIMEOUT_SECONDS) rules"
    )
    return SignalReport(close_problem, open_problem, note)
