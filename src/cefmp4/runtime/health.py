"""The HTTP server of ``/metrics``, ``/healthz`` and ``/readyz`` (SPEC §1.5), on aiohttp.web.

aiohttp is here anyway (aiobotocore's transport), and it is a maintained HTTP/1.1 server:
one slow or silent client holds only its own connection, never the others or shutdown.

``/readyz`` is 200 only when every dependency ping answers and nothing is reported failing
in :class:`~cefmp4.runtime.readiness.Readiness` (supervised tasks, the watcher, streams retrying).
Its body names each dependency or component and, when failing, the error *class* only::

    {"status": "unavailable", "checks": {"s3": "ok", "checkpoint_store": "down: TransientError",
                                         "watcher": "down: WatchfilesRustInternalError"}}

never a message: messages carry endpoints, paths and sometimes credentials, and the port
is open to whoever can reach it. The pings run concurrently, each under a timeout, and
their result is cached for ``ping_cache_seconds`` with concurrent probes sharing one round,
so a flood of probes is at most one ping per dependency per second.

Whoever reaches the port may also hold connections open without a byte: at most
``max_connections`` are open (see :class:`ConnectionCap`), each closed after ``idle_timeout``
seconds without a whole request, and a failing accept() is logged once a minute, counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import math
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import structlog
from aiohttp import web

from cefmp4.runtime.errors import ConfigError
from cefmp4.runtime.logs import ERROR
from cefmp4.runtime.metrics import Metrics
from cefmp4.runtime.readiness import Readiness

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[None]]

OK = "ok"
JSON_TYPE = "application/json"
# A request line plus headers from Prometheus, curl or a kubelet fits well within this.
MAX_LINE_BYTES = 8 * 1024
# Prometheus, a kubelet and curl need a handful, a burst of probes more; a descriptor each
# (an eighth of the 1024 soft default). Idle: Prometheus, scraping each 15 s, reconnects.
MAX_CONNECTIONS, IDLE_TIMEOUT_SECONDS = 128, 5.0
# After a failed accept() (no descriptor left): the pause, and the least time between lines.
ACCEPT_RETRY_SECONDS, LOG_INTERVAL_SECONDS = 0.5, 60.0
# Events of this module, each with `count`: how many since its last line.
ACCEPT_FAILED: Final = "health_accept_failed"
ACCEPT_RECOVERED: Final = "health_accept_recovered"  # accepting again
CONNECTIONS_SHED: Final = "health_connections_shed"  # closed at the cap


class CachedPings:
    """The dependency pings, run concurrently under ``timeout`` each, the result reused for
    ``ttl`` seconds. Probes arriving while a round runs wait for that round."""

    def __init__(
        self, checks: Mapping[str, Check], *, timeout: float, ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self._checks = dict(checks)
        self._timeout = timeout
        self._ttl = ttl
        self._clock = clock
        self._result: dict[str, str] | None = None
        self._at = 0.0
        self._round: asyncio.Task[dict[str, str]] | None = None

    async def results(self) -> dict[str, str]:
        """name -> ``"ok"`` or ``"down: <error class>"`` (``TimeoutError`` for no answer)."""
        if self._result is not None and self._clock() - self._at < self._ttl:
            return self._result
        if self._round is None or self._round.done():
            self._round = asyncio.create_task(self._run_round(), name="health-pings")
        # shield: one impatient client that disconnects must not cancel the others' round.
        return await asyncio.shield(self._round)

    async def _run_round(self) -> dict[str, str]:
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._ping(self._checks[n]) for n in names))
        self._result = dict(zip(names, outcomes, strict=True))
        self._at = self._clock()
        return self._result

    async def _ping(self, check: Check) -> str:
        try:
            async with asyncio.timeout(self._timeout):
                await check()
        except Exception as exc:  # a failing dependency is an answer, not an error here
            return down(type(exc).__name__)
        return OK

    async def aclose(self) -> None:
        if self._round is not None and not self._round.done():
            self._round.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._round


class Throttled:
    """Counts an event so that it is logged at most once per ``interval``, with the count since
    its last line: ``note()`` counts one, ``due()`` does not; each answers what to log now (0:
    nothing). The first occurrence is logged at once."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval, self._clock = interval, clock
        self._pending, self._logged_at = 0, -math.inf

    def note(self) -> int:
        self._pending += 1
        return self.due()

    def due(self) -> int:
        now = self._clock()
        if not self._pending or now - self._logged_at < self._interval:
            return 0
        count, self._pending, self._logged_at = self._pending, 0, now
        return count


