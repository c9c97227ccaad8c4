"""The webhook and Redis-stream sinks against a real aiohttp server and redis-server."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from pathlib import Path

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from cefmp4.after.notify import RedisStreamSink, WebhookSink
from cefmp4.after.outbox import NOTIFY_SINKS, Dispatcher, OutboxItem
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.runtime.errors import PermanentError, TransientError
from cefmp4.runtime.retry import Backoff
from tests.contract.test_checkpoint_store import make_stream
from tests.support.proc import free_port
from tests.support.webhook import WebhookReceiver

BODY = json.dumps({"stream_id": "sid-1", "status": "complete"}).encode()
ITEM = OutboxItem(1, "webhook", "sid-1", BODY, 0.0)


async def test_post_carries_json_idempotency_key_and_signature() -> None:
    async with WebhookReceiver() as rx, WebhookSink(rx.url, b"s3cret") as sink:
        await sink.deliver(ITEM)
        [got] = rx.received
    assert got.body == BODY
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Idempotency-Key"] == "sid-1"
    want = "sha256=" + hmac.new(b"s3cret", BODY, hashlib.sha256).hexdigest()
    assert got.headers["X-Cefmp4-Signature"] == want


async def test_no_secret_no_signature() -> None:
    async with WebhookReceiver() as rx, WebhookSink(rx.url) as sink:
        await sink.deliver(ITEM)
    assert "X-Cefmp4-Signature" not in rx.received[0].headers


@pytest.mark.parametrize(("status", "error"), [(500, TransientError), (503, TransientError),
                                               (429, TransientError), (404, TransientError),
                                               (400, PermanentError), (422, PermanentError)])
async def test_http_errors_are_classified(status: int, error: type[Exception]) -> None:
    async with WebhookReceiver(statuses=[status]) as rx, WebhookSink(rx.url) as sink:
        with pytest.raises(error, match=str(status)):
            await sink.deliver(ITEM)


async def test_redirects_are_not_followed() -> None:
    async with WebhookReceiver() as target, WebhookReceiver(redirect_to=target.url) as rx, \
            WebhookSink(rx.url) as sink:
        with pytest.raises(TransientError, match="307"):
            await sink.deliver(ITEM)
    assert not target.received


async def test_receiver_down_is_transient_and_names_no_url() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook?token=tok3n"
    async with WebhookSink(url, timeout=2) as sink:
        with pytest.raises(TransientError) as err:
            await sink.deliver(ITEM)
    assert "tok3n" not in str(err.value)
    assert "127.0.0.1" not in str(err.value)


async def test_a_hanging_receiver_times_out() -> None:
    import asyncio

    from aiohttp import web

    release = asyncio.Event()

    async def hang(_request: web.Request) -> web.Response:
        await release.wait()
        return web.Response()

    app = web.Application()
    app.router.add_post("/hook", hang)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with WebhookSink(f"http://127.0.0.1:{port}/hook", timeout=0.5) as sink:
            with pytest.raises(TransientError, match="Timeout"):
                await sink.deliver(ITEM)
    finally:
        release.set()
        await runner.cleanup()


async def test_a_huge_answer_body_is_never_read() -> None:
    # 128 MiB offered; the client may only hold what the socket buffers take before it hangs
    # up (the review saw 300 MiB of body take RSS from 78 to 680 MiB).
    async with WebhookReceiver(body="flood") as rx, WebhookSink(rx.url, timeout=5) as sink:
        await sink.deliver(ITEM)
        await rx.wait_for(lambda _: rx.streamed == 1, timeout=10)
    assert rx.body_sent < 32 * 1024 * 1024
    assert rx.hung_up == 1  # the client closed the connection rather than read on


async def _dispatch(tmp_path: Path, sink: WebhookSink, stream_ids: list[str]) -> Dispatcher:
    """A real SQLite outbox holding one webhook item per stream id, delivered by ``drain``."""
    async with open_sqlite_store(tmp_path / "state") as store:
        for sid in stream_ids:
            await store.put_stream_with_outbox(make_stream(sid), [("webhook", BODY)], 1.0)
        dispatcher = Dispatcher(store, [sink], backoff=Backoff(initial=0.01, maximum=0.05))
        await dispatcher.drain()
        assert await store.outbox_count(NOTIFY_SINKS) == 0
    return dispatcher


async def test_a_2xx_with_a_slow_body_is_delivered_once_and_promptly(tmp_path: Path) -> None:
    timeout = 4.0
    async with WebhookReceiver(body="trickle") as rx, \
            WebhookSink(rx.url, timeout=timeout) as sink:
        async with asyncio.timeout(timeout / 4):  # well before the timeout could fire
            dispatcher = await _dispatch(tmp_path, sink, ["s1", "s2"])
            await rx.wait_for(lambda _: rx.hung_up == 2)  # the client closed both
    assert [r.headers["Idempotency-Key"] for r in rx.received] == ["s1", "s2"]  # once each
    assert dispatcher.delivered == 2


@pytest.mark.parametrize(
    "url",
    ["http://user:hunter2@ex..ample/hook?token=tok3n",  # UnicodeError from the resolver
     "http://user:hunter2@exämple..de/hook?token=tok3n",  # yarl's, as InvalidUrlClientError
     "http://user:hunter2@host:99999/hook?token=tok3n",  # InvalidUrlClientError
     "ftp://user:hunter2@host/hook?token=tok3n"],  # NonHttpUrlClientError
)
async def test_an_unusable_url_fails_for_good_once_and_names_no_secret(
    tmp_path: Path, url: str
) -> None:
    # Settings refuse these; one that slips through must not be retried for ever. (aiohttp's
    # own text of these errors is the whole URL, password included.)
    async with WebhookSink(url) as sink:
        with pytest.raises(PermanentError) as err:
            await sink.deliver(ITEM)
        for secret in ("hunter2", "tok3n", "ample", "host"):
            assert secret not in str(err.value)
        with capture_logs() as events:
            async with asyncio.timeout(5):
                await _dispatch(tmp_path, sink, ["s1"])
    assert [e["event"] for e in events if e["log_level"] != "debug"] == ["delivery_failed"]
    assert "hunter2" not in repr(events)


async def test_an_untrusted_certificate_stays_transient(tmp_path: Path) -> None:
    # aiohttp's certificate error is a ValueError too; the receiver can fix it, so nothing
    # may be dropped meanwhile (unlike a URL the client refuses).
    import datetime
    import ipaddress
    import ssl

    from aiohttp import web
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )  # self-signed: no trusted CA vouches for it
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    runner = web.AppRunner(web.Application(), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=tls).start()
    try:
        async with WebhookSink(f"https://127.0.0.1:{port}/hook", timeout=5) as sink:
            with pytest.raises(TransientError, match="Certificate"):
                await sink.deliver(ITEM)
    finally:
        await runner.cleanup()


async def test_redis_stream_xadd(redis_url: str) -> None:
    client = redis.asyncio.from_url(redis_url, decode_responses=True)
    stream = f"test-notify-{free_port()}"
    try:
        await RedisStreamSink(client, stream).deliver(ITEM)
        [(_id, fields)] = await client.xrange(stream)
        assert fields == {"stream_id": "sid-1", "metadata": BODY.decode()}
        await client.set(stream + "-str", "x")
        with pytest.raises(TransientError, match="WRONGTYPE"):
            await RedisStreamSink(client, stream + "-str").deliver(ITEM)
    finally:
        await client.delete(stream, stream + "-str")
        await client.aclose()


async def test_redis_down_is_transient() -> None:
    client = redis.asyncio.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1,
                                    socket_connect_timeout=1)
    try:
        with pytest.raises(TransientError):
            await RedisStreamSink(client, "s").deliver(ITEM)
    finally:
        await client.aclose()
