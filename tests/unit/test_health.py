"""The health server, over real loopback sockets."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from structlog.testing import capture_logs

from cefmp4 import logs
from cefmp4.health import serve_health
from cefmp4.metrics import Metrics

HOST = "127.0.0.1"


async def request(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return int(status_line.split(" ")[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await request(port, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def ok() -> None:
    return None


async def test_healthz_and_metrics() -> None:
    metrics = Metrics()
    metrics.chunks_uploaded.inc(3)
    async with serve_health(host=HOST, port=0, metrics=metrics, checks={}) as server:
        assert server.port > 0
        status, headers, body = await get(server.port, "/healthz")
        assert status == 200
        assert json.loads(body) == {"status": "ok"}
        assert headers["content-type"] == "application/json"

        status, headers, body = await get(server.port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        assert b"video_chunks_uploaded_total 3.0" in body


async def test_readyz_flips_when_a_check_fails() -> None:
    down: dict[str, Exception | None] = {"s3": None}

    async def s3() -> None:
        if down["s3"] is not None:
            raise down["s3"]

    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={"s3": s3, "checkpoint_store": ok}
    ) as server:
        status, _, body = await get(server.port, "/readyz")
        assert status == 200
        assert json.loads(body) == {
            "status": "ready", "checks": {"s3": "ok", "checkpoint_store": "ok"}
        }

        down["s3"] = ConnectionRefusedError("connection refused")
        status, _, body = await get(server.port, "/readyz")
        assert status == 503
        doc = json.loads(body)
        assert doc["status"] == "unavailable"
        assert doc["checks"]["checkpoint_store"] == "ok"
        assert doc["checks"]["s3"] == "down: connection refused"

        down["s3"] = None
        status, _, _ = await get(server.port, "/readyz?verbose=1")
        assert status == 200


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
        status, _, body = await get(server.port, "/readyz")
        elapsed = time.monotonic() - started
    assert status == 503
    doc = json.loads(body)["checks"]
    assert doc["a"].startswith("down: ")
    assert "0.5" in doc["a"]
    assert doc["c"] == "ok"
    assert elapsed < 1.4  # concurrently: not 0.5 + 0.5 + 0.2


async def test_readyz_error_text_has_no_password() -> None:
    logs.set_secrets(["topsecret"])

    async def redis() -> None:
        raise OSError("cannot reach redis://:pw123@redis:6379/0 with topsecret")

    try:
        async with serve_health(
            host=HOST, port=0, metrics=Metrics(), checks={"checkpoint_store": redis}
        ) as server:
            status, _, body = await get(server.port, "/readyz")
    finally:
        logs.set_secrets(())
    assert status == 503
    assert b"pw123" not in body
    assert b"topsecret" not in body
    assert b"redis://:***@redis:6379/0" in body


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
        status, headers, _ = await get(server.port, path, method)
    assert status == expected
    if expected == 405:
        assert headers["allow"] == "GET"


async def test_malformed_request_is_400_and_server_keeps_serving() -> None:
    async with serve_health(host=HOST, port=0, metrics=Metrics(), checks={}) as server:
        status, _, _ = await request(server.port, b"garbage\r\n\r\n")
        assert status == 400
        status, _, _ = await request(server.port, b"GET /healthz HTTP/1.1\r\n"
                                     + b"X: " + b"a" * 40_000 + b"\r\n\r\n")
        assert status == 431
        status, _, _ = await get(server.port, "/healthz")
        assert status == 200


async def test_slow_client_does_not_block_others() -> None:
    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={}, read_timeout=0.5
    ) as server:
        # A client that connects and never finishes its request.
        reader, writer = await asyncio.open_connection(HOST, server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")
        await writer.drain()
        started = time.monotonic()
        status, _, _ = await get(server.port, "/healthz")
        assert status == 200
        assert time.monotonic() - started < 0.4
        # The stalled one is answered 408 and closed once the read timeout passes.
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 408 ")
        writer.close()
        await writer.wait_closed()


async def test_silent_client_does_not_hang_shutdown() -> None:
    async with serve_health(host=HOST, port=0, metrics=Metrics(), checks={}) as server:
        _, writer = await asyncio.open_connection(HOST, server.port)
        await asyncio.sleep(0.05)
        started = time.monotonic()
    assert time.monotonic() - started < 1
    writer.close()


async def test_concurrent_requests() -> None:
    async def slow() -> None:
        await asyncio.sleep(0.3)

    async with serve_health(
        host=HOST, port=0, metrics=Metrics(), checks={"s3": slow}
    ) as server:
        started = time.monotonic()
        results = await asyncio.gather(
            *(get(server.port, p) for p in ["/readyz", "/healthz", "/metrics"] * 10)
        )
        elapsed = time.monotonic() - started
    assert [r[0] for r in results] == [200] * 30
    assert elapsed < 2  # thirty readiness-dependent requests, not 10 x 0.3 s in a row


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
            status, _, _ = await get(server.port, "/metrics")
        assert status == 500
        assert calls["n"] == 1
        assert any(e["event"] == "error" and e["log_level"] == "error" for e in cap)
        status, _, _ = await get(server.port, "/healthz")
        assert status == 200
