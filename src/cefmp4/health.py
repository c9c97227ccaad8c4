"""The HTTP server of ``/metrics``, ``/healthz`` and ``/readyz`` (SPEC §1.5), on aiohttp.web.

aiohttp is here anyway (aiobotocore's transport), and it is a maintained HTTP/1.1 server:
one slow or silent client holds only its own connection, never the others or shutdown.

``/readyz`` is 200 only when every dependency ping answers and nothing is reported failing
in :class:`~cefmp4.readiness.Readiness` (supervised tasks, the watcher, streams retrying).
Its body names each dependency or component and, when failing, the error *class* only::

    {"status": "unavailable", "checks": {"s3": "ok", "checkpoint_store": "down: TransientError",
                                         "watcher": "down: WatchfilesRustInternalError"}}

never a message: messages carry endpoints, paths and sometimes credentials, and the port
is open to whoever can reach it. The pings run concurrently, each under a timeout, and
their result is cached for ``ping_cache_seconds`` with concurrent probes sharing one round,
so a flood of probes is at most one ping per dependency per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import structlog
from aiohttp import web

from cefmp4.errors import ConfigError
from cefmp4.logs import ERROR
from cefmp4.metrics import Metrics
from cefmp4.readiness import Readiness

log = structlog.get_logger(__name__)

Check = Callable[[], Awaitable[None]]

OK = "ok"
JSON_TYPE = "application/json"
# A request line plus headers from Prometheus, curl or a kubelet fits well within this.
MAX_LINE_BYTES = 8 * 1024


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


@dataclass(slots=True)
class HealthServer:
    """The running server: ``port`` is the bound port (useful when 0 was asked for)."""

    host: str
    port: int
    pings: CachedPings
    readiness: Readiness | None
    readiness_grace: float = 0.0

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

    app = web.Application(middlewares=[errors], handler_args={"max_line_size": MAX_LINE_BYTES})
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
) -> AsyncIterator[HealthServer]:
    """Serve until the block exits; ``port=0`` binds a free port (see ``HealthServer.port``).

    ``readiness``: components reported failing make ``/readyz`` 503 once they have failed
    for ``readiness_grace`` seconds. A port that cannot be bound (in use, privileged, an
    address not of this host) is a ``ConfigError`` naming PROM_PORT and PROM_HOST. The CLI
    never calls this with ``PROM_PORT=0``, which means "no server" there.
    """
    pings = CachedPings(checks, timeout=check_timeout, ttl=ping_cache_seconds)
    sock = await asyncio.to_thread(_listen, host, port)
    state = HealthServer(host, sock.getsockname()[1], pings, readiness, readiness_grace)
    runner = web.AppRunner(
        _app([state], metrics), handle_signals=False, access_log=None,
        shutdown_timeout=shutdown_timeout,
    )  # fmt: skip
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    try:
        yield state
    finally:
        await pings.aclose()
        await runner.cleanup()
        sock.close()
