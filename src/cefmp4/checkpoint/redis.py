"""The Redis checkpoint store: production, and the shared state of several instances.

Layout (``{p}`` is the key prefix, ``cefmp4:`` by default)::

    {p}stream:{id}   hash: the StreamRecord's fields; a None field is absent from the hash
    {p}parts:{id}    hash: part_number -> compact JSON of the PartRecord's other fields
    {p}streams       set: every stream id (``list_streams()`` and ``list_quarantined``)
    {p}state:{state} set: the ids of the streams in that state (``list_streams(states)``:
                     resuming reads the few unfinished hashes, not every stream ever seen)
    {p}inode:{ino}   set: ids of the streams of the file with that inode (find_by_inode)

A record and its indexes change together: every write is one Lua script (atomic like
MULTI/EXEC; it can also check the fence and make the ``last_activity_at`` touch conditional
without a read round trip). Values are strings; ``build_record`` checks them on the way
back, and a record that does not parse is quarantined (left as it is, excluded from the
listings, reported by ``list_quarantined``) instead of raising. The state sets are built
from ``{p}streams`` once, the first time a version with them meets older data
(``{p}state-index`` marks that done); they are a hint: every listing re-checks the state.

Scale-out (SPEC §2.11): a file's streams are owned through ``{p}lease:{ns}:{ino}`` (the
owner's instance id, with a TTL) and fenced by ``{p}fence:{ns}:{ino}``, a counter bumped for
every new owner. ``{ns}`` is the lease namespace (``cefmp4.streams.lease.lease_namespace``): two
file systems or deployments sharing a key prefix do not collide on an inode number. Once a
stream is ``fence``d, each of its writes first compares the caller's token with the counter
and fails with ``LeaseLost`` when a newer owner has taken over, so a paused or partitioned
former owner can never overwrite its progress. A write of a file whose lease this store
object acquired is fenced with that token even before ``fence`` registers the stream (a
resume that writes first and binds later). ``unfenced_writes`` decides the rest:
``"allow"`` (the default, as before), ``"refuse_when_leased"`` (``LeaseLost`` while anyone
holds the file's lease: no unfenced writer — ``cefmp4 upload``, an adoption at start-up —
can touch a leased stream) or ``"refuse"`` (every write needs a token).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import fields
from typing import Any, Final, Literal

import redis.asyncio
import redis.exceptions as rexc
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.client import NEVER_DECODE
from redis.typing import EncodableT

from cefmp4.after.outbox import OutboxItem
from cefmp4.checkpoint import UNFINISHED, StreamState
from cefmp4.checkpoint.parse import (
    build_completed,
    build_part,
    build_record,
    outbox_values,
)
from cefmp4.checkpoint.records import (
    CompletedFile,
    MalformedRecord,
    PartRecord,
    QuarantinedRecord,
    StreamRecord,
    quarantined,
)
from cefmp4.runtime import logs
from cefmp4.runtime.errors import ConfigError, LeaseLost, PermanentError, TransientError

__all__ = ["RedisCheckpointStore", "UnfencedWrites", "open_redis_store"]

UnfencedWrites = Literal["allow", "refuse_when_leased", "refuse"]

# How each StreamRecord field is parsed back from its hash string.
_FIELD_TYPES: Final[dict[str, type]] = {
    "stream_id": str, "path": str, "rel_path": str, "device": int, "inode": int,
    "bucket": str, "key": str, "part_size": int, "max_parts": int, "state": StreamState,
    "started_at": float, "last_activity_at": float, "upload_id": str, "status": str,
    "completed_at": float, "final_size": int, "final_mtime_ns": int, "sha256": str,
    "error": str, "completed_by": str,
}  # fmt: skip
assert set(_FIELD_TYPES) == {f.name for f in fields(StreamRecord)}

log = structlog.get_logger(__name__)

_STATES = tuple(StreamState)

# The fence check every write script starts with. ARGV[1] is the caller's token ('' =
# none), ARGV[2] the lease key of the stream's file ('' = unknown: then KEYS[1], the stream
# hash, names the inode and ARGV[3] is the lease key prefix). KEYS[#KEYS] is the fence key.
_FENCE_CHECK = """
local token = ARGV[1]
if token ~= '' then
    if redis.call('GET', KEYS[#KEYS]) ~= token then
        return redis.error_reply('LEASELOST')
    end
else
    if ARGV[4] == 'refuse' then
        return redis.error_reply('UNFENCED write refused (unfenced_writes=refuse)')
    end
    if ARGV[4] == 'refuse_when_leased' then
        local lease = ARGV[2]
        if lease == '' then
            local inode = redis.call('HGET', KEYS[1], 'inode')
            if inode then lease = ARGV[3] .. inode end
        end
        if lease ~= '' and redis.call('EXISTS', lease) == 1 then
            return redis.error_reply('LEASELOST')
        end
    end
end
"""

# HSET the part; raise the stream's last_activity_at to uploaded_at if that is later. A
# stream hash that does not exist is not created (it would lack every other field).
# Lua numbers are doubles, like Python floats, and ARGV[3] is repr(float), so the stored
# value round-trips exactly.
# KEYS stream hash, parts hash, fence; ARGV fence check (4), part number, JSON, uploaded_at.
_PUT_PART_LUA = _FENCE_CHECK + """
redis.call('HSET', KEYS[2], ARGV[5], ARGV[6])
local current = redis.call('HGET', KEYS[1], 'last_activity_at')
if current and tonumber(current) and tonumber(current) < tonumber(ARGV[7]) then
    redis.call('HSET', KEYS[1], 'last_activity_at', ARGV[7])
end
return 1
"""

# KEYS stream hash, all-streams set, inode set, new state's set, state-index marker, the
# four state sets, fence; ARGV fence check (4), stream id, then field/value pairs. DEL
# first so that a field set back to None disappears from the hash. The first stream of a
# new data set marks the state sets complete (nothing older to index).
_PUT_STREAM_LUA = _FENCE_CHECK + """
if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('SET', KEYS[5], '1')
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[5])
for i = 6, #KEYS - 1 do
    redis.call('SREM', KEYS[i], ARGV[5])
end
redis.call('SADD', KEYS[4], ARGV[5])
return 1
"""

# put_stream plus outbox items (cefmp4.after.outbox), atomically: _PUT_STREAM_LUA's writes, then
# per item (sink, payload) its sink's sorted set and item hash, unless the item exists (a
# redone completion keeps its place). KEYS stream hash, all-streams set, inode set, new
# state's set, state-index marker, the NS state sets, the outbox sequence, per item its
# sorted set and hash, fence; ARGV fence check (4), stream id, created_at, item count N,
# NS, the items' (sink, payload), then the record's field/value pairs.
_PUT_STREAM_OUTBOX_LUA = _FENCE_CHECK + """
local n, ns = tonumber(ARGV[7]), tonumber(ARGV[8])
if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('SET', KEYS[5], '1')
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 9 + 2 * n))
redis.call('SADD', KEYS[2], ARGV[5])
redis.call('SADD', KEYS[3], ARGV[5])
for i = 6, 5 + ns do
    redis.call('SREM', KEYS[i], ARGV[5])
