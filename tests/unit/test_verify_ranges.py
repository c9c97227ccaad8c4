"""``cefmp4 verify`` reading a streaming store (issue 23): each range hashed as it arrives,
ranges requested ahead and closed on every way out, a range of the wrong length an error."""

from __future__ import annotations

import hashlib
import os

import pytest

from cefmp4.cli import verify as verify_mod
from cefmp4.cli.verify import StreamingStore, read_digests
from cefmp4.core.hashing import crc64_b64, crc64nvme
from cefmp4.runtime.errors import CefmpError
from cefmp4.storage import ObjectInfo

KEY = "streams/cam1/a.mp4"


class _Body:
    def __init__(self, store: _Streaming, data: bytes, piece: int) -> None:
        self._store, self._data, self._piece = store, data, piece
        self.closed = False

    async def read(self, size: int) -> bytes:
        # Arrives in small pieces, as from a socket, whatever ``size`` asks for.
        chunk = self._data[: min(size, self._piece)]
        self._data = self._data[len(chunk):]
        return chunk

    async def aclose(self) -> None:
        self.closed = True


class _Streaming:
    """A store with ``open_range``; ``extra`` bytes added to one range's body."""

    bucket = "b"

    def __init__(self, data: bytes, *, piece: int = 1000, extra: dict[int, int] | None = None):
        self.data, self.piece, self.extra = data, piece, extra or {}
        self.opened: list[_Body] = []

    async def head_object(self, key: str) -> ObjectInfo | None:
        return ObjectInfo(len(self.data), "etag")

    async def get_object(self, key: str) -> bytes:
        raise AssertionError("a streaming store's video is read with open_range")

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        raise AssertionError("a streaming store's video is read with open_range")

    async def list_keys(self, prefix: str) -> list[str]:
        return [KEY]

    async def open_range(self, key: str, start: int, end: int) -> _Body:
        body = self.data[start:end]
        extra = self.extra.get(start, 0)
        body = body[:extra] if extra < 0 else body + b"x" * extra
        self.opened.append(_Body(self, body, self.piece))
        return self.opened[-1]


@pytest.fixture(autouse=True)
def _small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_mod, "RANGE", 10_000)
    monkeypatch.setattr(verify_mod, "READ", 4096)


async def test_a_streamed_object_hashes_as_it_arrives() -> None:
    data = os.urandom(95_001)
    store = _Streaming(data)
    assert isinstance(store, StreamingStore)
    seen: list[int] = []
    digests = await read_digests(store, KEY, len(data), seen.append)
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    assert digests.crc64nvme == crc64_b64(crc64nvme(data))
    assert sum(seen) == len(data)
    assert max(seen) <= 1000
    assert len(store.opened) == 10
    assert all(body.closed for body in store.opened)


@pytest.mark.parametrize("extra", [-1, 1], ids=["short", "long"])
async def test_a_range_of_the_wrong_length_is_an_error_and_every_body_is_closed(
    extra: int,
) -> None:
    data = os.urandom(95_001)
    store = _Streaming(data, extra={20_000: extra})
    with pytest.raises(CefmpError, match="short range at byte 20000"):
        await read_digests(store, KEY, len(data))
    # The broken range, the two before it and those opened ahead: all released.
    assert 3 <= len(store.opened) <= 3 + verify_mod.WINDOW
    assert all(body.closed for body in store.opened)


async def test_at_most_window_ranges_are_requested_ahead() -> None:
    data = os.urandom(95_001)
    store = _Streaming(data)
    ahead: list[int] = []

    def count(_n: int) -> None:
        ahead.append(sum(not body.closed for body in store.opened))

    await read_digests(store, KEY, len(data), count)
    assert max(ahead) == verify_mod.WINDOW + 1
