"""The Redis checkpoint store: production, and the shared state of several instances.

Layout (``{p}`` is the key prefix, ``cefmp4:`` by default)::

    {p}stream:{id}   hash: the StreamRecord's fields; a None field is absent from the hash
    {p}parts:{id}    hash: part_number -> compact JSON of the PartRecord's other fields
    {p}streams       set: every stream id (the index ``list_streams`` reads)

A record and its index change together: ``put_stream`` and ``delete_stream`` are MULTI/EXEC
transactions, ``put_part`` is one Lua script (atomic like MULTI/EXEC, and it can make the
``last_activity_at`` touch conditional without a read round trip). Values are strings;
``_FIELD_TYPES`` turns them back into ``int``, ``float``, ``StreamState`` or ``str``.

    {p}inode:{ino}   set: ids of the streams of the file with that inode (find_by_inode)

Scale-out (SPEC §2.11): a file's streams are owned through ``{p}lease:{ino}`` (the owner's
instance id, with a TTL) and fenced by ``{p}fence:{ino}``, a counter bumped for every new
owner. Once a stream is ``fence``d, each of its writes runs as a Lua script that first
compares the caller's token with the counter and fails with ``LeaseLost`` when a newer owner
has taken over, so a paused or partitioned former owner can never overwrite its progress.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import fields
from typing import Any, Final

import redis.asyncio
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.typing import EncodableT

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.errors import ConfigError, LeaseLost, PermanentError, TransientError
from cefmp4.outbox import OutboxItem

__all__ = ["RedisCheckpointStore", "open_redis_store"]

# How each StreamRecord field is parsed back from its hash string.
_FIELD_TYPES: Final[dict[str, type]] = {
    "stream_id": str, "path": str, "rel_path": str, "device": int, "inode": int,
    "bucket": str, "key": str, "part_size": int, "max_parts": int, "state": StreamState,
    "started_at": float, "last_activity_at": float, "upload_id": str, "status": str,
    "completed_at": float, "final_size": int, "final_mtime_ns": int, "sha256": str,
    "error": str, "completed_by": str,
}  # fmt: skip
assert set(_FIELD_TYPES) == {f.name for f in fields(StreamRecord)}

# HSET the part; raise the stream's last_activity_at to uploaded_at if that is later. A
# stream hash that does not exist is not created (it would lack every other field).
# Lua numbers are doubles, like Python floats, and ARGV[3] is repr(float), so the stored
# value round-trips exactly.
_PUT_PART_LUA = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[4] then
    return redis.error_reply('LEASELOST')
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local current = redis.call('HGET', KEYS[2], 'last_activity_at')
if current and tonumber(current) < tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[2], 'last_activity_at', ARGV[3])
end
return 1
"""

# put_stream as one script so it can be fenced: KEYS stream hash, index set, inode set,
# fence counter; ARGV token ('' = unfenced), stream id, then field/value pairs.
_PUT_STREAM_LUA = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[1] then
    return redis.error_reply('LEASELOST')
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return 1
"""

# put_stream plus outbox items (cefmp4.notify), atomically. KEYS: stream hash, index set,
# inode set, fence counter, outbox sequence counter, then per item its sink's sorted set and
# its item hash. ARGV: token, stream id, created_at, item count, the items' (sink, payload)
# pairs, then the record's field/value pairs. An item that exists already keeps its seq.
_PUT_STREAM_OUTBOX_LUA = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[1] then
    return redis.error_reply('LEASELOST')
end
local n = tonumber(ARGV[4])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 5 + 2 * n))
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
for i = 1, n do
    local zset, item = KEYS[4 + 2 * i], KEYS[5 + 2 * i]
    if redis.call('EXISTS', item) == 0 then
        local seq = redis.call('INCR', KEYS[5])
        redis.call('HSET', item, 'sink', ARGV[3 + 2 * i], 'payload', ARGV[4 + 2 * i],
                   'created_at', ARGV[3], 'seq', seq)
        redis.call('ZADD', zset, seq, ARGV[2])
    end
end
return 1
"""

