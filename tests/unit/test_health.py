"""The health server, over real loopback sockets."""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import time

import aiohttp
import pytest
from structlog.testing import capture_logs

from cefmp4.runtime import health
from cefmp4.runtime.errors import ConfigError, TransientError
from cefmp4.runtime.health import Throttled, serve_health
from cefmp4.runtime.metrics import Metrics
from cefmp4.runtime.readiness import Readiness

HOST = "127.0.0.1"


async def get(url: str, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        session.request(method, url + path) as resp,
    ):
        body = await resp.read()
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, body


async def ok() -> None:
    return None


async def test_healthz_and_metrics() -> None:
    metrics = Metrics()
    metrics.chunks_uploaded.inc(3)
    async with serve_health(host=HOST, port=0, metrics=metrics, checks={}) as server:
        assert server.port > 0
        status, headers, body = await get(server.url, "/healthz")
        assert status == 200
        assert json.loads(body) == {"status": "ok"}
        assert headers["content-type"].startswith("application/json")

        status, headers, body = await get(server.url, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert b"video_chunks_uploaded_total 3.0" in body


async def test_readyz_flips_when_a_check_fails() -> None:
    down: dict[str, Exception | None] = {"s3": None}

    async def s3() -> None:
        if down["s3"] is not None:
            raise down["s3"]

    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={"s3": s3, "checkpoint_store": ok},
        ping_cache_seconds=0,
    ) as server:  # fmt: skip
        status, _, body = await get(server.url, "/readyz")
        assert status == 200
        assert json.loads(body) == {
            "status": "ready", "checks": {"s3": "ok", "checkpoint_store": "ok"}
        }

        down["s3"] = ConnectionRefusedError("connection refused to http://10.1.2.3:9000")
        status, _, body = await get(server.url, "/readyz")
        assert status == 503
        doc = json.loads(body)
        assert doc == {
            "status": "unavailable",
            "checks": {"s3": "down: ConnectionRefusedError", "checkpoint_store": "ok"},
        }

        down["s3"] = None
        status, _, _ = await get(server.url, "/readyz?verbose=1")
        assert status == 200


async def test_readyz_is_503_while_a_component_is_reported_failing() -> None:
    readiness = Readiness()
    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={"s3": ok}, readiness=readiness
    ) as server:
        assert (await get(server.url, "/readyz"))[0] == 200
        readiness.fail("watcher", TransientError("inotify at /secret/path failed"))
        status, _, body = await get(server.url, "/readyz")
        assert status == 503
        assert json.loads(body)["checks"] == {"s3": "ok", "watcher": "down: TransientError"}
        assert b"secret" not in body
        readiness.ok("watcher")
        assert (await get(server.url, "/readyz"))[0] == 200


async def test_readyz_checks_run_concurrently_with_timeout() -> None:
    async def hangs() -> None:
        await asyncio.sleep(3600)

    async def slow_ok() -> None:
        await asyncio.sleep(0.2)

    checks = {"a": hangs, "b": hangs, "c": slow_ok}
    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks=checks, check_timeout=0.5
    ) as server:
        started = time.monotonic()
        status, _, body = await get(server.url, "/readyz")
        elapsed = time.monotonic() - started
    assert status == 503
    assert json.loads(body)["checks"] == {
        "a": "down: TimeoutError", "b": "down: TimeoutError", "c": "ok"
    }
    assert elapsed < 1.4  # concurrently: not 0.5 + 0.5 + 0.2


async def test_a_flood_of_probes_is_at_most_two_pings() -> None:
    pings = {"n": 0}

    async def s3() -> None:
        pings["n"] += 1
        await asyncio.sleep(0.05)

    async with serve_health(host=HOST, port=0, metrics=Metrics(), checks={"s3": s3}) as server:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def probe() -> int:
                async with session.get(server.url + "/readyz") as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(probe() for _ in range(100)))
    assert statuses == [200] * 100
    assert 1 <= pings["n"] <= 2


async def test_the_ping_cache_expires() -> None:
    pings = {"n": 0}

    async def s3() -> None:
        pings["n"] += 1

    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={"s3": s3}, ping_cache_seconds=0.2
    ) as server:
        await get(server.url, "/readyz")
        await get(server.url, "/readyz")
        assert pings["n"] == 1
        await asyncio.sleep(0.25)
        await get(server.url, "/readyz")
        assert pings["n"] == 2


