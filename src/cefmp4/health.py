"""One small HTTP server for ``/metrics``, ``/healthz`` and ``/readyz`` (SPEC §1.5).

Hand-written HTTP/1.1 on ``asyncio.start_server``: GET only, one request per connection
(``Connection: close``), a read timeout so a slow or silent client cannot hold a handler
forever. Three endpoints do not justify a web framework as a dependency.

``/readyz`` runs every check concurrently, each under its own timeout, and names what is
down: ``{"status": "unavailable", "checks": {"s3": "ok", "checkpoint_store": "down: ..."}}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus

import structlog

from cefmp4.logs import ERROR, redact
from cefmp4.metrics import Metrics

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[None]]

JSON_TYPE = "application/json"
# A request line plus headers from Prometheus, curl or a kubelet fits well within this.
MAX_REQUEST_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Response:
    status: HTTPStatus
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: HTTPStatus, doc: object) -> Response:
    return Response(status, json.dumps(doc).encode() + b"\n")


@dataclass(slots=True)
class HealthServer:
    """The running server: ``port`` is the bound port (useful when 0 was asked for)."""

    host: str
    port: int
    metrics: Metrics
    checks: Mapping[str, Check]
    check_timeout: float = 2.0
    read_timeout: float = 5.0
    _connections: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Run every check concurrently; ``(all ok, {name: "ok" | "down: why"})``."""
        names = list(self.checks)
        results = await asyncio.gather(*(self._run_check(self.checks[n]) for n in names))
        report = dict(zip(names, results, strict=True))
        return all(r == "ok" for r in results), report

    async def _run_check(self, check: Check) -> str:
        try:
            async with asyncio.timeout(self.check_timeout):
                await check()
        except TimeoutError:
            return f"down: no answer within {self.check_timeout:g} s"
        except Exception as exc:
            # The text goes to whoever can reach the port: never a password in a URL.
            return f"down: {redact(str(exc) or type(exc).__name__)}"
        return "ok"

    async def respond(self, method: str, target: str) -> Response:
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/healthz", "/readyz"):
            return _json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})
        if method != "GET":
            return Response(
                HTTPStatus.METHOD_NOT_ALLOWED,
                json.dumps({"error": f"{method} not allowed"}).encode() + b"\n",
                headers=(("Allow", "GET"),),
            )
        if path == "/metrics":
            body, content_type = self.metrics.render()
            return Response(HTTPStatus.OK, body, content_type)
        if path == "/healthz":
            return _json(HTTPStatus.OK, {"status": "ok"})
        ready, report = await self.readiness()
        if ready:
            return _json(HTTPStatus.OK, {"status": "ready", "checks": report})
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "unavailable", "checks": report})

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # asyncio owns the connection task and, on 3.11, logs a traceback if that task ends
        # cancelled; so the work runs in an inner task that shutdown can cancel cleanly.
        inner = asyncio.create_task(self._serve_connection(reader, writer))
        self._connections.add(inner)
        inner.add_done_callback(self._connections.discard)
        try:
            await inner
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # we are being cancelled ourselves
            # Otherwise shutdown cancelled the inner task on purpose: the connection is done.

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            response = await self._read_and_respond(reader)
            if response is not None:
                await self._write(writer, response)
                await self._linger(reader, writer)
        except (ConnectionError, TimeoutError):
            pass  # the client went away or stalled; nothing more to tell it
        except Exception:
            log.exception(ERROR, operation="health_request")
            with contextlib.suppress(Exception):
                await self._write(writer, _json(HTTPStatus.INTERNAL_SERVER_ERROR,
                                                {"error": "internal error"}))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), self.read_timeout)

    async def _read_and_respond(self, reader: asyncio.StreamReader) -> Response | None:
        try:
            async with asyncio.timeout(self.read_timeout):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None  # closed before a full request: a port probe
        except asyncio.LimitOverrunError:
            return _json(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, {"error": "request too large"})
        except TimeoutError:
            return _json(HTTPStatus.REQUEST_TIMEOUT, {"error": "request not received in time"})
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1.") or not parts[1].startswith("/"):
            return _json(HTTPStatus.BAD_REQUEST, {"error": "malformed request line"})
        # No request here has a body; anything the client sent after the headers is ignored.
        return await self.respond(parts[0], parts[1])

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then discard what the client still sends until it closes (bounded).

        Closing a socket with unread input makes the kernel send a reset, which can destroy
        the response before the client reads it (an oversized or malformed request).
        """
        if not writer.can_write_eof():
            return
        writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(min(self.read_timeout, 2.0)):
                while await reader.read(64 * 1024):
                    pass

    async def _write(self, writer: asyncio.StreamWriter, response: Response) -> None:
        lines = [
            f"HTTP/1.1 {response.status.value} {response.status.phrase}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(response.body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{name}: {value}" for name, value in response.headers),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + response.body)
        async with asyncio.timeout(self.read_timeout):
            await writer.drain()


@asynccontextmanager
async def serve_health(
    *,
    host: str,
    port: int,
    metrics: Metrics,
    checks: Mapping[str, Check],
    check_timeout: float = 2.0,
    read_timeout: float = 5.0,
) -> AsyncIterator[HealthServer]:
    """Serve until the block exits; ``port=0`` binds a free port (see ``HealthServer.port``).

    The CLI never calls this with ``PROM_PORT=0``, which means "no server" there.
    """
    state = HealthServer(
        host=host, port=port, metrics=metrics, checks=dict(checks),
        check_timeout=check_timeout, read_timeout=read_timeout,
    )
    server = await asyncio.start_server(state._handle, host, port, limit=MAX_REQUEST_BYTES)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        # Connections in flight would end within the read and check timeouts anyway; cancel
        # them so shutdown does not wait (Server.wait_closed waits for them on 3.12+).
        connections = list(state._connections)
        for task in connections:
            task.cancel()
        await asyncio.gather(*connections, return_exceptions=True)
        await server.wait_closed()
