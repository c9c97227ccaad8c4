"""What has been uploaded already: the "never upload an unchanged file again" rule.

A completed stream is remembered as one int, ``fingerprint_key`` of (device, inode, final
size, final mtime), in a set: 100,000 completed streams cost ~9 MiB (measured; their
records would cost ~300 MiB), and a scan asks about a file with one set lookup — no store
read, no S3 request. The set is loaded once at start-up, page by page through the store's
state index (``CheckpointStore.completed_files``), and grows as streams complete.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Collection

from cefmp4.checkpoint import StreamRecord, fingerprint_key
from cefmp4.core.identity import Ident
from cefmp4.streams.context import Context


class History:
    def __init__(self) -> None:
        self._done: set[int] = set()

    def __len__(self) -> int:
        return len(self._done)

    async def load(self, ctx: Context) -> None:
        """Every completed stream's fingerprint (retried like any checkpoint read)."""
        checkpoints = ctx.checkpoints
        cursor: str | None = None
        while cursor != "":
            page, cursor = await ctx.retry(
                "checkpoint", functools.partial(checkpoints.completed_files, cursor or "")
            )
            self._done.update(
                fingerprint_key(d.device, d.inode, d.final_size, d.final_mtime_ns) for d in page
            )

    def remember(self, rec: StreamRecord) -> None:
        """A completed stream's file, as it was uploaded."""
        if rec.final_size is not None and rec.final_mtime_ns is not None:
            self._done.add(fingerprint_key(rec.device, rec.inode, rec.final_size,
                                           rec.final_mtime_ns))  # fmt: skip

    def unchanged_test(
        self, unfinished: Collection[Ident]
    ) -> Callable[[os.stat_result], bool]:
        """``unchanged`` and not ``unfinished``, as one closure for a scan's worker thread.
        Reads a set and a dict only, which is safe while the loop thread changes them."""
        done, key = self._done, fingerprint_key

        def test(st: os.stat_result) -> bool:
            return key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) in done and (
                not unfinished or (st.st_dev, st.st_ino) not in unfinished)

        return test

    def unchanged(self, st: os.stat_result) -> bool:
        """Whether the file with this stat is one a completed stream uploaded, unchanged."""
        return fingerprint_key(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) in self._done
