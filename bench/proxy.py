"""A tiny counting HTTP proxy in front of SeaweedFS: one entry per S3 request.

Only the client→server direction is parsed (request line, headers, Content-Length body);
responses are piped through untouched. Used where request counts matter (idle start-up),
never in the throughput paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.requests: list[tuple[float, str, str]] = []  # (monotonic, method, target)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def since(self, t0: float, t1: float | None = None) -> list[tuple[float, str, str]]:
        return [r for r in list(self.requests) if r[0] >= t0 and (t1 is None or r[0] < t1)]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def boot() -> None:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(boot())
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        back = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            await self._requests(reader, up_writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            with contextlib.suppress(Exception):
                up_writer.write_eof()
            await asyncio.gather(back, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()

    async def _requests(self, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, _, rest = lines[0].partition(" ")
            self.requests.append((time.monotonic(), method, rest.rsplit(" ", 1)[0]))
            headers = {
                k.strip().lower(): v.strip()
                for k, _, v in (line.partition(":") for line in lines[1:] if line)
            }
            up.write(head)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                await self._pipe(reader, up)  # cannot count further on this connection
                return
            left = int(headers.get("content-length", "0") or 0)
            while left > 0:
                block = await reader.read(min(left, 1 << 20))
                if not block:
                    return
                up.write(block)
                left -= len(block)
            await up.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while block := await reader.read(1 << 16):
                writer.write(block)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()
