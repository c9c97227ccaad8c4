"""Keep part buffers out of glibc's heap arenas.

Part bodies are 10 MiB ``bytes`` read in worker threads. glibc serves blocks above its mmap
threshold with a private mmap, returned to the kernel on free, but it raises that threshold
dynamically after the first such free (up to 32 MiB): from then on part buffers land in
per-thread heap arenas, which rarely shrink, and RSS climbs with the file size although
the bytes in flight are capped. Pinning the threshold keeps every part in its own mapping.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h
_THRESHOLD = 1024 * 1024


def pin_mmap_threshold() -> bool:
    """True if glibc accepted the setting (False elsewhere, e.g. musl or macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD))
