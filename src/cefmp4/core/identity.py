"""Which file a stream follows, and whether it changed: the keys every look compares (§2.4).

A stream follows the file, not the name: identity is (device, inode) while this process
runs. Whether a file changed is told by its fingerprint. The caller stats; this module
only names what it compares. How a stream *ends* (truncated, deleted, replaced) is decided
in ``core.ending``.
"""

from __future__ import annotations

import os

Ident = tuple[int, int]
"""(device, inode): the key of a file while this process runs."""

Fingerprint = tuple[int, int, int]
"""(size, mtime_ns, ctime_ns): any write to the file changes it (once settled, §2.3)."""

SizeMtime = tuple[int, int]
"""(size, mtime_ns): what a writer left. Writer signals compare this, not the fingerprint:
a rename after the close changes the ctime, and must not restart the close window."""


def ident_of(st: os.stat_result) -> Ident:
    return (st.st_dev, st.st_ino)


def fingerprint(st: os.stat_result) -> Fingerprint:
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def unchanged_since(final_size: int | None, final_mtime_ns: int | None,
                    st: os.stat_result) -> bool:
    """A completed stream's file still holds what was uploaded: never upload it again."""
    return st.st_size == final_size and st.st_mtime_ns == final_mtime_ns
