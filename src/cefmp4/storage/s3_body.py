"""How a body travels. Up: a part as an aiohttp payload that streams it, paced
(``storage.pacing``), and keeps read errors apart. Down: a ranged GetObject's body, read as
it arrives (``RangeBody``)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp.payload
import crc32c

from cefmp4.runtime.errors import SourceError
from cefmp4.storage import PartBody
from cefmp4.storage.pacing import paced_write
from cefmp4.storage.s3_errors import MAPPED as _MAPPED
from cefmp4.storage.s3_errors import raise_mapped as _raise

_Bytes = bytes | bytearray | memoryview


def crc32c_b64(data: bytes | bytearray | memoryview) -> str:
    """The ``x-amz-checksum-crc32c`` value of ``data``: big-endian CRC32C, base64."""
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode("ascii")

# Bytes per executor hop when streaming a file-like part body. aiohttp's own file payload
# reads 256 KiB per hop; four times that cuts the thread hand-offs (and the wake-ups of the
# event loop they cost) by four while a hop's buffer stays small next to a part.
_BODY_READ = 1024 * 1024


class PartPayload(aiohttp.payload.Payload):
    """A part body as an aiohttp payload: streamed in 1 MiB reads, errors kept apart.

    aiohttp reports any exception from a request body as a broken connection, which
    aiobotocore turns into ``EndpointConnectionError``: a local read error would look like an
    S3 outage and be retried. The payload records what the body raised so ``upload_part``
    can raise it as the ``SourceError`` it is.
    """

    def __init__(self, body: PartBody) -> None:
        super().__init__(body, content_type=None)
        self._body = body
        self._length = self._size = len(body)
        self.error: SourceError | None = None

    # botocore accepts a blob with ``read`` and may rewind it before a retry.
    def read(self, size: int = -1) -> bytes:
        if isinstance(self._body, bytes):
            return self._body if size < 0 else self._body[:size]
        return self._body.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0 if isinstance(self._body, bytes) else self._body.seek(offset, whence)

    def tell(self) -> int:
        return 0 if isinstance(self._body, bytes) else self._body.tell()

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a part body is binary")

    async def write(self, writer: Any) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        size = self._length if content_length is None else min(self._length, content_length)
        body = self._body
        if isinstance(body, bytes):
            await paced_write(writer.write, memoryview(body)[:size])
            return
        loop = asyncio.get_running_loop()
        # Optional on a body: bytes the page cache holds, read without blocking (None when
        # they are not cached). The part was just hashed, so they almost always are, and
        # the read needs no thread hop.
        cached = getattr(body, "read_cached", None)
        body.seek(0)  # a body resent on the same payload starts from its first byte
        sent = 0
        while sent < size:
            want = min(_BODY_READ, size - sent)
            chunk = self._read(cached, want) if cached is not None else None
            if not chunk:
                # ``_read`` raises on an empty read: the body ended before its length.
                chunk = await loop.run_in_executor(None, self._read, body.read, want) or b""
            # UPLOAD_BWLIMIT: paced as it goes on the wire (one test when no limit is set).
            await paced_write(writer.write, chunk)
            sent += len(chunk)

    def _read(self, read: Callable[[int], _Bytes | None], size: int) -> _Bytes | None:
        """``read(size)``; whatever it raises is recorded as this body's SourceError."""
        try:
            chunk = read(size)
            if chunk is not None and not chunk:
                end = self._body.tell() if not isinstance(self._body, bytes) else 0
                raise SourceError(f"part body ended after {end} of {self._length} bytes")
        except SourceError as exc:
            self.error = exc
            raise
        except Exception as exc:
            self.error = SourceError(f"reading the part body failed: {type(exc).__name__}: {exc}")
            raise self.error from exc
        return chunk


class _Stream(Protocol):
    """What ``RangeBody`` uses of aiobotocore's ``StreamingBody``."""

    async def read(self, amt: int | None = None) -> bytes: ...
    def close(self) -> None: ...


class RangeBody:
    """The body of a ranged GetObject, read ``read(size)`` at a time as it arrives.

    Until it is read, aiohttp holds at most its own small buffer (64-128 KiB) and then
    stops reading the socket: a range opened ahead costs its request's latency once, not
    memory, and its bytes are handed over as the socket gives them (not joined into one
    ``bytes`` of the whole range first). ``read`` raises what ``S3ObjectStore`` raises for
    any GetObject; a body shorter than its Content-Length is an error there too
    (aiobotocore checks it at the end).
    """

    def __init__(self, stream: _Stream, length: int) -> None:
        self._stream = stream
        self.length = length  # bytes the server said it sends (Content-Length)

    async def read(self, size: int) -> bytes:
        """Up to ``size`` bytes, as soon as any are there; ``b""`` at the end."""
        try:
            return await self._stream.read(size)
        except _MAPPED as exc:
            _raise(exc, "GetObject")

    async def aclose(self) -> None:
        """Release the connection (closed, not reused, when the body was not read to its end)."""
        self._stream.close()

    async def __aenter__(self) -> RangeBody:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
