"""A real aiohttp webhook receiver on a free 127.0.0.1 port, which tests can stop and restart."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from tests.support.proc import free_port

__all__ = ["Received", "WebhookReceiver"]

# How the answer's body comes: "ok" (two bytes), "flood" (``flood_bytes`` as fast as the
# client takes them) or "trickle" (a byte every TRICKLE_S, without end).
Body = Literal["ok", "flood", "trickle"]
TRICKLE_S = 0.05
FLOOD_CHUNK = b"x" * (256 * 1024)


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class WebhookReceiver:
    """Records every POST; ``statuses`` are answered in turn (then 200), with ``body``.

    A streamed body ("flood", "trickle") counts in ``body_sent`` the bytes the transport
    took, in ``streamed`` the answers that ended, and in ``hung_up`` those the client cut
    short by closing the connection.
    """

    port: int = field(default_factory=free_port)
    statuses: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    redirect_to: str | None = None
    body: Body = "ok"
    flood_bytes: int = 128 * 1024 * 1024
    body_sent: int = 0
    streamed: int = 0
    hung_up: int = 0

    def __post_init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self._arrived = asyncio.Condition()
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.append(Received(request.path, dict(request.headers), body))
        async with self._arrived:
            self._arrived.notify_all()
        if self.redirect_to:
            raise web.HTTPTemporaryRedirect(self.redirect_to)
        status = self.statuses.pop(0) if self.statuses else 200
        if self.body == "ok":
            return web.Response(status=status, text="ok")
        resp = web.StreamResponse(status=status)
        await resp.prepare(request)  # the status line and headers go out now
        try:
            await self._stream(resp)
        except ConnectionError:  # the client closed the connection (reset, or lost mid-drain)
            self.hung_up += 1
        self.streamed += 1
        async with self._arrived:
            self._arrived.notify_all()
        return resp

    async def _stream(self, resp: web.StreamResponse) -> None:
        if self.body == "flood":
            while self.body_sent < self.flood_bytes and not self._stopping.is_set():
                await resp.write(FLOOD_CHUNK)
                self.body_sent += len(FLOOD_CHUNK)
            return
        while not self._stopping.is_set():
            await resp.write(b"x")
            self.body_sent += 1
            try:
                async with asyncio.timeout(TRICKLE_S):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    async def start(self) -> WebhookReceiver:
        self._stopping.clear()
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        self._stopping.set()  # streamed answers end, so cleanup need not wait for them
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for(self, predicate: object, timeout: float = 30) -> None:
        """Until ``predicate(received)`` is true (a callable), or TimeoutError; checked on
        each POST and at the end of each streamed answer."""
        assert callable(predicate)
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: predicate(self.received))

    async def __aenter__(self) -> WebhookReceiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ThreadedReceiver:
    """A WebhookReceiver on its own event loop thread, for tests that block (subprocesses)."""

    def __init__(self, port: int | None = None) -> None:
        import threading

        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._rx: WebhookReceiver | None = None
        self.received: list[Received] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _call(self, coro: object) -> object:
        assert asyncio.iscoroutine(coro)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def start(self) -> None:
        """Serve (again) on the same port; what was received before is kept."""
        rx = WebhookReceiver(port=self.port, received=self.received)
        self._call(rx.start())
        self._rx = rx

    def stop(self) -> None:
        if self._rx is not None:
            self._call(self._rx.stop())
            self._rx = None

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