async def test_readyz_body_has_no_message_no_password() -> None:
    async def redis() -> None:
        raise OSError("cannot reach redis://:pw123@redis:6379/0 from /etc/secret")

    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={"checkpoint_store": redis}
    ) as server:
        status, _, body = await get(server.url, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"] == {"checkpoint_store": "down: OSError"}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/nope", 404),
        ("GET", "/", 404),
        ("POST", "/metrics", 405),
        ("DELETE", "/healthz", 405),
        ("HEAD", "/readyz", 405),
        ("POST", "/nope", 404),
    ],
)
async def test_not_found_and_not_allowed(method: str, path: str, expected: int) -> None:
    async with serve_health(host=HOST, port=0, metrics=Metrics(), checks={}) as server:
        status, headers, _ = await get(server.url, path, method)
    assert status == expected
    if expected == 405:
        assert headers["allow"] == "GET"


async def raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_requests_are_4xx_and_the_server_keeps_serving() -> None:
    async with serve_health(host=HOST, port=0, metrics=Metrics(), checks={}) as server:
        assert b" 400 " in (await raw(server.port, b"garbage\r\n\r\n")).split(b"\r\n")[0]
        huge = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 40_000 + b"\r\n\r\n"
        assert b" 4" in (await raw(server.port, huge)).split(b"\r\n")[0]
        assert (await get(server.url, "/healthz"))[0] == 200


async def test_slow_and_silent_clients_do_not_hold_the_server() -> None:
    async with serve_health(host=HOST, port=0, metrics=Metrics(), checks={}) as server:
        # One client that never finishes its request, one that never sends anything.
        _, slow = await asyncio.open_connection(HOST, server.port)
        slow.write(b"GET /healthz HTTP/1.1\r\n")
        await slow.drain()
        _, silent = await asyncio.open_connection(HOST, server.port)
        started = time.monotonic()
        assert (await get(server.url, "/healthz"))[0] == 200
        assert time.monotonic() - started < 0.5
        leaving = time.monotonic()
    assert time.monotonic() - leaving < 2  # shutdown does not wait for them
    for writer in (slow, silent):
        writer.close()


async def test_handler_exception_is_logged_and_server_keeps_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    metrics = Metrics()
    calls = {"n": 0}

    def broken_render() -> tuple[bytes, str]:
        calls["n"] += 1
        raise RuntimeError("render exploded")

    monkeypatch.setattr(metrics, "render", broken_render)
    async with serve_health(host=HOST, port=0, metrics=metrics, checks={}) as server:
        with capture_logs() as cap:
            status, _, _ = await get(server.url, "/metrics")
        assert status == 500
        assert calls["n"] == 1
        assert any(e["event"] == "error" and e["log_level"] == "error" for e in cap)
        assert (await get(server.url, "/healthz"))[0] == 200


async def test_a_port_in_use_is_a_config_error_naming_it() -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            async with serve_health(host=HOST, port=port, metrics=Metrics(), checks={}):
                pass
    assert err.value.setting == "PROM_PORT"
    assert "PROM_HOST" in str(err.value)
    assert "in use" in str(err.value)


async def test_ipv6_any_address() -> None:
    if not socket.has_ipv6:
        pytest.fail("IPv6 is not available")
    async with serve_health(host="::", port=0, metrics=Metrics(), checks={}) as server:
        assert (await get(f"http://[::1]:{server.port}", "/healthz"))[0] == 200
        if socket.has_dualstack_ipv6():
            assert (await get(f"http://127.0.0.1:{server.port}", "/healthz"))[0] == 200


# --- a bounded port: idle timeout, connection cap, accept errors ----------------------------


