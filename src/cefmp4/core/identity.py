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


# --- the questions the pipeline asks, all answered here -----------------------------------

Ident = tuple[int, int]
"""(device, inode): the key of a file while this process runs."""

Fingerprint = tuple[int, int, int]
"""(size, mtime_ns, ctime_ns): any write to the file changes it (once settled, §2.3)."""


def ident_of(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino)


def fingerprint(st: os.stat_result) -> Fingerprint:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def same_inode(inode: int, st: os.stat_result) -> bool:
    """Whether ``st`` is the file of a stream recorded with ``inode``. By inode only: on
    a shared volume each host sees its own device number."""
    return st.st_ino == inode


def unchanged_since(final_size: int | None, final_mtime_ns: int | None,
                    st: os.stat_result) -> bool:
    """A completed stream's file still holds what was uploaded: never upload it again."""
    return st.st_size == final_size and st.st_mtime_ns == final_mtime_ns


def truncated(st: os.stat_result, uploaded_extent: int) -> bool:
    """Bytes already uploaded are gone from the file (a truncate or an in-place rewrite)."""
    return st.st_size < uploaded_extent


def end_of_source(held: os.stat_result, at_path: os.stat_result | None) -> Change:
    """What became of the file a stream holds open, given what its path shows now.

    DELETED: unlinked, nothing (or only it) at the path; REPLACED: unlinked and another
    file at the path; UNCHANGED: still linked (a rename keeps the stream).
    """
    if held.st_nlink > 0:
        return Change.UNCHANGED
    if at_path is None:
        return Change.DELETED
    if ident_of(at_path) != ident_of(held):
        return Change.REPLACED
    return Change.DELETED
