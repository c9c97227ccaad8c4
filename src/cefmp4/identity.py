"""Which file a stream follows, and how it changed between two looks (§2.4).

A stream follows the file, not the name: identity is (device, inode). Size and mtime tell
how the same file changed since the last look. The caller stats; this module only compares.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What one ``stat`` of a source file says about it."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> FileIdentity:
        return cls(device=st.st_dev, inode=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns)

    def same_file(self, other: FileIdentity) -> bool:
        """True when both describe the same file (device and inode), whatever its contents."""
        return self.device == other.device and self.inode == other.inode


class Change(StrEnum):
    """How a file changed between two looks, from the stream's point of view."""

    UNCHANGED = "unchanged"
    GROWN = "grown"
    REWRITTEN = "rewritten"  # same size, newer mtime: bytes already written were patched
    TRUNCATED = "truncated"  # same file, smaller
    REPLACED = "replaced"  # a different inode now sits at the path
    DELETED = "deleted"  # nothing at the path any more


def classify(old: FileIdentity, new: FileIdentity | None) -> Change:
    """Compare the last known state of a file with a fresh look at the same path.

    ``new`` is None when the path no longer exists. Growth wins over an mtime change (a
    growing file always has a newer mtime); rewrites inside a grown file are found later by
    the per-part verification at completion (§2.3), not here.
    """
    if new is None:
        return Change.DELETED
    if not old.same_file(new):
        return Change.REPLACED
    if new.size < old.size:
        return Change.TRUNCATED
    if new.size > old.size:
        return Change.GROWN
    if new.mtime_ns != old.mtime_ns:
        return Change.REWRITTEN
    return Change.UNCHANGED
