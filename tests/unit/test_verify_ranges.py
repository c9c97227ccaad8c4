"""``cefmp4 verify`` reading a streaming store (issue 23): each range hashed as it arrives,
ranges requested ahead and closed on every way out, read ahead only when reads return
little at a time (the network is the bottleneck), a range of the wrong length an error."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from cefmp4.cli import verify as verify_mod
from cefmp4.cli.verify import StreamingStore, read_digests
from cefmp4.core.hashing import crc64_b64, crc64nvme
from cefmp4.runtime.errors import CefmpError, TransientError
from cefmp4.storage import ObjectInfo

KEY = "streams/cam1/a.mp4"


class _Body:
    def __init__(self, store: _Streaming, start: int, data: bytes) -> None:
        self._store, self._start, self._data = store, start, data
        self.closed = False

    async def read(self, size: int) -> bytes:
        await asyncio.sleep(0)  # the network
        if self._start == self._store.fail:
            raise TransientError("GetObject failed: connection reset")
        self._store.reads.append(self._start)
        # Arrives in small pieces, as from a socket, whatever ``size`` asks for.
        chunk = self._data[: min(size, self._store.piece)]
        self._data = self._data[len(chunk):]
        return chunk

    async def aclose(self) -> None:
        self.closed = True


class _Streaming:
    """A store with ``open_range``; ``extra`` bytes added to one range's body."""

    bucket = "b"

    def __init__(self, data: bytes, *, piece: int = 1000, extra: dict[int, int] | None = None,
                 fail: int = -1):
        self.data, self.piece, self.extra, self.fail = data, piece, extra or {}, fail
        self.opened: list[_Body] = []
        self.reads: list[int] = []  # the range (its first byte) of each read, in order

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
        self.opened.append(_Body(self, start, body))
        return self.opened[-1]


@pytest.fixture(autouse=True)
def _small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_mod, "RANGE", 10_000)
    monkeypatch.setattr(verify_mod, "READ", 2000)  # ahead can start within a range


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


@pytest.mark.parametrize(("bound", "ahead"), [(500, False), (10_000, True)],
                         ids=["hashing-bound", "network-bound"])
async def test_ranges_are_read_ahead_only_while_reads_return_little(
    monkeypatch: pytest.MonkeyPatch, bound: int, ahead: bool
) -> None:
    """1000-byte reads: hashing-bound when that is over ``NETWORK_BOUND``, so each range
    is read in its turn; network-bound under it, so the ranges ahead are read at once."""
    monkeypatch.setattr(verify_mod, "NETWORK_BOUND", bound)
    data = os.urandom(95_001)
    store = _Streaming(data)
    digests = await read_digests(store, KEY, len(data))
    assert digests.sha256 == hashlib.sha256(data).hexdigest()
    in_turn = store.reads == sorted(store.reads)
    assert in_turn is not ahead
    assert all(body.closed for body in store.opened)


async def test_an_error_of_a_range_read_ahead_is_raised_and_every_body_closed() -> None:
    data = os.urandom(95_001)
    store = _Streaming(data, fail=30_000)  # 1000-byte reads: network-bound, read ahead
    with pytest.raises(TransientError, match="connection reset"):
        await read_digests(store, KEY, len(data))
    assert min(store.reads) == 0
    assert all(body.closed for body in store.opened)
