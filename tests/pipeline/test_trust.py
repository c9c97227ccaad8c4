"""Checkpoint records are never trusted (issue #9.6, SPEC §2.18): a record pointing
outside WATCH_DIR or S3_KEY_PREFIX, or whose parts do not parse, is reported once and
never acted on, and its upload is never swept as an orphan."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from cefmp4.checkpoint import (
    CheckpointStore,
    MalformedRecord,
    PartRecord,
    StreamRecord,
    StreamState,
)
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.config.settings import Settings
from cefmp4.core.keys import new_stream_id, object_key
from cefmp4.runtime.app import App
from cefmp4.runtime.housekeeping import sweep
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.burst import wait_idle
from tests.pipeline.conftest import (
    FakeProber,
    capture,
    daemon,
    make_settings,
    pattern,
    until,
    videos,
)


def forged(
    settings: Settings, path: Path, key: str, *, upload_id: str | None = None,
    state: StreamState = StreamState.ACTIVE,
) -> StreamRecord:  # fmt: skip
    st = path.stat()
    return StreamRecord(
        stream_id=new_stream_id(), path=str(path), rel_path=path.name, device=st.st_dev,
        inode=st.st_ino, bucket=settings.s3_bucket_name, key=key, part_size=5 * 2**20,
        max_parts=settings.max_parts, state=state, started_at=1.0, last_activity_at=2.0,
        upload_id=upload_id,
    )  # fmt: skip


async def put(settings: Settings, *records: StreamRecord) -> None:
    async with open_sqlite_store(settings.state_dir) as db:
        for record in records:
            await db.put_stream(record)


def quarantine_warnings(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "record_quarantined"]


async def test_a_forged_record_outside_watch_dir_and_prefix_is_never_acted_on(
    settings: Settings, watch: Path, tmp_path: Path, store: MemoryObjectStore,
    prober: FakeProber,
) -> None:  # fmt: skip
    secret = tmp_path / "secret.mp4"  # outside WATCH_DIR
    secret.write_bytes(b"SECRET" * 1000)
    record = forged(settings, secret, "elsewhere/secret.mp4")
    await put(settings, record)
    (watch / "cam.mp4").write_bytes(pattern(1000))
    with capture() as logs:
        async with daemon(settings, store, prober) as app:
            await until(lambda: len(videos(store)) == 1, what="the valid file uploaded")
            assert app.ctx is not None
            quarantined = await app.ctx.checkpoints.list_quarantined()
            # The takeover/rescan paths list again: still one warning.
            await app.ctx.checkpoints.list_streams()
    assert [q.stream_id for q in quarantined] == [record.stream_id]
    assert quarantined[0].reason == "path is outside WATCH_DIR"
    assert list(videos(store).values()) == [pattern(1000)]
    assert not any(k.startswith("elsewhere") for k in store.objects)
    assert not any(b"SECRET" in o.body for o in store.objects.values())
    assert [w["stream_id"] for w in quarantine_warnings(logs)] == [record.stream_id]


async def test_the_sweeper_never_aborts_the_upload_of_an_untrusted_record(
    settings: Settings, watch: Path, tmp_path: Path, store: MemoryObjectStore,
    prober: FakeProber,
) -> None:  # fmt: skip
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(b"x")
    stream_id = new_stream_id()
    key = object_key(settings.s3_key_prefix, stream_id, "secret.mp4")  # inside the prefix
    upload_id = await store.create_multipart(key, "video/mp4")
    orphan = await store.create_multipart(
        object_key(settings.s3_key_prefix, new_stream_id(), "gone.mp4"), "video/mp4"
    )
    await put(settings, forged(settings, secret, key, upload_id=upload_id))
    async with daemon(settings, store, prober) as app:
        assert app.ctx is not None
        aborted = await sweep(app.ctx, grace_seconds=0)
    assert [u.upload_id for u in aborted] == [orphan]
    remaining = await store.list_multipart_uploads(settings.s3_key_prefix)
    assert [u.upload_id for u in remaining] == [upload_id]


class BrokenParts:
    """The real SQLite store, except that one stream's parts do not parse (as a corrupt
    Redis hash would) — the rest of the Protocol passes through."""

    def __init__(self, store: CheckpointStore, stream_id: str) -> None:
        self._store, self._broken = store, stream_id
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def get_parts(self, stream_id: str) -> list[PartRecord]:
        if stream_id == self._broken:
            self.calls += 1
            raise MalformedRecord("part 1: etag is not a string")
        return await self._store.get_parts(stream_id)


async def test_a_stream_whose_parts_do_not_parse_is_skipped_with_one_warning(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    broken_file = watch / "broken.mp4"
    broken_file.write_bytes(pattern(500, seed=1))
    rel = broken_file.name
    record = forged(settings, broken_file, object_key(settings.s3_key_prefix, "s1", rel))
    record = StreamRecord(**{**_fields(record), "stream_id": "s1"})
    await put(settings, record)
    (watch / "ok.mp4").write_bytes(pattern(700, seed=2))
    async with open_sqlite_store(settings.state_dir) as db:
        checkpoints = BrokenParts(db, "s1")
        app = App(settings, objects=store, prober=prober, checkpoints=checkpoints)
        with capture() as logs:
            await app.run_burst()
            assert app.supervisor is not None
            # A second look (the rescan, the takeover loop) does not try it again.
            assert app.ctx is not None
            assert "s1" not in {r.stream_id for r in await app.ctx.checkpoints.list_streams()}
            await wait_idle(app.supervisor)
    assert checkpoints.calls == 1
    assert pattern(700, seed=2) in videos(store).values()
    async with open_sqlite_store(settings.state_dir, read_only=True) as db:
        assert await db.get_stream("s1") == record  # left as it was, for the operator
    warnings = quarantine_warnings(logs)
    assert [w["stream_id"] for w in warnings] == ["s1"]
    assert "parts do not parse" in warnings[0]["reason"]
    assert not [e for e in logs if e["log_level"] == "error"]


def _fields(record: StreamRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in StreamRecord.__dataclass_fields__}


def completed_record(settings: Settings, path: Path, key: str | None = None) -> StreamRecord:
    """A COMPLETED stream of ``path`` as it is now, as a finished upload leaves it."""
    st = path.stat()
    record = forged(settings, path, "", state=StreamState.COMPLETED)
    record.rel_path = path.relative_to(settings.watch_dir).as_posix()
    record.key = key or object_key(settings.s3_key_prefix, record.stream_id, record.rel_path)
    record.final_size, record.final_mtime_ns = st.st_size, st.st_mtime_ns
    record.status, record.completed_at = "complete", 3.0
    return record


async def test_a_completed_record_outside_the_prefix_does_not_stop_its_file_being_uploaded(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """A forged "already uploaded" record must not keep a recording out of S3: its key
    lies outside S3_KEY_PREFIX, so it is quarantined and the file is uploaded anyway."""
    trusted, forged_done = watch / "done.mp4", watch / "victim.mp4"
    trusted.write_bytes(pattern(500))
    forged_done.write_bytes(pattern(700))
    bad = completed_record(settings, forged_done, key="elsewhere/victim.mp4")
    await put(settings, completed_record(settings, trusted), bad)
    with capture() as logs:
        async with daemon(settings, store, prober) as app:
            await until(lambda: len(videos(store)) == 1, what="the victim uploaded")
            assert app.ctx is not None
            quarantined = await app.ctx.checkpoints.list_quarantined()
    assert list(videos(store).values()) == [pattern(700)]  # the trusted one is not redone
    assert [(q.stream_id, q.reason) for q in quarantined] == [
        (bad.stream_id, "key is outside S3_KEY_PREFIX")
    ]
    assert [w["stream_id"] for w in quarantine_warnings(logs)] == [bad.stream_id]


class CountingStore:
    """The real SQLite store, counting every call by name."""

    def __init__(self, store: CheckpointStore) -> None:
        self._store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return counted


async def test_a_rescan_of_uploaded_files_reads_no_checkpoint_and_asks_s3_nothing(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, rescan_interval_seconds=1)
    files = []
    for i in range(60):
        (watch / f"cam{i % 3}").mkdir(exist_ok=True)
        path = watch / f"cam{i % 3}" / f"r{i:02d}.mp4"
        path.write_bytes(pattern(100 + i))
        files.append(path)
    await put(settings, *(completed_record(settings, p) for p in files))
    async with open_sqlite_store(settings.state_dir) as db:
        counting = CountingStore(db)
        app = App(settings, objects=store, checkpoints=counting, prober=prober)  # type: ignore[arg-type]
        stop = asyncio.Event()
        with capture() as logs:
            task = asyncio.create_task(app.run(stop))
            try:
                await until(app.ready.is_set, what="ready")
                before, requests = dict(counting.calls), dict(store.calls)
                await until(lambda: sum(e["event"] == "rescan" for e in logs) >= 2,
                            what="two rescans")  # fmt: skip
                after, requests_after = dict(counting.calls), dict(store.calls)
            finally:
                stop.set()
                await asyncio.wait_for(task, 10)
    rescans = [e for e in logs if e["event"] == "rescan"]
    assert all(e["files"] == 60 and e["streams"] == 0 for e in rescans)
    assert "stream_started" not in [e["event"] for e in logs]
    assert before == after  # not one checkpoint read (nor write) per rescan
    assert requests == requests_after  # nor an S3 request
    assert not videos(store)