class ConnectionCap:
    """The open connections, oldest first. At the cap, a new one takes the place of the oldest
    not inside a request (``busy``): a silent client is older than a probe, which sends its
    request at once and is answered in milliseconds, so a flood of silent connections sheds
    itself, not /healthz. If all are inside a request, the new one is closed instead."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: dict[asyncio.BaseTransport, None] = {}  # a dict keeps the order
        self.busy: set[asyncio.BaseTransport] = set()  # kept up by the `busy` middleware
        self.shed = Throttled(LOG_INTERVAL_SECONDS)

    def __len__(self) -> int:
        for transport in [t for t in self.open if t.is_closing()]:
            del self.open[transport]
        return len(self.open)

    def make_room(self) -> bool:
        """Room for one more, the oldest idle one closed if needed; False: refuse it."""
        full = len(self) >= self.limit
        if count := self.shed.note() if full else self.shed.due():
            log.warning(CONNECTIONS_SHED, count=count, max_connections=self.limit)
        victim = next((t for t in self.open if t not in self.busy), None) if full else None
        if victim is not None:
            del self.open[victim]
            victim.close()
        return not full or victim is not None


@dataclass(slots=True)
class HealthServer:
    """The running server: ``port`` is the bound port (useful when 0 was asked for)."""

    host: str
    port: int
    pings: CachedPings
    readiness: Readiness | None
    readiness_grace: float = 0.0
    connections: ConnectionCap = field(default_factory=lambda: ConnectionCap(MAX_CONNECTIONS))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def report(self) -> tuple[bool, dict[str, str]]:
        """``(ready, {name: "ok" | "down: <error class>"})``: the pings, then every failure
        reported to Readiness."""
        report = dict(await self.pings.results())
        if self.readiness is not None:
            failing = self.readiness.failures(self.readiness_grace)
            report.update({name: down(error) for name, error in failing.items()})
        return all(v == OK for v in report.values()), report


def down(error_class: str) -> str:
    """The report value of a failing check: ``"down: TransientError"``, the class only."""
    return f"down: {error_class}"


def _json(status: int, doc: object) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(doc).encode() + b"\n", content_type=JSON_TYPE,
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


def _app(server_ref: list[HealthServer], metrics: Metrics) -> web.Application:
    @web.middleware
    async def busy(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        transport, inside = request.transport, server_ref[0].connections.busy
        if transport is not None:
            inside.add(transport)
        try:
            return await handler(request)
        finally:
            inside.discard(transport)

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status == 405:
                return web.Response(status=405, text=f"{request.method} not allowed\n",
                                    headers={"Allow": "GET"})  # fmt: skip
            raise
        except Exception:
            log.exception(ERROR, operation="health_request", path=request.path)
            return _json(500, {"error": "internal error"})

    async def metrics_view(_request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(_request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    async def readyz(_request: web.Request) -> web.Response:
        ready, report = await server_ref[0].report()
        if ready:
            return _json(200, {"status": "ready", "checks": report})
        return _json(503, {"status": "unavailable", "checks": report})

    handler_args = {"max_line_size": MAX_LINE_BYTES}
    app = web.Application(middlewares=[busy, errors], handler_args=handler_args)
    app.router.add_get("/metrics", metrics_view, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    return app


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket; ``ConfigError`` naming PROM_PORT/PROM_HOST if it cannot be had."""
    where = f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, _, _, address = infos[0]
        dualstack = family == socket.AF_INET6 and host == "::" and socket.has_dualstack_ipv6()
        return socket.create_server(
            address[:2], family=family, dualstack_ipv6=dualstack, reuse_port=False
        )
    except socket.gaierror as exc:
        raise ConfigError("PROM_HOST", f"cannot resolve {host!r}: {exc.strerror}") from None
    except OSError as exc:
        reason = {
            errno.EADDRINUSE: "the port is already in use",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "the address is not one of this host's",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        raise ConfigError(
            "PROM_PORT", f"cannot listen on {where} (PROM_HOST/PROM_PORT): {reason}"
        ) from None


async def _accept_forever(
    sock: socket.socket, factory: Callable[[], asyncio.Protocol], cap: ConnectionCap
) -> None:
    """The accept loop, written here as neither library bounds it: aiohttp leaves connection
    limits to the application (aio-libs/aiohttp#675), and asyncio's (``create_server``), when
    accept() fails for want of a descriptor, calls it again up to ``backlog`` times in the
    same tick, each failure logged with its traceback and scheduling a retry of its own
    (python/cpython#151615, fixed in 2026, not in the 3.11 of the tests nor the 3.12 of the
    image): thousands of lines a second. Here one accept at a time, a pause after a failure."""
    loop = asyncio.get_running_loop()
    failures = Throttled(LOG_INTERVAL_SECONDS)
    while True:
        try:
            conn, _ = await loop.sock_accept(sock)
        except ConnectionAbortedError:  # the client left before it was accepted
            continue
        except OSError as exc:  # EMFILE, ENFILE, ENOBUFS, ENOMEM, or any other
            if count := failures.note():
                error = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
                log.error(ACCEPT_FAILED, count=count, error=error, open_connections=len(cap))
            await asyncio.sleep(ACCEPT_RETRY_SECONDS)
            continue
        if count := failures.due():
            log.info(ACCEPT_RECOVERED, count=count)
        if not cap.make_room():
            conn.close()
            continue
        try:
            transport, _ = await loop.connect_accepted_socket(factory, conn)
        except OSError:  # reset before it could be served
            conn.close()
            continue
        cap.open[transport] = None


def _report_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error(ERROR, operation="health_accept", error=type(exc).__name__, exc_info=exc)


@asynccontextmanager
async def serve_health(
    *,
    host: str,
    port: int,
    metrics: Metrics,
    checks: Mapping[str, Check],
    readiness: Readiness | None = None,
    readiness_grace: float = 0.0,
    check_timeout: float = 2.0,
    ping_cache_seconds: float = 1.0,
    shutdown_timeout: float = 1.0,
    max_connections: int = MAX_CONNECTIONS,
    idle_timeout: float = IDLE_TIMEOUT_SECONDS,
) -> AsyncIterator[HealthServer]:
    """Serve until the block exits; ``port=0`` binds a free port (see ``HealthServer.port``).

    ``readiness``: components reported failing make ``/readyz`` 503 once they have failed
    for ``readiness_grace`` seconds. A port that cannot be bound (in use, privileged, an
    address not of this host) is a ``ConfigError`` naming PROM_PORT and PROM_HOST. The CLI
    never calls this with ``PROM_PORT=0``, which means "no server" there.

    ``max_connections``: see :class:`ConnectionCap`; ``idle_timeout``: see the module.
    """
    pings = CachedPings(checks, timeout=check_timeout, ttl=ping_cache_seconds)
    sock = await asyncio.to_thread(_listen, host, port)
    sock.setblocking(False)
    cap = ConnectionCap(max_connections)
    state = HealthServer(host, sock.getsockname()[1], pings, readiness, readiness_grace, cap)
    # aiohttp's keep-alive timer runs from connection_made, not moved by part of a request:
    # the idle and the header-read timeout in one (the aiohttp of requirements.lock does,
    # aio-libs/aiohttp#13681; with an older one, the cap alone bounds silent connections).
    runner = web.AppRunner(
        _app([state], metrics), handle_signals=False, access_log=None,
        shutdown_timeout=shutdown_timeout, keepalive_timeout=idle_timeout,
    )  # fmt: skip
    try:
        await runner.setup()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    assert runner.server is not None
    accepting = asyncio.create_task(_accept_forever(sock, runner.server, cap), name="health-accept")
    accepting.add_done_callback(_report_crash)
    try:
        yield state
    finally:
        accepting.cancel()
        await asyncio.gather(accepting, return_exceptions=True)
        await pings.aclose()
        await runner.cleanup()
        for transport in cap.open:
            transport.close()
        sock.close()
