"""Notification sinks of the outbox (§2.16): an HTTP webhook and a Redis stream.

HTTP status policy of the webhook (``classify_status``):

* 2xx — delivered as soon as the status line says so. The body is never read (a huge one
  would fill the memory, a slow one would hold the queue): the connection is closed rather
  than waited on.
* 400, 413, 415, 422 — the receiver rejects *this document*: permanent. The item is marked
  failed in the outbox (kept for inspection, never retried) and the queue moves on.
* everything else — 3xx (redirects are not followed: a POST must not silently turn into a
  GET elsewhere; fix the URL), 401/403/404 (wrong URL or secret: nothing is dropped while
  the operator fixes it), 408, 409 (same Idempotency-Key still being processed), 425, 429,
  5xx, timeouts and connection errors — retried without limit.
* a URL the HTTP client refuses (a malformed host; the settings reject these at start-up)
  — permanent: each item fails once, logged once, instead of being retried for ever.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from cefmp4.after.outbox import SINK_REDIS, SINK_WEBHOOK, OutboxItem
from cefmp4.runtime.errors import PermanentError, TransientError

SIGNATURE_HEADER = "X-Cefmp4-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
WEBHOOK_TIMEOUT_S = 10.0
PERMANENT_STATUSES = frozenset({400, 413, 415, 422})


# --- webhook ------------------------------------------------------------------------------


def signature(secret: bytes, body: bytes) -> str:
    """The ``X-Cefmp4-Signature`` value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def webhook_headers(stream_id: str, body: bytes, secret: bytes | None) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        IDEMPOTENCY_HEADER: stream_id,
        "User-Agent": "cefmp4",
    }
    if secret:
        headers[SIGNATURE_HEADER] = signature(secret, body)
    return headers


def classify_status(status: int) -> str:
    """``"ok"``, ``"permanent"`` or ``"retry"`` for an HTTP status (policy in the docstring)."""
    if 200 <= status < 300:
        return "ok"
    if status in PERMANENT_STATUSES:
        return "permanent"
    return "retry"


class WebhookSink:
    """POST the metadata JSON with aiohttp. The URL (it may hold a token) is never logged."""

    name = SINK_WEBHOOK

    def __init__(
        self, url: str, secret: bytes | None = None, *, timeout: float = WEBHOOK_TIMEOUT_S
    ) -> None:
        self._url = url
        self._secret = secret or None
        self._timeout = timeout
        self._session: Any = None

    async def __aenter__(self) -> WebhookSink:
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout, connect=min(5.0, self._timeout)),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def deliver(self, item: OutboxItem) -> None:
        import aiohttp

        if self._session is None:
            raise RuntimeError("WebhookSink used outside its context")
        headers = webhook_headers(item.stream_id, item.payload, self._secret)
        try:
            async with self._session.post(
                self._url, data=item.payload, headers=headers, allow_redirects=False
            ) as resp:
                # The status line decides; the body is never read. A huge one would fill
                # the memory, a slow one would hold the queue (and a 2xx is delivered
                # whatever the body does next). Leaving the block releases the connection:
                # pooled when the body already came whole, closed otherwise.
                status = resp.status
        # The exception text may contain the URL: name only its class.
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            raise _unusable_url(exc) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"webhook unreachable ({type(exc).__name__})") from None
        except ValueError as exc:
            # What the client refuses to send (UnicodeError: a host that cannot be
            # IDNA-encoded) fails the same way every time. Caught after ClientError, since a
            # certificate error is a ValueError too and clears once the receiver fixes it.
            raise _unusable_url(exc) from None
        verdict = classify_status(status)
        if verdict == "permanent":
            raise PermanentError(f"webhook rejected the document with HTTP {status}")
        if verdict == "retry":
            raise TransientError(f"webhook answered HTTP {status}")


def _unusable_url(exc: Exception) -> PermanentError:
    return PermanentError(
        f"webhook URL cannot be used ({type(exc).__name__}); check NOTIFY_WEBHOOK_URL"
    )


# --- Redis stream -------------------------------------------------------------------------


class RedisStreamSink:
    """``XADD <stream> * stream_id <id> metadata <json>`` on the given redis.asyncio client."""

    name = SINK_REDIS

    def __init__(self, client: Any, stream: str) -> None:
        self._client = client
        self._stream = stream

    async def deliver(self, item: OutboxItem) -> None:
        import redis.exceptions

        try:
            await self._client.xadd(
                self._stream, {"stream_id": item.stream_id, "metadata": item.payload}
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as exc:
            raise TransientError(f"notify redis stream: {type(exc).__name__}") from None
        except redis.exceptions.ResponseError as exc:
            text = str(exc)
            if text.startswith(("LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "READONLY")):
                raise TransientError(f"notify redis stream: {text[:80]}") from None
            # WRONGTYPE (the key is not a stream) and the like need the operator.
            raise TransientError(f"notify redis stream rejected XADD: {text[:120]}") from None