async def test_silent_and_incomplete_connections_are_closed_after_the_idle_timeout() -> None:
    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={}, idle_timeout=0.3
    ) as server:
        started = time.monotonic()
        silent, silent_writer = await asyncio.open_connection(HOST, server.port)
        # A request head that never ends, sent a line at a time: the bytes do not keep it open.
        trickling, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")

        async def trickle() -> None:
            while not trickling.at_eof():
                writer.write(b"X-Slow: 1\r\n")
                await asyncio.sleep(0.05)

        trickler = asyncio.create_task(trickle())
        assert await asyncio.wait_for(silent.read(), 3) == b""
        assert await asyncio.wait_for(trickling.read(), 3) == b""
        elapsed = time.monotonic() - started
        await asyncio.gather(trickler, return_exceptions=True)
        assert 0.25 < elapsed < 1.5
        assert (await get(server.url, "/healthz"))[0] == 200
        for w in (silent_writer, writer):
            w.close()


async def test_a_keep_alive_connection_is_closed_after_the_idle_timeout() -> None:
    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={}, idle_timeout=0.3
    ) as server:
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answered = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        assert answered.startswith(b"HTTP/1.1 200")
        answered_at = time.monotonic()
        await asyncio.wait_for(reader.read(), 3)  # the body, then the end: closed
        assert 0.25 < time.monotonic() - answered_at < 1.5
        writer.close()


async def test_at_the_cap_the_oldest_idle_connection_makes_room_at_once() -> None:
    with capture_logs() as cap:
        async with serve_health(
            host=HOST, port=0, metrics=Metrics(), checks={}, max_connections=4
        ) as server:
            clients = [await asyncio.open_connection(HOST, server.port) for _ in range(10)]
            silent = [reader for reader, _ in clients]
            for reader in silent[:6]:  # closed for the four newer ones, oldest first
                assert await asyncio.wait_for(reader.read(), 2) == b""
            started = time.monotonic()
            assert (await get(server.url, "/healthz"))[0] == 200
            assert time.monotonic() - started < 0.5
            assert await asyncio.wait_for(silent[6].read(), 2) == b""  # made room for it
            assert not any(reader.at_eof() for reader in silent[7:])
            assert len(server.connections) <= 4
            for _, writer in clients:
                writer.close()
    shed = [e for e in cap if e["event"] == health.CONNECTIONS_SHED]
    assert [(e["count"], e["log_level"]) for e in shed] == [(1, "warning")]  # not 7 lines


async def test_at_the_cap_connections_inside_a_request_stay_and_the_new_one_is_closed() -> None:
    answer = asyncio.Event()

    async def s3() -> None:
        await answer.wait()

    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={"s3": s3}, max_connections=2,
        check_timeout=30,
    ) as server:  # fmt: skip
        probes = [asyncio.create_task(get(server.url, "/readyz")) for _ in range(2)]
        while len(server.connections.busy) < 2:  # noqa: ASYNC110  (a count, no event to wait on)
            await asyncio.sleep(0.01)
        refused, writer = await asyncio.open_connection(HOST, server.port)
        assert await asyncio.wait_for(refused.read(), 2) == b""
        writer.close()
        answer.set()
        assert [status for status, _, _ in await asyncio.gather(*probes)] == [200, 200]


async def test_out_of_descriptors_accept_pauses_and_logs_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    real_accept = loop.sock_accept
    failures = {"left": 300}

    async def exhausted(sock: socket.socket) -> tuple[socket.socket, object]:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return await real_accept(sock)

    monkeypatch.setattr(health, "ACCEPT_RETRY_SECONDS", 0.001)
    monkeypatch.setattr(loop, "sock_accept", exhausted)
    with capture_logs() as cap:
        async with serve_health(host=HOST, port=0, metrics=Metrics(), checks={}) as server:
            assert (await get(server.url, "/healthz"))[0] == 200
    assert failures["left"] == 0
    failed = [e for e in cap if e["event"] == health.ACCEPT_FAILED]
    assert [(e["count"], e["error"], e["log_level"]) for e in failed] == [(1, "EMFILE", "error")]


def test_throttled_reports_the_first_at_once_then_a_count_per_interval() -> None:
    now = [0.0]
    throttled = Throttled(60, clock=lambda: now[0])
    assert throttled.due() == 0
    assert throttled.note() == 1
    assert [throttled.note() for _ in range(500)] == [0] * 500
    now[0] = 59.9
    assert throttled.due() == 0
    now[0] = 60.0
    assert throttled.due() == 500
    assert throttled.due() == 0
    now[0] = 200.0
    assert throttled.note() == 1
