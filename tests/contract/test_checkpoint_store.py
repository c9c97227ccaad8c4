"""One contract for every CheckpointStore: embedded SQLite and Redis behave the same."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from cefmp4.checkpoint import (
    CheckpointStore,
    CompletedFile,
    MalformedRecord,
    PartRecord,
    untrusted_reason,
)
from cefmp4.checkpoint.records import QuarantinedRecord, StreamRecord, StreamState
from cefmp4.checkpoint.redis import open_redis_store
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.runtime import logs
from cefmp4.runtime.errors import ConfigError, LeaseLost, PermanentError, TransientError
from cefmp4.streams.lease import lease_namespace
from tests.support.redis import RedisServer


@dataclass
class Backend:
    kind: str
    open: Callable[[], AbstractAsyncContextManager[CheckpointStore]]
    url: str = ""  # redis: where, and under which prefix, to corrupt records by hand
    prefix: str = ""
    state_dir: Path | None = None  # sqlite


@pytest.fixture(params=["sqlite", "redis"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        state_dir = tmp_path / "state"
        yield Backend("sqlite", lambda: open_sqlite_store(state_dir), state_dir=state_dir)
        return
    url: str = request.getfixturevalue("redis_url")
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield Backend("redis", lambda: open_redis_store(url, key_prefix=prefix), url, prefix)
    # Keep the session server small: drop this test's keys.
    async with redis.asyncio.from_url(url) as client:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[CheckpointStore]:
    async with backend.open() as opened:
        yield opened


def make_stream(stream_id: str = "s1", **changes: object) -> StreamRecord:
    record = StreamRecord(
        stream_id=stream_id,
        path=f"/watch/cam/{stream_id}.mp4",
        rel_path=f"cam/{stream_id}.mp4",
        device=2049,
        inode=1_234_567,
        bucket="video-streams",
        key=f"streams/{stream_id}/cam/{stream_id}.mp4",
        part_size=10 * 1024 * 1024,
        max_parts=10_000,
        state=StreamState.ACTIVE,
        started_at=1_700_000_000.123456,
        last_activity_at=1_700_000_005.5,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def make_part(number: int, uploaded_at: float = 1_700_000_010.25, etag: str = "") -> PartRecord:
    size = 5 * 1024 * 1024
    return PartRecord(
        part_number=number,
        offset=(number - 1) * size,
        size=size,
        etag=etag or f"etag-{number:04d}",
        md5=f"{number:032x}",
        uploaded_at=uploaded_at,
    )


def assert_same(got: StreamRecord | None, want: StreamRecord) -> None:
    assert got == want
    assert got is not None
    for name in StreamRecord.__slots__:  # equality alone would accept 5 == 5.0
        assert type(getattr(got, name)) is type(getattr(want, name)), name


# -- round trips ----------------------------------------------------------------------


async def test_ping(store: CheckpointStore) -> None:
    await store.ping()


async def test_unknown_stream(store: CheckpointStore) -> None:
    assert await store.get_stream("nope") is None
    assert await store.get_parts("nope") == []
    assert await store.list_streams() == []
    await store.delete_parts("nope")  # deleting nothing is fine
    await store.delete_stream("nope")


async def test_round_trip_minimal_record_keeps_none(store: CheckpointStore) -> None:
    record = make_stream()
    await store.put_stream(record)
    got = await store.get_stream("s1")
    assert_same(got, record)
    assert got is not None
    assert got.state is StreamState.ACTIVE
    assert got.upload_id is None
    assert got.completed_at is None
    assert got.final_size is None


async def test_round_trip_every_field(store: CheckpointStore) -> None:
    record = make_stream(
        "full",
        path="/watch/ünï cødé/with space.MP4",
        rel_path="ünï cødé/with space.MP4",
        device=2**63 + 5,  # st_dev / st_ino are unsigned 64-bit
        inode=2**64 - 1,
        state=StreamState.FINALIZING,
        started_at=0.1 + 0.2,  # not exactly representable: must come back bit-identical
        last_activity_at=1_700_000_123.987654321,
        upload_id="2~abc/DEF+ghi=",
        status="truncated",
        completed_at=1_700_000_200.000001,
        final_size=5 * 1024**4,
        final_mtime_ns=1_700_000_199_123_456_789,
        sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        error="",  # empty is a value, not None
    )
    await store.put_stream(record)
    assert_same(await store.get_stream("full"), record)


async def test_every_state_round_trips_as_enum(store: CheckpointStore) -> None:
    for state in StreamState:
        await store.put_stream(make_stream(f"s-{state.value}", state=state))
    for state in StreamState:
        got = await store.get_stream(f"s-{state.value}")
        assert got is not None
        assert type(got.state) is StreamState
        assert got.state is state


async def test_put_stream_replaces_and_clears_fields(store: CheckpointStore) -> None:
    await store.put_stream(make_stream(upload_id="u1", error="boom", status="complete"))
    replacement = make_stream(upload_id=None, error=None, state=StreamState.FAILED)
    await store.put_stream(replacement)
    assert_same(await store.get_stream("s1"), replacement)
    assert len(await store.list_streams()) == 1


# -- listing --------------------------------------------------------------------------


async def test_list_streams_all_and_by_state(store: CheckpointStore) -> None:
    states = [StreamState.ACTIVE, StreamState.ACTIVE, StreamState.FINALIZING,
              StreamState.COMPLETED, StreamState.FAILED]  # fmt: skip
    records = [make_stream(f"s{i}", state=s) for i, s in enumerate(states)]
    for record in records:
        await store.put_stream(record)

    def ids(found: list[StreamRecord]) -> set[str]:
        return {r.stream_id for r in found}

    assert ids(await store.list_streams()) == {r.stream_id for r in records}
    assert ids(await store.list_streams(frozenset({StreamState.ACTIVE}))) == {"s0", "s1"}
    unfinished = frozenset({StreamState.ACTIVE, StreamState.FINALIZING})
    assert ids(await store.list_streams(unfinished)) == {"s0", "s1", "s2"}
    assert await store.list_streams(frozenset()) == []
    listed = {r.stream_id: r for r in await store.list_streams()}
    for record in records:
        assert_same(listed[record.stream_id], record)


async def test_list_thousand_streams_quickly(store: CheckpointStore, backend: Backend) -> None:
    for i in range(1000):
        state = StreamState.COMPLETED if i % 10 else StreamState.ACTIVE
        await store.put_stream(make_stream(f"s{i:04d}", state=state))
    started = time.perf_counter()
    everything = await store.list_streams()
    middle = time.perf_counter()
    active = await store.list_streams(frozenset({StreamState.ACTIVE}))
    done = time.perf_counter()
    print(f"\n{backend.kind}: list 1000 streams {(middle - started) * 1000:.1f} ms, "
          f"filtered {(done - middle) * 1000:.1f} ms")  # fmt: skip
    assert len(everything) == 1000
    assert len(active) == 100
    assert done - started < 5


# -- parts ----------------------------------------------------------------------------


async def test_parts_come_back_in_ascending_order(store: CheckpointStore) -> None:
    await store.put_stream(make_stream())
    for number in (3, 10, 1, 2, 11):  # 10 and 11 sort after 2 numerically, not as text
        await store.put_part("s1", make_part(number))
    parts = await store.get_parts("s1")
    assert [p.part_number for p in parts] == [1, 2, 3, 10, 11]
    assert parts[0] == make_part(1)
    for part in parts:
        assert type(part.uploaded_at) is float
        assert type(part.offset) is int
        assert type(part.size) is int


async def test_same_part_number_replaces(store: CheckpointStore) -> None:
    await store.put_stream(make_stream())
    await store.put_part("s1", make_part(1, etag="first"))
    await store.put_part("s1", make_part(2))
    reupload = make_part(1, etag="second", uploaded_at=1_700_000_020.5)
    await store.put_part("s1", reupload)
    parts = await store.get_parts("s1")
    assert parts == [reupload, make_part(2)]


async def test_parts_are_per_stream(store: CheckpointStore) -> None:
    await store.put_stream(make_stream("a"))
    await store.put_stream(make_stream("b"))
    await store.put_part("a", make_part(1))
    assert await store.get_parts("b") == []


async def test_put_part_touches_last_activity(store: CheckpointStore) -> None:
    await store.put_stream(make_stream(last_activity_at=1_700_000_005.5))
    later = 1_700_000_099.123456789
    await store.put_part("s1", make_part(1, uploaded_at=later))
    got = await store.get_stream("s1")
    assert got is not None
    assert got.last_activity_at == later
    assert type(got.last_activity_at) is float
    # An older part (a late checkpoint of a re-upload) never moves activity backwards.
    await store.put_part("s1", make_part(2, uploaded_at=1_700_000_001.0))
    got = await store.get_stream("s1")
    assert got is not None
    assert got.last_activity_at == later
    # The rest of the record is untouched.
    assert got == make_stream(last_activity_at=later)


async def test_delete_parts_keeps_stream(store: CheckpointStore) -> None:
    record = make_stream(upload_id="u1")
    await store.put_stream(record)
    for number in (1, 2, 3):
        await store.put_part("s1", make_part(number))
    await store.delete_parts("s1")
    assert await store.get_parts("s1") == []
    assert await store.get_stream("s1") is not None
    await store.put_part("s1", make_part(1))  # the restarted upload checkpoints again
    assert [p.part_number for p in await store.get_parts("s1")] == [1]


async def test_delete_stream_removes_parts_and_index(store: CheckpointStore) -> None:
    await store.put_stream(make_stream("gone"))
    await store.put_stream(make_stream("kept"))
    await store.put_part("gone", make_part(1))
    await store.put_part("kept", make_part(1))
    await store.delete_stream("gone")
    assert await store.get_stream("gone") is None
    assert await store.get_parts("gone") == []
    assert [r.stream_id for r in await store.list_streams()] == ["kept"]
    assert len(await store.get_parts("kept")) == 1


# -- durability -----------------------------------------------------------------------


async def test_data_survives_reopening(backend: Backend) -> None:
    record = make_stream(upload_id="u1", state=StreamState.FINALIZING)
    async with backend.open() as first:
        await first.put_stream(record)
        await first.put_part("s1", make_part(1, uploaded_at=1.5))
        await first.put_part("s1", make_part(2, uploaded_at=2.5))
    async with backend.open() as second:
        assert_same(await second.get_stream("s1"), record)
        assert await second.get_parts("s1") == [make_part(1, 1.5), make_part(2, 2.5)]
        assert [r.stream_id for r in await second.list_streams()] == ["s1"]


async def test_closed_store_can_be_closed_again(backend: Backend) -> None:
    async with backend.open() as opened:
        await opened.ping()
        await opened.aclose()
    await opened.aclose()


# -- Redis: restarts and outages (a private server each, so the shared one stays up) --


async def test_redis_data_survives_server_restart_and_kill(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        record = make_stream(upload_id="u1", last_activity_at=1_700_000_099.5)
        async with open_redis_store(server.url) as store:
            await store.put_stream(record)
            await store.put_part("s1", make_part(1))  # older than last_activity_at
            server.restart()  # SIGTERM, then start on the same port and directory
            # The same client carries on once the server is back.
            assert_same(await store.get_stream("s1"), record)
            await store.put_part("s1", make_part(2))
            server.kill()  # a crash: AOF writes were already handed to the OS
            server.start()
        async with open_redis_store(server.url) as store:
            assert_same(await store.get_stream("s1"), record)
            assert await store.get_parts("s1") == [make_part(1), make_part(2)]


async def test_redis_outage_raises_transient_quickly(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "redis") as server:
        password_url = server.url.replace("redis://", "redis://:s3cr3t-pw@")
        async with open_redis_store(server.url) as store, open_redis_store(
            password_url
        ) as secret_store:
            await store.ping()
            server.stop()
            started = time.monotonic()
            with pytest.raises(TransientError):
                await store.ping()
            with pytest.raises(TransientError):
                await store.put_part("s1", make_part(1))
            with pytest.raises(TransientError):
                await store.list_streams()
            with pytest.raises(TransientError) as caught:
                await secret_store.put_stream(make_stream())
            assert time.monotonic() - started <= 10
            assert "s3cr3t-pw" not in str(caught.value)
            assert "s3cr3t-pw" not in repr(secret_store)
            server.start()  # back on the same port: the stores recover on their own
            await store.ping()
            await store.put_part("s1", make_part(1))


async def test_redis_bad_url_is_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        async with open_redis_store("http://user:s3cr3t-pw@example.invalid/"):
            pass
    assert caught.value.setting == "REDIS_URL"
    assert "s3cr3t-pw" not in str(caught.value)


# -- SQLite: one instance per state directory -----------------------------------------

_OPEN_IN_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from cefmp4.checkpoint.sqlite import open_sqlite_store
    from cefmp4.runtime.errors import ConfigError

    async def main() -> int:
        try:
            async with open_sqlite_store(Path(sys.argv[1])) as store:
                await store.ping()
                return len(await store.list_streams())
        except ConfigError as exc:
            print(exc.setting, exc.message)
            return 100

    sys.exit(asyncio.run(main()))
    """
)