# The one outbox dispatcher: KEYS claim; ARGV owner, ttl in ms. Renew if ours, else take
# it if free.
_OUTBOX_CLAIM_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return 1
end
return 0
"""

_DELETE_PARTS_LUA = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then
    return redis.error_reply('LEASELOST')
end
return redis.call('DEL', KEYS[1])
"""

# Leases: KEYS lease, fence; ARGV owner, ttl in ms.
_ACQUIRE_LUA = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(redis.call('GET', KEYS[2]))
end
if holder then
    return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return token
"""

# Take over from a given holder only (one known to be dead): KEYS lease, fence;
# ARGV old owner, new owner, ttl in ms.
_STEAL_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return token
"""

_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# list_streams reads the hashes in pipelines of this many commands: one round trip for a
# thousand streams, bounded memory for a million.
_BATCH = 1000

# Error replies that mean "not now" rather than "never": a replica being promoted, memory
# full, a failed RDB save blocking writes, a busy script, a cluster resharding.
_TRANSIENT_REPLIES = ("MISCONF", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


def _text(value: bytes | str) -> str:
    # The client decodes responses (decode_responses=True); redis-py's types do not know.
    return value.decode() if isinstance(value, bytes) else value


def _text_dict(raw: Mapping[bytes | str, bytes | str]) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _encode(value: Any) -> str:
    if isinstance(value, StreamState):
        return value.value
    if isinstance(value, float):
        return repr(value)  # shortest string that parses back to the same float
    return str(value)


def _encode_record(record: StreamRecord) -> dict[EncodableT, EncodableT]:
    out: dict[EncodableT, EncodableT] = {}
    for name, kind in _FIELD_TYPES.items():
        value = getattr(record, name)
        if value is not None:
            out[name] = _encode(float(value) if kind is float else value)
    return out


def _decode_record(raw: Mapping[str, str]) -> StreamRecord:
    values: dict[str, Any] = {}
    for name, kind in _FIELD_TYPES.items():
        text = raw.get(name)
        values[name] = None if text is None else kind(text)
    return StreamRecord(**values)


def _encode_part(part: PartRecord) -> str:
    return json.dumps(
        {"offset": part.offset, "size": part.size, "etag": part.etag, "md5": part.md5,
         "uploaded_at": float(part.uploaded_at)},
        separators=(",", ":"),
    )  # fmt: skip


def _decode_part(part_number: str, text: str) -> PartRecord:
    data = json.loads(text)
    return PartRecord(
        part_number=int(part_number), offset=data["offset"], size=data["size"],
        etag=data["etag"], md5=data["md5"], uploaded_at=float(data["uploaded_at"]),
    )  # fmt: skip


@contextmanager
def _mapped_errors(operation: str) -> Iterator[None]:
    """Turn redis-py's exceptions into cefmp4's. Messages never contain the URL."""
    try:
        yield
    except (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError) as exc:
        raise PermanentError(f"redis {operation}: access refused: {exc}") from exc
    except (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError,
            rexc.OutOfMemoryError, rexc.TryAgainError, OSError) as exc:  # fmt: skip
        # BusyLoadingError is a ConnectionError; asyncio.TimeoutError is an OSError.
        raise TransientError(f"redis {operation}: {type(exc).__name__}: {exc}") from exc
    except rexc.ResponseError as exc:
        if "LEASELOST" in str(exc):
            raise LeaseLost(f"redis {operation}: another instance owns the stream now") from exc
        if str(exc).startswith(_TRANSIENT_REPLIES):
            raise TransientError(f"redis {operation}: {exc}") from exc
        raise PermanentError(f"redis {operation}: {exc}") from exc


class RedisCheckpointStore:
    """``CheckpointStore`` on Redis. Build it with ``open_redis_store``."""

    def __init__(self, client: redis.asyncio.Redis, key_prefix: str = "cefmp4:") -> None:
        self._client = client
        self._prefix = key_prefix
        self._index = f"{key_prefix}streams"
        self._put_part_script = client.register_script(_PUT_PART_LUA)
        self._put_stream_script = client.register_script(_PUT_STREAM_LUA)
        self._delete_parts_script = client.register_script(_DELETE_PARTS_LUA)
        self._acquire_script = client.register_script(_ACQUIRE_LUA)
        self._renew_script = client.register_script(_RENEW_LUA)
        self._steal_script = client.register_script(_STEAL_LUA)
        self._release_script = client.register_script(_RELEASE_LUA)
        self._put_outbox_script = client.register_script(_PUT_STREAM_OUTBOX_LUA)
        self._outbox_claim_script = client.register_script(_OUTBOX_CLAIM_LUA)
        # stream id -> (fence key, token) of the streams this process owns.
        self._fences: dict[str, tuple[str, str]] = {}

    @property
    def client(self) -> redis.asyncio.Redis:
        """The connection pool, shared with the NOTIFY_REDIS_STREAM sink."""
        return self._client

    def __repr__(self) -> str:  # the client's repr would show host and port, never more
        return f"RedisCheckpointStore(key_prefix={self._prefix!r})"

    def _stream_key(self, stream_id: str) -> str:
        return f"{self._prefix}stream:{stream_id}"

    def _parts_key(self, stream_id: str) -> str:
        return f"{self._prefix}parts:{stream_id}"

    def _inode_key(self, inode: int) -> str:
        return f"{self._prefix}inode:{inode}"

    def _fence_key(self, inode: int) -> str:
        return f"{self._prefix}fence:{inode}"

    def _lease_key(self, inode: int) -> str:
        return f"{self._prefix}lease:{inode}"

    def _fence_of(self, stream_id: str) -> tuple[str, str]:
        return self._fences.get(stream_id, (f"{self._prefix}fence:none", ""))

    async def ping(self) -> None:
        with _mapped_errors("ping"):
            await self._client.ping()

    async def put_stream(self, record: StreamRecord) -> None:
        fence_key, token = self._fence_of(record.stream_id)
        flat: list[EncodableT] = []
        for name, value in _encode_record(record).items():
            flat += [name, value]
        with _mapped_errors("put_stream"):
            # DEL first so that a field set back to None disappears from the hash.
            await self._put_stream_script(
                keys=[self._stream_key(record.stream_id), self._index,
                      self._inode_key(record.inode), fence_key],
                args=[token, record.stream_id, *flat],
            )  # fmt: skip

    async def find_by_inode(self, inode: int) -> list[StreamRecord]:
        with _mapped_errors("find_by_inode"):
            ids = sorted(map(_text, await self._client.smembers(self._inode_key(inode))))
            async with self._client.pipeline(transaction=False) as pipe:
                for stream_id in ids:
                    pipe.hgetall(self._stream_key(stream_id))
                raws = [_text_dict(raw) for raw in await pipe.execute()] if ids else []
        records = [_decode_record(raw) for raw in raws if raw]
        return sorted(records, key=lambda r: r.started_at)

    # --- leases (SPEC §2.11) ------------------------------------------------------------

    async def acquire(self, inode: int, owner: str, ttl: float) -> int | None:
        with _mapped_errors("acquire_lease"):
            token = await self._acquire_script(
                keys=[self._lease_key(inode), self._fence_key(inode)],
                args=[owner, max(1, int(ttl * 1000))],
            )
        return None if token is None else int(token)

    async def holder(self, inode: int) -> str | None:
        with _mapped_errors("lease_holder"):
            value = await self._client.get(self._lease_key(inode))
        return None if value is None else _text(value)

    async def steal(self, inode: int, old_owner: str, owner: str, ttl: float) -> int | None:
        with _mapped_errors("steal_lease"):
            token = await self._steal_script(
                keys=[self._lease_key(inode), self._fence_key(inode)],
                args=[old_owner, owner, max(1, int(ttl * 1000))],
            )
        return None if token is None else int(token)

    async def renew(self, inode: int, owner: str, ttl: float) -> bool:
        with _mapped_errors("renew_lease"):
            ok = await self._renew_script(
                keys=[self._lease_key(inode)], args=[owner, max(1, int(ttl * 1000))]
            )
        return bool(ok)

    async def release(self, inode: int, owner: str) -> None:
        with _mapped_errors("release_lease"):
            await self._release_script(keys=[self._lease_key(inode)], args=[owner])

    def fence(self, stream_id: str, inode: int, token: int) -> None:
        self._fences[stream_id] = (self._fence_key(inode), str(token))

    def unfence(self, stream_id: str) -> None:
        self._fences.pop(stream_id, None)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        with _mapped_errors("get_stream"):
            raw = _text_dict(await self._client.hgetall(self._stream_key(stream_id)))
        return _decode_record(raw) if raw else None

    async def list_streams(
        self, states: frozenset[StreamState] | None = None
    ) -> list[StreamRecord]:
        if states is not None and not states:
            return []
        out: list[StreamRecord] = []
        with _mapped_errors("list_streams"):
            ordered = sorted(map(_text, await self._client.smembers(self._index)))
            for start in range(0, len(ordered), _BATCH):
                async with self._client.pipeline(transaction=False) as pipe:
                    for stream_id in ordered[start : start + _BATCH]:
                        pipe.hgetall(self._stream_key(stream_id))
                    raws = [_text_dict(raw) for raw in await pipe.execute()]
                # An id whose hash is missing cannot occur through this class (MULTI/EXEC);
                # skip it rather than fail if someone deleted keys by hand.
                for raw in raws:
                    if raw:
                        record = _decode_record(raw)
                        if states is None or record.state in states:
                            out.append(record)
        return out

    async def put_part(self, stream_id: str, part: PartRecord) -> None:
        fence_key, token = self._fence_of(stream_id)
        with _mapped_errors("put_part"):
            await self._put_part_script(
                keys=[self._parts_key(stream_id), self._stream_key(stream_id), fence_key],
                args=[part.part_number, _encode_part(part), repr(float(part.uploaded_at)),
                      token],
            )  # fmt: skip

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        with _mapped_errors("get_parts"):
            raw = _text_dict(await self._client.hgetall(self._parts_key(stream_id)))
        parts = [_decode_part(number, text) for number, text in raw.items()]
        parts.sort(key=lambda p: p.part_number)
        return parts

    async def delete_parts(self, stream_id: str) -> None:
        fence_key, token = self._fence_of(stream_id)
        with _mapped_errors("delete_parts"):
            await self._delete_parts_script(
                keys=[self._parts_key(stream_id), fence_key], args=[token]
            )

    async def delete_stream(self, stream_id: str) -> None:
        with _mapped_errors("delete_stream"):
            record = await self.get_stream(stream_id)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.delete(self._stream_key(stream_id), self._parts_key(stream_id))
                pipe.srem(self._index, stream_id)
                if record is not None:
                    pipe.srem(self._inode_key(record.inode), stream_id)
                await pipe.execute()

    # --- the outbox (cefmp4.notify.Outbox) -----------------------------------------------
    #   {p}outbox-seq              counter: completion order across sinks
    #   {p}outbox:{sink}           sorted set: stream id -> seq, the pending items
    #   {p}outbox-item:{sink}:{id} hash: sink, payload, created_at, seq (failed: error)

    def _outbox_key(self, sink: str) -> str:
        return f"{self._prefix}outbox:{sink}"

    def _outbox_item_key(self, sink: str, stream_id: str) -> str:
        return f"{self._prefix}outbox-item:{sink}:{stream_id}"

    async def put_stream_with_outbox(
        self, record: StreamRecord, items: Sequence[tuple[str, bytes]], created_at: float
    ) -> None:
        fence_key, token = self._fence_of(record.stream_id)
        keys = [self._stream_key(record.stream_id), self._index, self._inode_key(record.inode),
                fence_key, f"{self._prefix}outbox-seq"]  # fmt: skip
        item_args: list[EncodableT] = []
        for sink, payload in items:
            keys += [self._outbox_key(sink), self._outbox_item_key(sink, record.stream_id)]
            item_args += [sink, payload.decode()]  # UTF-8 JSON: the client decodes replies
        flat: list[EncodableT] = []
        for name, value in _encode_record(record).items():
            flat += [name, value]
        with _mapped_errors("put_stream"):
            await self._put_outbox_script(
                keys=keys,
                args=[token, record.stream_id, repr(float(created_at)), len(items), *item_args,
                      *flat],
            )  # fmt: skip

    async def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        with _mapped_errors("outbox_pending"):
            members = await self._client.zrange(self._outbox_key(sink), 0, max(0, limit - 1))
            ids = [_text(m) for m in members if isinstance(m, str | bytes)]
            if not ids:
                return []
            async with self._client.pipeline(transaction=False) as pipe:
                for stream_id in ids:
                    pipe.hgetall(self._outbox_item_key(sink, stream_id))
                raws = [_text_dict(raw) for raw in await pipe.execute()]
        out: list[OutboxItem] = []
        for stream_id, raw in zip(ids, raws, strict=True):
            if not raw or "payload" not in raw or "failed" in raw:
                continue  # deleted by hand, or failed: never handed out again
            out.append(OutboxItem(int(raw.get("seq", 0)), sink, stream_id,
                                  raw["payload"].encode(), float(raw.get("created_at", 0))))
        return out

    async def outbox_done(self, sink: str, stream_id: str) -> None:
        with _mapped_errors("outbox_done"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._outbox_key(sink), stream_id)
                pipe.delete(self._outbox_item_key(sink, stream_id))
                await pipe.execute()

    async def outbox_failed(self, sink: str, stream_id: str, error: str) -> None:
        with _mapped_errors("outbox_failed"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(self._outbox_key(sink), stream_id)
                pipe.hset(self._outbox_item_key(sink, stream_id), "failed", error or "failed")
                await pipe.execute()

    async def outbox_claim(self, owner: str, ttl: float) -> bool:
        with _mapped_errors("outbox_claim"):
            ok = await self._outbox_claim_script(
                keys=[f"{self._prefix}outbox-claim"], args=[owner, max(1, int(ttl * 1000))]
            )
        return bool(ok)

    async def outbox_count(self, sinks: frozenset[str]) -> int:
        if not sinks:
            return 0
        with _mapped_errors("outbox_count"):
            async with self._client.pipeline(transaction=False) as pipe:
                for sink in sorted(sinks):
                    pipe.zcard(self._outbox_key(sink))
                return sum(int(n) for n in await pipe.execute())

    async def aclose(self) -> None:
        """Close the client and its connection pool."""
        with _mapped_errors("close"):
            await self._client.aclose()


@asynccontextmanager
async def open_redis_store(
    url: str, key_prefix: str = "cefmp4:"
) -> AsyncIterator[RedisCheckpointStore]:
    """A store on the Redis at ``url`` for the ``async with``; closed on exit.

    Does not connect: an unreachable Redis shows up as ``TransientError`` from the first
    call (``ping``), so the daemon can start, report not-ready and keep retrying.
    ``ConfigError`` naming ``REDIS_URL`` if the URL cannot be parsed; the message never
    repeats the URL, which may carry a password.
    """
    try:
        client = redis.asyncio.from_url(
            url,
            decode_responses=True,
            socket_timeout=5,
            socket_connect_timeout=5,
            health_check_interval=30,
            # cefmp4's retry policy owns backoff (§2.7); stacked retry layers multiply the
            # waits. The one exception: a single immediate retry on ConnectionError, because
            # after a Redis restart every pooled connection is dead and would otherwise fail
            # one call each. Timeouts are not retried here. Every write is idempotent (HSET
            # of the same values, DEL, SADD, the put_part script), so a replay is harmless.
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
        )
    except ValueError:
        # ``from None``: redis-py's message may quote parts of the URL.
        raise ConfigError("REDIS_URL", "not a valid redis://, rediss:// or unix:// URL") from None
    store = RedisCheckpointStore(client, key_prefix)
    try:
        yield store
    finally:
        await store.aclose()
