"""The recorders' side: real files in a temporary directory, and a model of what they held.

A *recording* is one file (one inode) from creation to deletion or replacement. Its bytes
change by appends (no snapshot needed: old bytes stay) and by destructive steps — rewrite,
truncate, faststart — before each of which the whole content is snapshotted. Any range the
file ever held is therefore a range of some snapshot (or of the final content), which is
what the invariants compare objects with.
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.sim.schedule import Action


@dataclass
class End:
    """A step that ends a stream with what was uploaded: truncate, delete, replace."""

    kind: str  # truncated | deleted | replaced
    version: int | None  # the snapshot it ends (None: the recording's final content)
    at: float
    held_open: bool  # a worker held the file open when it happened
    streams: frozenset[str]  # unfinished streams of the file at that moment
    required: int = 0  # bytes the ending object must hold at least
    uploads: set[str] = field(default_factory=set)  # the streams' upload ids when it mattered
    regrown_at: float | None = None  # (truncated) when the file again held ``required`` bytes
    held_since: float | None = None  # (truncated) a worker has held the short file since
    observed: bool = False  # (truncated) ... long enough to notice the truncation
    crashed_after: bool = False
    size: int = 0  # the file's size just after the step


@dataclass
class Recording:
    rid: int
    slot: int
    path: Path
    fd: int
    inode: int
    content: bytearray
    versions: list[bytes] = field(default_factory=list)
    history: list[tuple[int, int]] = field(default_factory=list)  # (version, size) seen
    ends: list[End] = field(default_factory=list)
    # Truncations that left every durable byte in the file when they happened (not judged
    # unless a stream's checkpoint later says it ended by one: see ``Simulation``).
    unseen: list[End] = field(default_factory=list)
    live: bool = True  # still at a path under the watch directory
    writing: bool = True  # the recorder still writes to it (False once replaced)
    lost: bool = False  # its host was lost (issue #25): the file is gone with it

    def snapshot(self) -> int:
        self.versions.append(bytes(self.content))
        return len(self.versions) - 1

    def final_versions(self) -> list[bytes]:
        return [*self.versions, bytes(self.content)]


class Files:
    """Applies actions to real files, keeps the model, stamps virtual mtimes."""

    def __init__(self, watch: Path, seed: int, wall: Callable[[], float]) -> None:
        self.watch = watch
        self.wall = wall
        self.rng = random.Random(f"{seed}-bytes")
        self.recordings: list[Recording] = []
        self.by_slot: dict[int, Recording] = {}
        self.on_end: Callable[[Recording, End], None] | None = None  # fills in ``End``

    def _bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def _stamp(self, rec: Recording) -> None:
        ns = int(self.wall() * 1e9)
        os.utime(rec.fd, ns=(ns, ns))
        rec.history.append((len(rec.versions), len(rec.content)))

    def _new(self, slot: int, rel: str, data: bytes, *, via: Path | None = None) -> Recording:
        path = self.watch / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        target = via or path
        fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        os.pwrite(fd, data, 0)
        rec = Recording(len(self.recordings), slot, path, fd, os.fstat(fd).st_ino, bytearray(data))
        self.recordings.append(rec)
        self.by_slot[slot] = rec
        self._stamp(rec)
        if via is not None:
            os.replace(via, path)
        return rec

    def apply(
        self, action: Action, end: Callable[[Recording, str, int | None], None]
    ) -> list[Path]:
        """Do ``action``; returns the paths a watcher would report."""
        rec = self.by_slot.get(action.slot)
        kind = action.kind
        if kind in ("create", "copy_in"):
            # A header of the slot number keeps every recording's bytes distinct.
            data = f"rec{len(self.recordings):04d}".encode() + self._bytes(action.size)
            return [self._new(action.slot, action.name, data).path]
        if rec is None:
            return []
        if kind == "append":
            os.pwrite(rec.fd, data := self._bytes(action.size), len(rec.content))
            rec.content += data
        elif kind == "rewrite":
            offset = min(action.offset, max(0, len(rec.content) - 1))
            data = self._bytes(min(action.size, len(rec.content) - offset))
            rec.snapshot()
            os.pwrite(rec.fd, data, offset)
            rec.content[offset : offset + len(data)] = data
        elif kind == "faststart":
            data = f"rec{rec.rid:04d}".encode() + self._bytes(action.size)
            rec.snapshot()
            os.pwrite(rec.fd, data, 0)
            if len(data) < len(rec.content):
                os.ftruncate(rec.fd, len(data))
            rec.content = bytearray(data)
        elif kind == "truncate":
            version = rec.snapshot()
            os.ftruncate(rec.fd, action.size)
            del rec.content[action.size :]
            end(rec, "truncated", version)
        elif kind == "rename":
            if not rec.live:
                return []
            new = self.watch / action.name
            new.parent.mkdir(parents=True, exist_ok=True)
            os.rename(rec.path, new)
            old, rec.path = rec.path, new
            return [old, new]
        elif kind == "delete":
            if not rec.live:
                return []
            os.unlink(rec.path)
            rec.live = False
            end(rec, "deleted", None)
            return [rec.path]
        elif kind == "replace":
            if not rec.live:
                return []
            rec.live = rec.writing = False
            end(rec, "replaced", None)
            os.close(rec.fd)
            data = f"rec{len(self.recordings):04d}".encode() + self._bytes(action.size)
            tmp = rec.path.parent / f".{rec.path.name}.tmp"  # hidden: the watcher ignores it
            rel = str(rec.path.relative_to(self.watch))
            return [self._new(action.slot, rel, data, via=tmp).path]
        self._stamp(rec)
        return [rec.path] if rec.live else []

    def close(self) -> None:
        for rec in self.recordings:
            if rec.writing:
                os.close(rec.fd)
                rec.writing = False


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