end
redis.call('SADD', KEYS[4], ARGV[5])
for i = 1, n do
    local zset, item = KEYS[5 + ns + 2 * i], KEYS[6 + ns + 2 * i]
    if redis.call('EXISTS', item) == 0 then
        local seq = redis.call('INCR', KEYS[6 + ns])
        redis.call('HSET', item, 'sink', ARGV[7 + 2 * i], 'payload', ARGV[8 + 2 * i],
                   'created_at', ARGV[6], 'seq', seq)
        redis.call('ZADD', zset, seq, ARGV[5])
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

# An outbox item that does not parse (SPEC §2.18) leaves its queue but stays for inspection:
# KEYS the sink's sorted set, the item's key; ARGV the member, the reason. A hash keeps its
# first reason (HSETNX); a key of another type, or none, is left as it is.
_OUTBOX_QUARANTINE_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('TYPE', KEYS[2]).ok == 'hash' then
    redis.call('HSETNX', KEYS[2], 'failed', ARGV[2])
end
return 1
"""

# KEYS stream hash, parts hash, fence; ARGV fence check (4).
_DELETE_PARTS_LUA = _FENCE_CHECK + """
return redis.call('DEL', KEYS[2])
"""

# KEYS stream hash, parts hash, all-streams set, the four state sets, fence; ARGV fence
# check (4), stream id, the inode set key prefix.
_DELETE_STREAM_LUA = _FENCE_CHECK + """
local inode = redis.call('HGET', KEYS[1], 'inode')
redis.call('DEL', KEYS[1], KEYS[2])
for i = 3, #KEYS - 1 do
    redis.call('SREM', KEYS[i], ARGV[5])
end
if inode then
    redis.call('SREM', ARGV[6] .. inode, ARGV[5])
