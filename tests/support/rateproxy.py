"""A TCP proxy in front of an S3 server that records every client→server byte with the
moment it arrived, for measuring what a process really sends (UPLOAD_BWLIMIT, SPEC §2.21),
and that can be cut and restored (an outage of the link, not of the server).

Runs its own event loop in a thread, so it serves a daemon in another process or an App in
the test's own loop alike. 127.0.0.1, a free port.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import threading
import time
from typing import Self


class RateProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._arrivals: list[tuple[float, int]] = []  # (monotonic, bytes), in time order
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rate-proxy", daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self.cut = False

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("rate proxy did not start")
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the link ------------------------------------------------------------------------

    def go_down(self) -> None:
        """Every connection is broken and every new one refused at once, until ``come_up``."""
        self.cut = True

        def close_all() -> None:
            for writer in list(self._writers):
                writer.transport.abort()

        self._loop.call_soon_threadsafe(close_all)

    def come_up(self) -> None:
        self.cut = False

    # --- what arrived ------------------------------------------------------------------------

    def arrivals(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self._arrivals)

    def total(self, t0: float = 0.0, t1: float = float("inf")) -> int:
        return sum(n for t, n in self.arrivals() if t0 <= t < t1)

    def max_window(self, window: float, t0: float = 0.0, t1: float = float("inf")) -> int:
        """The most bytes that arrived within any ``window`` seconds in ``[t0, t1)``."""
        events = [(t, n) for t, n in self.arrivals() if t0 <= t < t1]
        times = [t for t, _ in events]
        sums = [0]
        for _, n in events:
            sums.append(sums[-1] + n)
        best = 0
        for i, start in enumerate(times):
            j = bisect.bisect_left(times, start + window)
            best = max(best, sums[j] - sums[i])
        return best

    # --- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(boot())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        back = asyncio.create_task(self._pipe(up_reader, writer, count=False))
        try:
            await self._pipe(reader, up_writer, count=True)
        finally:
            await asyncio.gather(back, return_exceptions=True)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while block := await reader.read(1 << 16):
                if count:
                    with self._lock:
                        self._arrivals.append((time.monotonic(), len(block)))
                writer.write(block)
                await writer.drain()
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()
