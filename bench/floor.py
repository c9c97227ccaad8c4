"""9. floor: what one pass over the catch-up file costs here, in-process (CPU-s, MB/s).

The bytes every uploader must at least read, and the digests cefmp4 may compute over them:
SHA-256 for the metadata, MD5 for Content-MD5 / ETags, CRC32C for x-amz-checksum-crc32c.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

import crc32c

from bench import media
from bench.scenarios import Bench

_BLOCK = 4 << 20


def _pass(
    path: os.PathLike[str], feed: Callable[[memoryview], object] | None
) -> tuple[float, float]:
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        offset = 0
        while n := os.preadv(fd, [view], offset):
            if feed is not None:
                feed(view[:n])
            offset += n
    finally:
        os.close(fd)
    return time.process_time() - cpu0, offset / 1e6 / (time.perf_counter() - t0)


def floor(b: Bench, run: int) -> dict[str, dict[str, float]]:
    path = media.sized_file(b.media_dir, b.size_mb)
    sha, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    crc = [0]

    def crc_feed(v: memoryview) -> None:
        crc[0] = crc32c.crc32c(v, crc[0])

    out = {}
    for name, feed in (("read", None), ("sha256", sha.update), ("md5", md5.update),
                       ("crc32c", crc_feed)):
        cpu, mb_s = _pass(path, feed)
        out[name] = {"cpu_s": cpu, "mb_s": mb_s}
    print("  floor run " + str(run + 1) + ": " + ", ".join(
        f"{k} {v['cpu_s']:.2f} CPU-s" for k, v in out.items()))
    return out