end
return 1
"""

# One page of the completed streams' fingerprint fields, as one JSON string: a reply of
# 100,000 x 8 values would cost seconds to parse in redis-py, one json.loads milliseconds.
# KEYS the completed state set; ARGV SSCAN cursor, COUNT, stream hash key prefix, the 8
# fields (redis.pcall and no unpack per row: a third faster, measured).
# Each row: the id, then the fields (false: absent), or the id and 'WRONGTYPE'.
_COMPLETED_LUA = """
local scan = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local rows, prefix = {}, ARGV[3]
local f1, f2, f3, f4, f5, f6, f7, f8 = unpack(ARGV, 4, 11)
for _, id in ipairs(scan[2]) do
    local v = redis.pcall('HMGET', prefix .. id, f1, f2, f3, f4, f5, f6, f7, f8)
    if v.err then
        rows[#rows + 1] = {id, 'WRONGTYPE'}
    else
        rows[#rows + 1] = {id, v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]}
    end
end
return {scan[1], cjson.encode(rows)}
"""

# One page of the ids of the streams naming one of some upload ids. KEYS the all-streams
# set; ARGV SSCAN cursor, COUNT, stream hash key prefix, the upload ids.
_NAMING_LUA = """
local scan, wanted, found = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2]), {}, {}
for i = 4, #ARGV do wanted[ARGV[i]] = true end
for _, id in ipairs(scan[2]) do
    local upload = redis.pcall('HGET', ARGV[3] .. id, 'upload_id')  -- an error: no hash
    if type(upload) == 'string' and wanted[upload] then found[#found + 1] = id end
end
return {scan[1], found}
"""

# Leases: KEYS lease, fence; ARGV owner, ttl in ms, and the holder to take over from
# ('' = acquire: only a free lease, or ours, renewed, with its current token). A new owner
# gets a new token.
_TAKE_LUA = """
local holder, from = redis.call('GET', KEYS[1]), ARGV[3]
if from == '' and holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(redis.call('GET', KEYS[2]))
end
if (from == '' and holder) or (from ~= '' and holder ~= from) then
    return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return token
"""

# Renew or release, only if ``owner`` holds the lease: KEYS lease; ARGV owner, then the
# ttl in ms to renew, or '' to release.
_IF_HOLDER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    if ARGV[2] == '' then return redis.call('DEL', KEYS[1]) end
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
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
    """The record of a stream hash; ``MalformedRecord`` if a field does not parse."""
    return build_record(_decode_values(raw, _FIELD_TYPES))


# The fields a CompletedFile holds (besides its id), as ``completed_files`` reads them.
_COMPLETED_FIELDS = ("device", "inode", "final_size", "final_mtime_ns", "path", "key",
                     "bucket", "state")  # fmt: skip


def _utf8(text: str) -> bool:
    """Whether a field decoded with surrogateescape was UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _number(name: str, text: object) -> int:
    """An integer field of a packed row (``false``: absent)."""
    if not isinstance(text, str):
        raise MalformedRecord(f"{name}: missing")
    try:
        return int(text)
    except ValueError:
        raise MalformedRecord(f"{name}: not an integer") from None


def _decode_values(raw: Mapping[str, str], types: Mapping[str, type]) -> dict[str, Any]:
    """The hash's strings as the Python types of ``types`` (absent: None), unchecked
    beyond that; ``MalformedRecord`` if a number does not parse."""
    values: dict[str, Any] = {}
    for name, kind in types.items():
        text = raw.get(name)
        if text is None or kind is str or kind is StreamState:
            values[name] = text
            continue
        try:
            values[name] = kind(text)
        except (ValueError, OverflowError):
            raise MalformedRecord(f"{name}: not {'an integer' if kind is int else 'a number'}") \
                from None
    return values


def _encode_part(part: PartRecord) -> str:
    return json.dumps(
        {"offset": part.offset, "size": part.size, "etag": part.etag, "md5": part.md5,
         "uploaded_at": float(part.uploaded_at)},
        separators=(",", ":"),
    )  # fmt: skip


def _decode_part(part_number: str, text: str) -> PartRecord:
    """A part from its hash field; ``MalformedRecord`` if it does not parse."""
    try:
        number: object = int(part_number)
    except ValueError:
        number = part_number
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # nested past Python's depth: not a part either
        raise MalformedRecord(f"part {part_number[:20]}: not JSON") from None
    if not isinstance(data, dict):
        raise MalformedRecord(f"part {part_number[:20]}: not a JSON object")
    return build_part(number, data)


def _decode_outbox_item(sink: str, member: bytes, reply: object) -> OutboxItem:
    """An outbox item from its sorted-set member and its hash, both undecoded;
    ``MalformedRecord`` if it does not parse (a key of another type or gone, a field
    missing, not UTF-8, not a number)."""
    if isinstance(reply, Exception):
        raise MalformedRecord("not a Redis hash")
    if not isinstance(reply, Mapping) or not reply:
        raise MalformedRecord("its hash is gone")
    try:
        stream_id = member.decode()
        raw = {_text(k): _text(v) for k, v in reply.items()}
    except UnicodeDecodeError:
        raise MalformedRecord("a field is not UTF-8") from None
    if "failed" in raw:
        raise MalformedRecord(f"failed already: {raw['failed'][:80]}")
    values = _decode_values(raw, {"seq": int, "created_at": float})
    payload = raw.get("payload")
    seq, stream_id, body, created_at = outbox_values(
        values["seq"], stream_id, None if payload is None else payload.encode(),
        values["created_at"],
    )  # fmt: skip
    return OutboxItem(seq, sink, stream_id, body, created_at)


@contextmanager
def _mapped_errors(operation: str) -> Iterator[None]:
    """Turn every redis-py exception into cefmp4's. Messages never contain the URL.

    Permanent: refused credentials or permissions, a value redis-py cannot send
    (DataError), and error replies that will repeat (WRONGTYPE, a script error, an unknown
    command). Transient: everything about the connection (refused, reset, timed out, a
    server still loading its data set, a read-only replica, out of memory, a cluster
    moving), a protocol answer that makes no sense (InvalidResponse: maybe not Redis at all,
    or a proxy restarting), and any RedisError this list does not know yet.

    A cancellation requested during the call and lost inside it is raised on the way out:
    Python 3.11's ``asyncio.wait_for``, which redis-py wraps around socket writes, returns
    the result and drops a cancellation that arrives as the write completes (fixed in 3.12),
    and the task then runs on as if never cancelled (a loop that never stops, a shutdown
    waiting for it for ever).
    """
    task = asyncio.current_task()
    cancels = task.cancelling() if task is not None else 0
    try:
        yield
    except (rexc.AuthenticationError, rexc.AuthorizationError, rexc.NoPermissionError,
            rexc.AuthenticationWrongNumberOfArgsError) as exc:  # fmt: skip
        raise PermanentError(f"redis {operation}: access refused: {exc}") from exc
    except (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError,
            rexc.OutOfMemoryError, rexc.TryAgainError, rexc.InvalidResponse,
            rexc.ChildDeadlockedError, OSError) as exc:  # fmt: skip
        # BusyLoadingError and MaxConnectionsError are ConnectionErrors; asyncio's
        # TimeoutError is an OSError.
        raise TransientError(f"redis {operation}: {type(exc).__name__}: {exc}") from exc
    except rexc.ResponseError as exc:
        if "LEASELOST" in str(exc):
            raise LeaseLost(f"redis {operation}: another instance owns the stream now") from exc
        if str(exc).startswith(_TRANSIENT_REPLIES):
            raise TransientError(f"redis {operation}: {exc}") from exc
        raise PermanentError(f"redis {operation}: {exc}") from exc
    except rexc.DataError as exc:
        raise PermanentError(f"redis {operation}: {type(exc).__name__}: {exc}") from exc
    except rexc.RedisError as exc:
        raise TransientError(f"redis {operation}: {type(exc).__name__}: {exc}") from exc
    if task is not None and task.cancelling() > cancels:
        raise asyncio.CancelledError


class RedisCheckpointStore:
    """``CheckpointStore`` on Redis. Build it with ``open_redis_store``.

    ``lease_namespace`` goes into every lease and fence key (see the module docstring);
    ``unfenced_writes``: what a write without a token may do (see the module docstring).
    """

    def __init__(
        self, client: redis.asyncio.Redis, key_prefix: str = "cefmp4:", *,
        lease_namespace: str = "", unfenced_writes: UnfencedWrites = "allow",
    ) -> None:  # fmt: skip
        self._client = client
        self._prefix = key_prefix
        self._index = f"{key_prefix}streams"
        self._index_marker = f"{key_prefix}state-index"
        self._lease_ns = f"{lease_namespace}:" if lease_namespace else ""
        self._unfenced_writes = unfenced_writes
        # Leases this object acquired (inode -> token), and the inode of each stream it
        # has seen: an unregistered write of a held file is fenced all the same.
        self._held: dict[int, str] = {}
        self._inodes: dict[str, int] = {}
        self._put_part_script = client.register_script(_PUT_PART_LUA)
        self._put_stream_script = client.register_script(_PUT_STREAM_LUA)
        self._delete_parts_script = client.register_script(_DELETE_PARTS_LUA)
        self._delete_stream_script = client.register_script(_DELETE_STREAM_LUA)
        self._take_script = client.register_script(_TAKE_LUA)
        self._if_holder_script = client.register_script(_IF_HOLDER_LUA)
        self._naming_script = client.register_script(_NAMING_LUA)
        self._put_outbox_script = client.register_script(_PUT_STREAM_OUTBOX_LUA)
        self._outbox_claim_script = client.register_script(_OUTBOX_CLAIM_LUA)
        self._outbox_quarantine_script = client.register_script(_OUTBOX_QUARANTINE_LUA)
        # stream id -> (fence key, token) of the streams this process owns.
        self._fences: dict[str, tuple[str, str]] = {}
        self._warned: set[str] = set()  # quarantined stream ids already warned about
        self._indexed = False  # the state sets are known to be complete

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

    def _state_key(self, state: StreamState) -> str:
        return f"{self._prefix}state:{state.value}"

    def _state_keys(self) -> list[str]:
        return [self._state_key(state) for state in _STATES]

    def _fence_key(self, inode: int) -> str:
        return f"{self._prefix}fence:{self._lease_ns}{inode}"

    def _lease_key(self, inode: int) -> str:
        return f"{self._prefix}lease:{self._lease_ns}{inode}"

    def _fence_args(self, stream_id: str, inode: int | None) -> tuple[str, list[EncodableT]]:
        """(fence key, the four fence-check ARGV) of a write of ``stream_id``."""
        fence_key, token = self._fences.get(stream_id, (f"{self._prefix}fence:none", ""))
        if inode is None:
            inode = self._inodes.get(stream_id)
        if not token and inode is not None and inode in self._held:
            fence_key, token = self._fence_key(inode), self._held[inode]
        lease = "" if inode is None else self._lease_key(inode)
        lease_prefix = f"{self._prefix}lease:{self._lease_ns}"
        return fence_key, [token, lease, lease_prefix, self._unfenced_writes]

    def _quarantine(self, stream_id: str, reason: str) -> None:
        if stream_id not in self._warned:
            self._warned.add(stream_id)
            log.warning(logs.RECORD_QUARANTINED, stream_id=stream_id[:80], reason=reason,
                        store="redis")  # fmt: skip

    async def ping(self) -> None:
        with _mapped_errors("ping"):
            await self._client.ping()

    async def put_stream(self, record: StreamRecord) -> None:
        fence_key, check = self._fence_args(record.stream_id, record.inode)
        flat: list[EncodableT] = []
        for name, value in _encode_record(record).items():
            flat += [name, value]
        with _mapped_errors("put_stream"):
            await self._put_stream_script(
                keys=[self._stream_key(record.stream_id), self._index,
                      self._inode_key(record.inode), self._state_key(record.state),
                      self._index_marker, *self._state_keys(), fence_key],
                args=[*check, record.stream_id, *flat],
            )  # fmt: skip
        if record.state in UNFINISHED:
            self._inodes[record.stream_id] = record.inode
        else:  # bounded by the streams in flight, not by history
            self._inodes.pop(record.stream_id, None)

    async def _read_records(
        self, ids: list[str], *, check_parts: bool
    ) -> list[tuple[str, StreamRecord | QuarantinedRecord | None]]:
        """(id, record | quarantined | None if gone) of each id, in batched pipelines; with
        ``check_parts``, an unfinished stream's parts must parse too (resume reads them)."""
        out: list[tuple[str, StreamRecord | QuarantinedRecord | None]] = []
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            async with self._client.pipeline(transaction=False) as pipe:
                for stream_id in batch:
                    pipe.hgetall(self._stream_key(stream_id))
                # A key of another type answers WRONGTYPE: that record, not the batch, fails.
                replies = await pipe.execute(raise_on_error=False)
            parsed = [self._parse(i, reply) for i, reply in zip(batch, replies, strict=True)]
            if check_parts:
                await self._check_parts(parsed)
            out += parsed
        return out

    def _parse(
        self, stream_id: str, reply: Any
    ) -> tuple[str, StreamRecord | QuarantinedRecord | None]:
        if isinstance(reply, Exception):
            return stream_id, QuarantinedRecord(stream_id, "not a Redis hash")
        raw = _text_dict(reply)
        if not raw:
            return stream_id, None
        try:
            record = _decode_record(raw)
        except MalformedRecord as exc:
            return stream_id, quarantined(stream_id, str(exc), raw)
        if record.state in UNFINISHED:  # the ones that may be written again
            self._inodes[stream_id] = record.inode
        return stream_id, record

    async def _check_parts(
        self, parsed: list[tuple[str, StreamRecord | QuarantinedRecord | None]]
    ) -> None:
        """Quarantine (in place) the unfinished records whose parts do not parse."""
        unfinished = [
            (i, record) for i, (_, record) in enumerate(parsed)
            if isinstance(record, StreamRecord) and record.state in UNFINISHED
        ]  # fmt: skip
        if not unfinished:
            return
        async with self._client.pipeline(transaction=False) as pipe:
            for _, record in unfinished:
                pipe.hgetall(self._parts_key(record.stream_id))
            replies = await pipe.execute(raise_on_error=False)
        for (i, record), reply in zip(unfinished, replies, strict=True):
            try:
                if isinstance(reply, Exception):
                    raise MalformedRecord("parts: not a Redis hash")
                for number, text in _text_dict(reply).items():
                    _decode_part(number, text)
            except MalformedRecord as exc:
                parsed[i] = (record.stream_id, QuarantinedRecord(
                    record.stream_id, str(exc), record.path, record.key, record.upload_id,
                    record.state.value,
                ))  # fmt: skip

    def _usable(
        self, read: list[tuple[str, StreamRecord | QuarantinedRecord | None]]
    ) -> list[StreamRecord]:
        out: list[StreamRecord] = []
        for stream_id, result in read:
            if isinstance(result, QuarantinedRecord):
                self._quarantine(stream_id, result.reason)
            elif result is not None:
                out.append(result)
        return out

    async def naming_uploads(
        self, upload_ids: frozenset[str]
    ) -> list[StreamRecord | QuarantinedRecord]:
        if not upload_ids:
            return []
        ids: set[str] = set()
        with _mapped_errors("naming_uploads"):
            cursor = 0
            while True:  # pages of ids matched in the server: no hash travels but theirs
                cursor, found = await self._naming_script(
                    keys=[self._index], args=[cursor, 5000, f"{self._prefix}stream:",
                                              *sorted(upload_ids)],
                )  # fmt: skip
                ids.update(map(_text, found))
                if int(cursor) == 0:
                    break
            read = await self._read_records(sorted(ids), check_parts=True)
        return [result for _, result in read if result is not None]

    async def completed_files(
        self, cursor: str = "", limit: int = 5000
    ) -> tuple[list[CompletedFile], str]:
        completed = self._state_key(StreamState.COMPLETED)
        with _mapped_errors("completed_files"):
            await self._ensure_state_index()
            start = int(cursor) if cursor.isdigit() else 0
            # Undecoded: one field that is not UTF-8 must not fail the page, only its record.
            # (redis-py's execute_command is untyped; the reply is [cursor, JSON] as bytes.)
            after, packed = await self._client.execute_command(  # type: ignore[no-untyped-call]
                "EVAL", _COMPLETED_LUA, 1, completed, start, max(1, limit),
                f"{self._prefix}stream:", *_COMPLETED_FIELDS, **{NEVER_DECODE: True},
            )  # fmt: skip
        try:
            text, clean = packed.decode(), True
        except UnicodeDecodeError:
            text, clean = packed.decode("utf-8", "surrogateescape"), False
        out: list[CompletedFile] = []
        rows = json.loads(text) if text != "{}" else []  # cjson: an empty table is {}
        for stream_id, *row in rows:
            try:
                if row == ["WRONGTYPE"]:
                    raise MalformedRecord("not a Redis hash")
                if not clean and not all(isinstance(v, bool) or _utf8(v) for v in row):
                    raise MalformedRecord("a field is not UTF-8")
                device, inode, size, mtime, path, key, bucket, state = row
                if state != StreamState.COMPLETED.value:
                    continue  # gone, or moved on since (the state set is a hint)
                if size is False or mtime is False:
                    continue  # no fingerprint: such a file is never passed over
                out.append(build_completed([
                    str(stream_id), _number("device", device), _number("inode", inode),
                    _number("final_size", size), _number("final_mtime_ns", mtime), path,
                    key, bucket,
                ]))  # fmt: skip
            except MalformedRecord as exc:
                self._quarantine(str(stream_id), str(exc))
        return out, ("" if int(after) == 0 else str(int(after)))

    async def find_by_inode(self, inode: int) -> list[StreamRecord]:
        with _mapped_errors("find_by_inode"):
            ids = sorted(map(_text, await self._client.smembers(self._inode_key(inode))))
            records = self._usable(await self._read_records(ids, check_parts=True))
        records = [r for r in records if r.inode == inode]
        return sorted(records, key=lambda r: r.started_at)

    async def list_quarantined(self) -> list[QuarantinedRecord]:
        with _mapped_errors("list_quarantined"):
            ids = sorted(map(_text, await self._client.smembers(self._index)))
            read = await self._read_records(ids, check_parts=True)
        return [result for _, result in read if isinstance(result, QuarantinedRecord)]

    # --- leases (SPEC §2.11) ------------------------------------------------------------

    async def acquire(self, inode: int, owner: str, ttl: float) -> int | None:
        with _mapped_errors("acquire_lease"):
            token = await self._take_script(
                keys=[self._lease_key(inode), self._fence_key(inode)],
                args=[owner, max(1, int(ttl * 1000)), ""],
            )
        if token is None:
            return None
        self._held[inode] = str(token)
        return int(token)

    async def leased_anywhere(self, inode: int) -> bool:
        """Whether a lease on a file with this inode number is held in any deployment that
        shares this Redis (any lease namespace): salvage's evidence that an owner lives,
        wherever it watches. An inode number that two deployments share answers "held":
        the safe way round, since then nothing is salvaged."""
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", f"{self._prefix}lease:") + "*"
        wanted = str(inode)
        with _mapped_errors("lease_scan"):
            async for key in self._client.scan_iter(match=pattern, count=1000):
                if _text(key).rsplit(":", 1)[-1] == wanted:
                    return True
        return False

    async def holder(self, inode: int) -> str | None:
        with _mapped_errors("lease_holder"):
            value = await self._client.get(self._lease_key(inode))
        return None if value is None else _text(value)

    async def steal(self, inode: int, old_owner: str, owner: str, ttl: float) -> int | None:
        if not old_owner:  # '' would mean "acquire" to the script
            return None
        with _mapped_errors("steal_lease"):
            token = await self._take_script(
                keys=[self._lease_key(inode), self._fence_key(inode)],
                args=[owner, max(1, int(ttl * 1000)), old_owner],
            )
        if token is None:
            return None
        self._held[inode] = str(token)
        return int(token)

    async def renew(self, inode: int, owner: str, ttl: float) -> bool:
        with _mapped_errors("renew_lease"):
            ok = await self._if_holder_script(
                keys=[self._lease_key(inode)], args=[owner, max(1, int(ttl * 1000))]
            )
        return bool(ok)

    async def release(self, inode: int, owner: str) -> None:
        self._held.pop(inode, None)
        with _mapped_errors("release_lease"):
            await self._if_holder_script(keys=[self._lease_key(inode)], args=[owner, ""])

    def fence(self, stream_id: str, inode: int, token: int) -> None:
        self._fences[stream_id] = (self._fence_key(inode), str(token))

    def unfence(self, stream_id: str) -> None:
        self._fences.pop(stream_id, None)

    async def get_stream(self, stream_id: str) -> StreamRecord | None:
        with _mapped_errors("get_stream"):
            read = await self._read_records([stream_id], check_parts=False)
        records = self._usable(read)
        return records[0] if records else None

    async def list_streams(
        self, states: frozenset[StreamState] | None = None
    ) -> list[StreamRecord]:
        if states is not None and not states:
            return []
        with _mapped_errors("list_streams"):
            if states is None:
                ids = await self._client.smembers(self._index)
            else:
                await self._ensure_state_index()
                ids = await self._client.sunion([self._state_key(s) for s in states])
            ordered = sorted(map(_text, ids))
            records = self._usable(await self._read_records(ordered, check_parts=True))
        # The state sets are a hint (a record edited by hand, a write racing the index
        # build): the state in the hash decides.
        return [r for r in records if states is None or r.state in states]

    async def _ensure_state_index(self) -> None:
        """Fill the state sets from the hashes once, for data written before they existed."""
        if self._indexed:
            return
        if not await self._client.exists(self._index_marker):
            ids = sorted(map(_text, await self._client.smembers(self._index)))
            for start in range(0, len(ids), _BATCH):
                batch = ids[start : start + _BATCH]
                async with self._client.pipeline(transaction=False) as pipe:
                    for stream_id in batch:
                        pipe.hget(self._stream_key(stream_id), "state")
                    states = await pipe.execute(raise_on_error=False)
                async with self._client.pipeline(transaction=False) as pipe:
                    for stream_id, state in zip(batch, states, strict=True):
                        if isinstance(state, str) and state in StreamState._value2member_map_:
                            pipe.sadd(self._state_key(StreamState(state)), stream_id)
                    await pipe.execute()
            await self._client.set(self._index_marker, "1")
        self._indexed = True

    async def put_part(self, stream_id: str, part: PartRecord) -> None:
        fence_key, check = self._fence_args(stream_id, None)
        with _mapped_errors("put_part"):
            await self._put_part_script(
                keys=[self._stream_key(stream_id), self._parts_key(stream_id), fence_key],
                args=[*check, part.part_number, _encode_part(part),
                      repr(float(part.uploaded_at))],
            )  # fmt: skip

    async def _get_parts_raw(self, stream_id: str) -> list[PartRecord]:
        try:
            reply = await self._client.hgetall(self._parts_key(stream_id))
        except rexc.ResponseError as exc:
            if str(exc).startswith("WRONGTYPE"):
                raise MalformedRecord("parts: not a Redis hash") from None
            raise
        raw = _text_dict(reply)
        parts = [_decode_part(number, text) for number, text in raw.items()]
        parts.sort(key=lambda p: p.part_number)
        return parts

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        with _mapped_errors("get_parts"):
            return await self._get_parts_raw(stream_id)

    async def delete_parts(self, stream_id: str) -> None:
        fence_key, check = self._fence_args(stream_id, None)
        with _mapped_errors("delete_parts"):
            await self._delete_parts_script(
                keys=[self._stream_key(stream_id), self._parts_key(stream_id), fence_key],
                args=check,
            )

    async def delete_stream(self, stream_id: str) -> None:
        fence_key, check = self._fence_args(stream_id, None)
        self._inodes.pop(stream_id, None)
        with _mapped_errors("delete_stream"):
            await self._delete_stream_script(
                keys=[self._stream_key(stream_id), self._parts_key(stream_id), self._index,
                      *self._state_keys(), fence_key],
                args=[*check, stream_id, f"{self._prefix}inode:"],
            )  # fmt: skip

    # --- the outbox (cefmp4.after.notify.Outbox) -----------------------------------------------
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
        fence_key, check = self._fence_args(record.stream_id, record.inode)
        states = self._state_keys()
        keys: list[str] = [
            self._stream_key(record.stream_id), self._index, self._inode_key(record.inode),
            self._state_key(record.state), self._index_marker, *states,
            f"{self._prefix}outbox-seq",
        ]
        item_args: list[EncodableT] = []
        for sink, payload in items:
            keys += [self._outbox_key(sink), self._outbox_item_key(sink, record.stream_id)]
            item_args += [sink, payload.decode()]  # UTF-8 JSON: the client decodes replies
        flat: list[EncodableT] = []
        for name, value in _encode_record(record).items():
            flat += [name, value]
        with _mapped_errors("put_stream"):
            await self._put_outbox_script(
                keys=[*keys, fence_key],
                args=[*check, record.stream_id, repr(float(created_at)), len(items),
                      len(states), *item_args, *flat],
            )  # fmt: skip
        if record.state in UNFINISHED:
            self._inodes[record.stream_id] = record.inode
        else:
            self._inodes.pop(record.stream_id, None)

    async def outbox_pending(self, sink: str, limit: int) -> list[OutboxItem]:
        """The oldest ``limit`` items that parse. One that does not (SPEC §2.18) leaves the
        queue, its hash kept and marked failed with the reason, with one warning; it neither
        raises nor takes the place of the items after it."""
        zset = self._outbox_key(sink)
        item_prefix = self._outbox_item_key(sink, "").encode()
        while True:
            with _mapped_errors("outbox_pending"):
                # Undecoded (redis-py's execute_command is untyped): a member or a field that
                # is not UTF-8 must fail its item, not the queue.
                members = await self._client.execute_command(  # type: ignore[no-untyped-call]
                    "ZRANGE", zset, 0, max(0, limit - 1), **{NEVER_DECODE: True}
                )
                if not members:
                    return []
                async with self._client.pipeline(transaction=False) as pipe:
                    for member in members:
                        pipe.execute_command("HGETALL", item_prefix + member,
                                             **{NEVER_DECODE: True})  # fmt: skip
                    # A key of another type answers WRONGTYPE: that item, not the batch, fails.
                    replies = await pipe.execute(raise_on_error=False)
            out: list[OutboxItem] = []
            bad: list[tuple[bytes, str]] = []
            for member, reply in zip(members, replies, strict=True):
                try:
                    out.append(_decode_outbox_item(sink, member, reply))
                except MalformedRecord as exc:
                    bad.append((member, str(exc)))
            for member, reason in bad:
                await self._quarantine_item(sink, member, reason)
            if out or not bad:
                return out
            # All of this batch were set aside (and left the sorted set): read on.

    async def _quarantine_item(self, sink: str, member: bytes, reason: str) -> None:
        with _mapped_errors("outbox_pending"):
            await self._outbox_quarantine_script(
                keys=[self._outbox_key(sink), self._outbox_item_key(sink, "").encode() + member],
                args=[member, f"malformed: {reason}"],
            )
        stream_id = member.decode(errors="replace")
        if f"outbox:{sink}:{stream_id}" not in self._warned:
            self._warned.add(f"outbox:{sink}:{stream_id}")
            log.warning(logs.RECORD_QUARANTINED, stream_id=stream_id[:80], sink=sink,
                        reason=f"outbox item: {reason}", store="redis")  # fmt: skip

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
    url: str, key_prefix: str = "cefmp4:", *, lease_namespace: str = "",
    unfenced_writes: UnfencedWrites = "allow",
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
    store = RedisCheckpointStore(
        client, key_prefix, lease_namespace=lease_namespace, unfenced_writes=unfenced_writes
    )
    try:
        yield store
    finally:
        await store.aclose()