async def _open_in_other_process(state_dir: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _OPEN_IN_CHILD, str(state_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_sqlite_second_instance_is_refused(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with open_sqlite_store(state_dir) as store:
        await store.put_stream(make_stream())
        code, out = await _open_in_other_process(state_dir)
        assert code == 100, out
        assert out.startswith("STATE_DIR another cefmp4 instance is already using"), out
        assert "REDIS_URL" in out
        # Within one process a second open is refused too.
        with pytest.raises(ConfigError) as caught:
            async with open_sqlite_store(state_dir):
                pass
        assert caught.value.setting == "STATE_DIR"
        await store.ping()  # the refused attempt did not disturb the owner
    code, out = await _open_in_other_process(state_dir)
    assert code == 1, out  # opened, and saw the one stream


async def test_sqlite_read_only_beside_the_owner(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    async with open_sqlite_store(state_dir) as owner:
        await owner.put_stream(make_stream())
        async with open_sqlite_store(state_dir, read_only=True) as reader:
            assert [r.stream_id for r in await reader.list_streams()] == ["s1"]
            await owner.put_part("s1", make_part(1))
            assert len(await reader.get_parts("s1")) == 1


async def test_sqlite_unusable_state_dir_is_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError) as caught:
        async with open_sqlite_store(blocker / "state"):
            pass
    assert caught.value.setting == "STATE_DIR"


async def test_sqlite_creates_state_dir_with_wal(tmp_path: Path) -> None:
    state_dir = tmp_path / "deep" / "state"
    async with open_sqlite_store(state_dir) as store:
        await store.put_stream(make_stream())
        assert (state_dir / "checkpoints.sqlite3").is_file()
        assert (state_dir / "checkpoints.sqlite3-wal").is_file()
        assert (state_dir / "lock").is_file()


async def test_find_by_inode_oldest_first(store: CheckpointStore) -> None:
    await store.put_stream(make_stream("late", inode=42, started_at=20.0))
    await store.put_stream(make_stream("early", inode=42, started_at=10.0))
    await store.put_stream(make_stream("other", inode=43))
    assert [r.stream_id for r in await store.find_by_inode(42)] == ["early", "late"]
    assert await store.find_by_inode(44) == []
    await store.delete_stream("early")
    assert [r.stream_id for r in await store.find_by_inode(42)] == ["late"]


async def test_redis_leases_and_fencing(redis_url: str) -> None:
    """SPEC §2.11: one owner at a time; a newer owner's token fences the older one out."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with (
        open_redis_store(redis_url, key_prefix=prefix) as first,
        open_redis_store(redis_url, key_prefix=prefix) as second,
    ):
        token_a = await first.acquire(7, "a", ttl=0.5)
        assert token_a is not None
        assert await second.acquire(7, "b", ttl=0.5) is None  # held by a
        assert await first.acquire(7, "a", ttl=0.5) == token_a  # re-entrant for the holder
        assert await first.renew(7, "a", ttl=0.5)
        assert not await second.renew(7, "b", ttl=0.5)
        first.fence("s1", 7, token_a)
        await first.put_stream(make_stream("s1", inode=7))
        await first.put_part("s1", make_part(1))

        await asyncio.sleep(0.7)  # a's lease expires (a paused process)
        token_b = await second.acquire(7, "b", ttl=5)
        assert token_b is not None
        assert token_b > token_a
        assert not await first.renew(7, "a", ttl=0.5)
        second.fence("s1", 7, token_b)
        await second.put_part("s1", make_part(2))
        # The former owner wakes up: every write is refused, nothing is overwritten.
        with pytest.raises(LeaseLost):
            await first.put_part("s1", make_part(3))
        with pytest.raises(LeaseLost):
            await first.put_stream(make_stream("s1", inode=7, state=StreamState.COMPLETED))
        with pytest.raises(LeaseLost):
            await first.delete_parts("s1")
        assert [p.part_number for p in await second.get_parts("s1")] == [1, 2]
        got = await second.get_stream("s1")
        assert got is not None
        assert got.state is StreamState.ACTIVE
        await first.release(7, "a")  # not the holder: no effect
        assert await second.acquire(7, "c", ttl=5) is None
        await second.release(7, "b")
        assert await second.acquire(7, "c", ttl=5) == token_b + 1


async def test_redis_lease_steal_only_from_the_named_holder(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        assert await store.holder(9) is None
        token = await store.acquire(9, "dead", ttl=30)
        assert token is not None
        assert await store.holder(9) == "dead"
        assert await store.steal(9, "someone-else", "me", ttl=30) is None
        stolen = await store.steal(9, "dead", "me", ttl=30)
        assert stolen == token + 1
        assert await store.holder(9) == "me"
        assert not await store.renew(9, "dead", ttl=30)


# -- records validated on load (SPEC §2.18): quarantined, never raised ---------------------


def _sqlite_exec(backend: Backend, sql: str, *args: object) -> None:
    assert backend.state_dir is not None
    with contextlib.closing(sqlite3.connect(backend.state_dir / "checkpoints.sqlite3")) as conn:
        conn.execute(sql, args)
        conn.commit()


async def _redis(backend: Backend, *command: str) -> None:
    async with redis.asyncio.from_url(backend.url) as client:
        await client.execute_command(*command)


# (name, sqlite statement, redis command); {id} is the stream id, {p} the Redis prefix.
CORRUPTIONS = [
    ("bogus state", "UPDATE streams SET state = 'bogus' WHERE stream_id = ?",
     ("HSET", "{p}stream:{id}", "state", "bogus")),
    ("non-numeric device", "UPDATE streams SET device = 'abc' WHERE stream_id = ?",
     ("HSET", "{p}stream:{id}", "device", "abc")),
    ("fractional inode", "UPDATE streams SET inode = 1.5 WHERE stream_id = ?",
     ("HSET", "{p}stream:{id}", "inode", "1.5")),
    ("text timestamp", "UPDATE streams SET started_at = 'yesterday' WHERE stream_id = ?",
     ("HSET", "{p}stream:{id}", "started_at", "yesterday")),
    ("nan timestamp", "UPDATE streams SET last_activity_at = 'nan' WHERE stream_id = ?",
     ("HSET", "{p}stream:{id}", "last_activity_at", "nan")),
    ("bytes for a path", "UPDATE streams SET path = x'00ff' WHERE stream_id = ?",
     ("HDEL", "{p}stream:{id}", "path")),
    ("zero part size", "UPDATE streams SET part_size = 0 WHERE stream_id = ?",
     ("HSET", "{p}stream:{id}", "part_size", "0")),
    ("broken part", "UPDATE parts SET offset_bytes = 'x' WHERE stream_id = ?",
     ("HSET", "{p}parts:{id}", "1", "{not json")),
    # JSON nested past Python's depth raises RecursionError, not ValueError.
    ("deeply nested part", "UPDATE parts SET size = x'00' WHERE stream_id = ?",
     ("HSET", "{p}parts:{id}", "1", "[" * 200_000)),
    ("part without etag", "UPDATE parts SET etag = x'ff' WHERE stream_id = ?",
     ("HSET", "{p}parts:{id}", "2", '{"offset":0,"size":5,"md5":"x","uploaded_at":1.0}')),
    ("part number not a number", "UPDATE parts SET part_number = 'one' "
     "WHERE stream_id = ? AND part_number = 1",
     ("HSET", "{p}parts:{id}", "one", '{"offset":0,"size":5,"etag":"e","md5":"x",'
                                      '"uploaded_at":1.0}')),
]  # fmt: skip


async def _corrupt(backend: Backend, stream_id: str, sql: str, command: tuple[str, ...]) -> None:
    if backend.kind == "sqlite":  # (a TEXT column turns a number into text: use a blob)
        _sqlite_exec(backend, sql, stream_id)
    else:
        await _redis(backend, *(c.replace("{p}", backend.prefix).replace("{id}", stream_id)
                                for c in command))  # fmt: skip


@pytest.mark.parametrize(("case", "sql", "command"), CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
async def test_a_malformed_record_is_quarantined_not_raised(
    backend: Backend, case: str, sql: str, command: tuple[str, ...]
) -> None:
    async with backend.open() as store:
        await store.put_stream(make_stream("good", inode=5, upload_id="u-good"))
        await store.put_stream(make_stream("bad", inode=5, upload_id="u-bad"))
        for number in (1, 2):
            await store.put_part("good", make_part(number))
            await store.put_part("bad", make_part(number))
    await _corrupt(backend, "bad", sql, command)
    async with backend.open() as store:
        with capture_logs() as events:
            for _ in range(2):  # warned about once, however often it is met
                assert [r.stream_id for r in await store.list_streams()] == ["good"]
                unfinished = await store.list_streams(frozenset({StreamState.ACTIVE}))
                assert [r.stream_id for r in unfinished] == ["good"]
                assert [r.stream_id for r in await store.find_by_inode(5)] == ["good"]
        quarantine = await store.list_quarantined()
        assert [q.stream_id for q in quarantine] == ["bad"]
        assert quarantine[0].reason
        assert quarantine[0].upload_id == "u-bad"  # the sweeper must not abort its upload
        if not sql.startswith("UPDATE parts"):
            assert await store.get_stream("bad") is None
        else:
            with pytest.raises(MalformedRecord):
                await store.get_parts("bad")
        assert len(await store.get_parts("good")) == 2
    warnings = [e for e in events if e["event"] == logs.RECORD_QUARANTINED]
    assert [w["stream_id"] for w in warnings] == ["bad"]


async def test_a_key_of_the_wrong_type_is_quarantined(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        await store.put_stream(make_stream("good"))
        await store.put_stream(make_stream("bad"))
        async with redis.asyncio.from_url(redis_url) as client:
            await client.delete(f"{prefix}stream:bad")
            await client.set(f"{prefix}stream:bad", "a string, not a hash")
        assert [r.stream_id for r in await store.list_streams()] == ["good"]
        assert [q.stream_id for q in await store.list_quarantined()] == ["bad"]
        assert await store.get_stream("bad") is None


async def test_a_completed_key_of_the_wrong_type_is_left_out_of_completed_files(
    redis_url: str,
) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        await store.put_stream(completed("good", inode=1))
        await store.put_stream(completed("bad", inode=2))
        async with redis.asyncio.from_url(redis_url) as client:
            await client.delete(f"{prefix}stream:bad")
            await client.set(f"{prefix}stream:bad", "a string, not a hash")
        with capture_logs() as events:
            assert [f.stream_id for f in await _all_completed(store, 10)] == ["good"]
    assert [e["stream_id"] for e in events if e["event"] == logs.RECORD_QUARANTINED] == ["bad"]


async def test_a_completed_field_that_is_not_utf8_leaves_out_that_record_only(
    redis_url: str,
) -> None:
    """Anyone who can write to Redis can store any bytes: the page still loads."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        await store.put_stream(completed("good", inode=1, path="/watch/cam/café.mp4"))
        await store.put_stream(completed("bad", inode=2))
        async with redis.asyncio.from_url(redis_url) as client:
            await client.hset(f"{prefix}stream:bad", "path", b"/watch/\xff.mp4")
        with capture_logs() as events:
            found = await _all_completed(store, 10)
    assert [(f.stream_id, f.path) for f in found] == [("good", "/watch/cam/café.mp4")]
    assert [e["stream_id"] for e in events if e["event"] == logs.RECORD_QUARANTINED] == ["bad"]


async def test_a_completed_streams_parts_are_not_read_to_list_it(backend: Backend) -> None:
    """Only unfinished streams are resumed from their parts; history is not re-read."""
    async with backend.open() as store:
        await store.put_stream(make_stream("old", state=StreamState.COMPLETED))
        await store.put_part("old", make_part(1))
    await _corrupt(backend, "old", CORRUPTIONS[7][1], CORRUPTIONS[7][2])
    async with backend.open() as store:
        assert [r.stream_id for r in await store.list_streams()] == ["old"]


# -- completed_files: the fingerprints of history, paged --------------------------------


def completed(stream_id: str, inode: int, **changes: object) -> StreamRecord:
    values: dict[str, object] = {
        "state": StreamState.COMPLETED, "final_size": 1000 + inode,
        "final_mtime_ns": 10**18 + inode, "completed_at": 1_700_000_100.0, **changes,
    }  # fmt: skip
    return make_stream(stream_id, inode=inode, **values)


async def _all_completed(store: CheckpointStore, limit: int) -> list[CompletedFile]:
    out: list[CompletedFile] = []
    cursor, pages = "", 0
    while True:
        page, cursor = await store.completed_files(cursor, limit)
        out += page
        pages += 1
        assert pages < 1000, "the cursor never ends"
        if not cursor:
            return out


@pytest.mark.parametrize("limit", [1, 7, 5000])
async def test_completed_files_pages_through_completed_streams_only(
    store: CheckpointStore, limit: int
) -> None:
    for i in range(40):
        await store.put_stream(completed(f"c{i:02d}", inode=i))
    await store.put_stream(make_stream("active", inode=100))
    await store.put_stream(make_stream("failed", inode=101, state=StreamState.FAILED))
    # A stream completed, then started again (a regrown file): no longer completed.
    await store.put_stream(completed("again", inode=102))
    await store.put_stream(completed("again", inode=102, state=StreamState.ACTIVE))
    await store.delete_stream("c39")
    found = await _all_completed(store, limit)
    by_id = {f.stream_id: f for f in found}  # a page may repeat one (Redis SSCAN)
    assert set(by_id) == {f"c{i:02d}" for i in range(39)}
    assert by_id["c05"] == CompletedFile(
        "c05", 2049, 5, 1005, 10**18 + 5, "/watch/cam/c05.mp4", "streams/c05/cam/c05.mp4",
        "video-streams",
    )  # fmt: skip


async def test_completed_files_keeps_64_bit_identities(store: CheckpointStore) -> None:
    big = (1 << 64) - 3
    await store.put_stream(completed("big", inode=big, device=(1 << 63) + 1, final_size=5,
                                     final_mtime_ns=6))
    [found] = await _all_completed(store, 10)
    assert (found.device, found.inode) == ((1 << 63) + 1, big)


async def test_a_completed_stream_without_final_size_or_mtime_is_no_fingerprint(
    store: CheckpointStore,
) -> None:
    await store.put_stream(completed("sized", inode=1))
    await store.put_stream(completed("no-size", inode=2, final_size=None))
    await store.put_stream(completed("no-mtime", inode=3, final_mtime_ns=None))
    with capture_logs() as events:
        assert [f.stream_id for f in await _all_completed(store, 10)] == ["sized"]
    assert not [e for e in events if e["event"] == logs.RECORD_QUARANTINED]


async def test_completed_files_of_an_empty_store(store: CheckpointStore) -> None:
    assert await store.completed_files() == ([], "")


# (column, its value in SQLite, Redis field, its value; None = absent) of a completed record.
BROKEN_FINGERPRINTS = {
    "text size": ("final_size", "'big'", "final_size", "big"),
    "fractional inode": ("inode", "2.5", "inode", "2.5"),
    "bytes for a key": ("object_key", "x'00ff'", "key", None),
}


def _breaking(case: str) -> tuple[str, tuple[str, ...]]:
    column, sql_value, field, value = BROKEN_FINGERPRINTS[case]
    sql = f"UPDATE streams SET {column} = {sql_value} WHERE stream_id = ?"
    command = ("HSET", "{p}stream:{id}", field, value) if value else (
        "HDEL", "{p}stream:{id}", field)  # fmt: skip
    return sql, command


@pytest.mark.parametrize("case", list(BROKEN_FINGERPRINTS))
async def test_a_malformed_completed_record_is_left_out_of_completed_files(
    backend: Backend, case: str
) -> None:
    async with backend.open() as store:
        await store.put_stream(completed("good", inode=1))
        await store.put_stream(completed("bad", inode=2))
    await _corrupt(backend, "bad", *_breaking(case))
    async with backend.open() as store:
        with capture_logs() as events:
            for _ in range(2):  # warned about once, however often it is met
                assert [f.stream_id for f in await _all_completed(store, 10)] == ["good"]
        assert "bad" in [q.stream_id for q in await store.list_quarantined()]
    warnings = [e for e in events if e["event"] == logs.RECORD_QUARANTINED]
    assert [w["stream_id"] for w in warnings] == ["bad"]


async def test_completed_files_of_many_streams_quickly(
    store: CheckpointStore, backend: Backend
) -> None:
    for i in range(2000):
        await store.put_stream(completed(f"c{i:04d}", inode=i))
    started = time.perf_counter()
    found = await _all_completed(store, 5000)
    took = time.perf_counter() - started
    print(f"\n{backend.kind}: completed_files of 2000 streams {took * 1000:.1f} ms")
    assert len({f.stream_id for f in found}) == 2000


# -- naming_uploads: which records name some upload ids ----------------------------------


@pytest.mark.parametrize("count", [3, 6000])  # 6000: more than one page of the scan
async def test_naming_uploads_finds_the_records_of_those_ids_only(
    store: CheckpointStore, count: int
) -> None:
    for i in range(count):
        await store.put_stream(completed(f"c{i:04d}", inode=i, upload_id=f"u{i}"))
    await store.put_stream(make_stream("active", inode=99_999, upload_id="u-active"))
    await store.put_stream(make_stream("none", inode=99_998))
    found = await store.naming_uploads(frozenset({"u1", "u-active", "u-nobody"}))
    assert sorted(r.stream_id for r in found) == ["active", "c0001"]
    assert all(isinstance(r, StreamRecord) for r in found)
    assert await store.naming_uploads(frozenset()) == []


async def test_naming_uploads_includes_quarantined_records(backend: Backend) -> None:
    async with backend.open() as store:
        await store.put_stream(make_stream("good", inode=1, upload_id="u-good"))
        await store.put_stream(make_stream("bad", inode=2, upload_id="u-bad"))
    await _corrupt(backend, "bad", CORRUPTIONS[0][1], CORRUPTIONS[0][2])
    async with backend.open() as store:
        found = await store.naming_uploads(frozenset({"u-good", "u-bad"}))
    by_id = {r.stream_id: r for r in found}
    assert isinstance(by_id["good"], StreamRecord)
    assert isinstance(by_id["bad"], QuarantinedRecord)
    assert by_id["bad"].upload_id == "u-bad"


# -- trust: records from outside WATCH_DIR or S3_KEY_PREFIX (SPEC §2.18) ------------------------


def test_untrusted_reason(tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    (watch / "cam").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (watch / "cam" / "escape").symlink_to(tmp_path / "secret")
    good = make_stream("s1", path=str(watch / "cam" / "a.mp4"), rel_path="cam/a.mp4",
                       key="streams/s1/cam/a.mp4")  # fmt: skip
    assert untrusted_reason(good, watch, "streams/") is None
    assert untrusted_reason(good, watch, "streams") is None
    cases = {
        "path": [str(tmp_path / "secret" / "a.mp4"), "/etc/passwd", "cam/a.mp4",
                 str(watch / "cam" / ".." / ".." / "secret" / "a.mp4"),
                 str(watch / "cam" / "escape" / "a.mp4"), str(watch)],
        "rel_path": ["/etc/passwd", "../secret/a.mp4", "cam/../../x.mp4", ""],
        "key": ["other/s1/a.mp4", "streams-archive/s1/a.mp4", "streams/../x.mp4", "streams/"],
    }  # fmt: skip
    for field, values in cases.items():
        for value in values:
            record = replace(good, **{field: value})
            assert untrusted_reason(record, watch, "streams/") is not None, (field, value)
    assert untrusted_reason(replace(good, bucket="other"), watch, "streams/", bucket="mine")
    assert untrusted_reason(good, watch, "streams/", bucket="video-streams") is None
    whole = replace(good, key="s1/cam/a.mp4")
    assert untrusted_reason(whole, watch, "") is None


# -- Redis: per-state index, fenced writes, lease namespace, every error mapped ----------------


async def test_redis_unfinished_listing_reads_only_unfinished_hashes(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        for i in range(50):
            await store.put_stream(make_stream(f"done{i}", state=StreamState.COMPLETED))
        await store.put_stream(make_stream("live"))
        await store.put_stream(make_stream("moving", state=StreamState.FINALIZING))
        await store.put_stream(make_stream("moving", state=StreamState.COMPLETED))
        async with redis.asyncio.from_url(redis_url) as client:
            before = await _hgetall_calls(client)
            got = await store.list_streams(frozenset({StreamState.ACTIVE,
                                                      StreamState.FINALIZING}))  # fmt: skip
            reads = await _hgetall_calls(client) - before
        assert [r.stream_id for r in got] == ["live"]
        assert reads <= 3  # the one live stream's hash and parts, not fifty-two hashes
        await store.delete_stream("live")
        assert await store.list_streams(frozenset({StreamState.ACTIVE})) == []


async def _hgetall_calls(client: redis.asyncio.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_redis_builds_the_state_index_for_older_data(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        await store.put_stream(make_stream("old-active"))
        await store.put_stream(make_stream("old-done", state=StreamState.COMPLETED))
    async with redis.asyncio.from_url(redis_url) as client:  # as an older version left it
        await client.delete(f"{prefix}state:active", f"{prefix}state:completed",
                            f"{prefix}state-index")
    async with open_redis_store(redis_url, key_prefix=prefix) as store:
        got = await store.list_streams(frozenset({StreamState.ACTIVE}))
        assert [r.stream_id for r in got] == ["old-active"]
        done = await store.list_streams(frozenset({StreamState.COMPLETED}))
        assert [r.stream_id for r in done] == ["old-done"]


async def test_redis_refuses_unfenced_writes_to_a_leased_stream(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with (
        open_redis_store(redis_url, key_prefix=prefix) as owner,
        open_redis_store(redis_url, key_prefix=prefix,  # e.g. `cefmp4 upload`
                         unfenced_writes="refuse_when_leased") as other,
    ):  # fmt: skip
        token = await owner.acquire(7, "owner", ttl=30)
        assert token is not None
        owner.fence("s1", 7, token)
        await owner.put_stream(make_stream("s1", inode=7))
        await owner.put_part("s1", make_part(1))
        with pytest.raises(LeaseLost):
            await other.put_stream(make_stream("s1", inode=7, state=StreamState.COMPLETED))
        with pytest.raises(LeaseLost):
            await other.put_stream(make_stream("s2", inode=7))  # a new stream of that file
        with pytest.raises(LeaseLost):
            await other.put_part("s1", make_part(2))
        with pytest.raises(LeaseLost):
            await other.delete_parts("s1")
        with pytest.raises(LeaseLost):
            await other.delete_stream("s1")
        assert [p.part_number for p in await owner.get_parts("s1")] == [1]
        await owner.release(7, "owner")
        await other.put_part("s1", make_part(2))  # nobody holds the lease now


async def test_redis_writes_of_a_held_lease_are_fenced_before_fence_is_called(
    redis_url: str,
) -> None:
    """A resume that writes before it binds the stream is fenced by the lease it holds:
    once another owner took over, that write is refused rather than silently unfenced."""
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with (
        open_redis_store(redis_url, key_prefix=prefix) as paused,
        open_redis_store(redis_url, key_prefix=prefix) as newer,
    ):
        assert await paused.acquire(9, "paused", ttl=0.3) is not None
        await paused.put_stream(make_stream("s9", inode=9))  # no fence() call: still fenced
        await asyncio.sleep(0.5)  # its lease expires
        assert await newer.acquire(9, "newer", ttl=30) is not None
        await newer.put_part("s9", make_part(1))
        with pytest.raises(LeaseLost):
            await paused.put_stream(make_stream("s9", inode=9, state=StreamState.FAILED))
        with pytest.raises(LeaseLost):
            await paused.put_part("s9", make_part(2))
        got = await newer.get_stream("s9")
        assert got is not None
        assert got.state is StreamState.ACTIVE


async def test_redis_allow_mode_keeps_unfenced_writes_of_unleased_files(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix) as store:  # default: allow
        await store.put_stream(make_stream("s1", inode=11))
        await store.put_part("s1", make_part(1))
        assert [p.part_number for p in await store.get_parts("s1")] == [1]


async def test_redis_require_fence_refuses_every_unfenced_write(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with open_redis_store(redis_url, key_prefix=prefix, unfenced_writes="refuse") as store:
        with pytest.raises(PermanentError, match="UNFENCED"):
            await store.put_stream(make_stream("s1", inode=8))
        token = await store.acquire(8, "me", ttl=30)
        assert token is not None
        store.fence("s1", 8, token)
        await store.put_stream(make_stream("s1", inode=8))
        await store.put_part("s1", make_part(1))


async def test_redis_lease_namespaces_do_not_collide(redis_url: str) -> None:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    async with (
        open_redis_store(redis_url, key_prefix=prefix, lease_namespace="fs-a") as a,
        open_redis_store(redis_url, key_prefix=prefix, lease_namespace="fs-b") as b,
        open_redis_store(redis_url, key_prefix=prefix, lease_namespace="fs-a") as a2,
    ):
        assert await a.acquire(42, "host-a", ttl=30) is not None
        assert await b.acquire(42, "host-b", ttl=30) is not None  # same inode, other fs
        assert await a2.acquire(42, "host-a2", ttl=30) is None  # same fs: one owner
        assert await a2.holder(42) == "host-a"


def test_lease_namespace_is_stable_and_explicit_wins(tmp_path: Path) -> None:
    assert lease_namespace(tmp_path / "w") == lease_namespace(tmp_path / "w")
    assert lease_namespace(tmp_path / "w") != lease_namespace(tmp_path / "v")
    assert lease_namespace(tmp_path / "w", "shared") == "shared"


async def test_redis_every_error_is_mapped(tmp_path: Path) -> None:
    """A real server stopped, restarted, made read-only, given a password: never a raw
    redis-py exception, always TransientError or PermanentError."""
    with RedisServer(tmp_path / "redis") as server:
        async with open_redis_store(server.url) as store, redis.asyncio.from_url(
            server.url
        ) as admin:
            await store.put_stream(make_stream("s1"))
            server.stop()
            calls = (store.ping, store.list_streams, store.list_quarantined,
                     lambda: store.get_parts("s1"), lambda: store.acquire(1, "me", 5))  # fmt: skip
            for call in calls:
                with pytest.raises(TransientError):
                    await call()
            server.start()
            await store.ping()
            # A replica of a master that does not exist: writes answer READONLY.
            await admin.execute_command("REPLICAOF", "127.0.0.1", "1")
            with pytest.raises(TransientError):
                await store.put_stream(make_stream("s2"))
            await admin.execute_command("REPLICAOF", "NO", "ONE")
            await store.put_stream(make_stream("s2"))
            # Wrong type of key: permanent, not a crash; the stream is quarantined.
            await admin.set("cefmp4:parts:s1", "string")
            with pytest.raises(MalformedRecord):
                await store.get_parts("s1")
            await admin.execute_command("CONFIG", "SET", "requirepass", "right-pw")
        wrong = server.url.replace("redis://", "redis://:wrong-pw@")
        async with open_redis_store(wrong) as store:
            with pytest.raises(PermanentError) as caught:
                await store.ping()
            assert "wrong-pw" not in str(caught.value)
        async with open_redis_store(server.url) as store:  # no password at all
            with pytest.raises(PermanentError):
                await store.list_streams()
        right = server.url.replace("redis://", "redis://:right-pw@")
        async with open_redis_store(right) as store:
            assert [r.stream_id for r in await store.list_streams()] == ["s2"]
            assert [q.stream_id for q in await store.list_quarantined()] == ["s1"]


async def test_sqlite_unfinished_listing_uses_the_state_index(tmp_path: Path) -> None:
    async with open_sqlite_store(tmp_path / "state") as store:
        await store.put_stream(make_stream("s1"))
        db = store.db_path
    with contextlib.closing(sqlite3.connect(db)) as conn:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM streams WHERE state IN ('active', 'finalizing')"
        ).fetchall()
    assert any("streams_state" in str(row) for row in plan), plan
