"""Resume and rebuild against what S3 holds; errors opening a file are not deletions."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from cefmp4.checkpoint import StreamState
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.config.settings import Settings
from cefmp4.runtime.errors import ContentChanged, SourceBusy, SourcePermission, UploadNotFound
from cefmp4.storage import UploadedPart
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.source import OpenedSource
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    burst,
    capture,
    make_app,
    metadata,
    pattern,
    records,
    videos,
)
from tests.pipeline.test_holes import seed


async def _active(settings: Settings, store: MemoryObjectStore, path: Path, data: bytes,
                  parts: int) -> str:
    record = await seed(settings, store, path, data, parts=parts, status=None)
    async with open_sqlite_store(settings.state_dir) as db:
        record.state = StreamState.ACTIVE
        record.status = None
        await db.put_stream(record)
    return record.key


async def test_a_part_in_s3_but_not_in_the_checkpoint_is_adopted(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    data = pattern(3 * PART + 4)
    path.write_bytes(data)
    key = await _active(settings, store, path, data, parts=1)
    [upload] = await store.list_multipart_uploads("")
    body = data[PART:2 * PART]  # a crash between UploadPart 2 and its checkpoint write
    await store.upload_part(key, upload.upload_id, 2, body,
                            base64.b64encode(hashlib.md5(body).digest()).decode())
    with capture() as logs:
        await burst(settings, store, prober)
    assert store.objects[key].body == data
    adopted = [e["part_number"] for e in logs if e["event"] == "part_adopted"]
    assert adopted == [2]
    sent = [e["part_number"] for e in logs if e["event"] in ("part_uploaded", "part_reuploaded")]
    assert 1 not in sent
    assert 2 not in sent


async def test_an_upload_s3_forgot_is_restarted_from_byte_zero(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    data = pattern(2 * PART + 4)
    path.write_bytes(data)
    key = await _active(settings, store, path, data, parts=2)
    [upload] = await store.list_multipart_uploads("")
    await store.abort_multipart(key, upload.upload_id)  # expired by a lifecycle rule
    await burst(settings, store, prober)
    assert store.objects[key].body == data


async def test_a_wiped_checkpoint_store_is_rebuilt_from_s3_by_the_daemon(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    from tests.pipeline.conftest import daemon, until

    path = watch / "cam.mp4"
    data = pattern(2 * PART + 4)
    path.write_bytes(data)
    key = await _active(settings, store, path, data, parts=2)
    async with open_sqlite_store(settings.state_dir) as db:
        for rec in await db.list_streams():
            await db.delete_stream(rec.stream_id)
    with capture() as logs:
        async with daemon(settings, store, prober):
            await until(lambda: key in store.objects, what="the rebuilt stream's object")
    assert store.objects[key].body == data
    assert any(e["event"] == "stream_rebuilt" for e in logs)
    sent = [e["part_number"] for e in logs if e["event"] in ("part_uploaded", "part_reuploaded")]
    assert sent == [3]


@pytest.mark.parametrize("error", [SourcePermission("EACCES"), SourceBusy("EMFILE")])
async def test_a_file_that_cannot_be_opened_now_is_not_taken_for_deleted(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    monkeypatch: pytest.MonkeyPatch, error: Exception,
) -> None:
    path = watch / "cam.mp4"
    data = pattern(2 * PART + 4)
    path.write_bytes(data)
    key = await _active(settings, store, path, data, parts=1)

    async def refuse(path: Path, *, inode: int | None = None) -> OpenedSource:
        raise error

    monkeypatch.setattr("cefmp4.streams.lifecycle.open_source", refuse)
    await burst(settings, store, prober)
    assert videos(store) == {}
    [rec] = await records(settings)
    assert rec.state is StreamState.ACTIVE  # still resumable: nothing finalized as deleted
    monkeypatch.undo()
    await burst(settings, store, prober)
    assert store.objects[key].body == data
    assert metadata(store, key)["status"] == "complete"


async def test_emfile_on_a_new_file_is_retried_not_dropped(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(3):
        (watch / f"cam{i}.mp4").write_bytes(pattern(100 + i, i))
    from cefmp4.streams.source import open_source as real
    refused = 0

    async def flaky(path: Path, *, inode: int | None = None) -> OpenedSource:
        nonlocal refused
        if refused < 2:
            refused += 1
            raise SourceBusy("EMFILE: Too many open files")
        return await real(path, inode=inode)

    monkeypatch.setattr("cefmp4.streams.lifecycle.open_source", flaky)
    app = make_app(settings, store, prober)
    await app.run_burst()
    assert refused == 2
    assert len(videos(store)) == 3


async def test_the_file_deleted_while_down_with_nothing_uploaded_fails_cleanly(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    path.write_bytes(b"x" * 10)
    await _active(settings, store, path, b"x" * 10, parts=0)
    path.unlink()
    await burst(settings, store, prober)
    assert videos(store) == {}
    assert await store.list_multipart_uploads("") == []
    [rec] = await records(settings)
    assert rec.state is StreamState.FAILED
    assert rec.error is not None


async def test_a_part_rewritten_after_it_was_hashed_is_hashed_and_sent_again(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    (watch / "cam.mp4").write_bytes(pattern(PART + 9))
    store.fail_next("upload_part", ContentChanged("BadDigest"), times=1)
    await burst(settings, store, prober)
    [body] = videos(store).values()
    assert body == (watch / "cam.mp4").read_bytes()


async def test_no_such_upload_for_one_part_restarts_and_completes(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    data = pattern(PART + 9)
    (watch / "cam.mp4").write_bytes(data)
    store.fail_next("upload_part", UploadNotFound("NoSuchUpload"), times=1)
    with capture() as logs:
        await burst(settings, store, prober)
    assert list(videos(store).values()) == [data]
    assert [e["event"] for e in logs].count("upload_restarted") == 1


async def test_a_file_that_took_a_deleted_recordings_inode_number_is_a_new_stream(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """ext4 hands a deleted file's inode number to the next new file: a stream unfinished
    at a crash whose recording was deleted while down must not resume on that stranger
    (it re-sent every part from the new file's bytes: the recording lost, simulator seed
    35582). It ends with what S3 holds; the stranger is a stream of its own."""
    old = pattern(2 * PART + 10, seed=1)
    (watch / "cam0.mp4").write_bytes(old)
    key = await _active(settings, store, watch / "cam0.mp4", old, parts=2)
    (watch / "cam0.mp4").unlink()
    new = watch / "sub" / "cam1.mp4"
    new.parent.mkdir()
    new.write_bytes(fresh := pattern(3 * PART + 7, seed=2))  # past what went up
    async with open_sqlite_store(settings.state_dir) as db:  # the number, reused
        [record] = await db.list_streams(frozenset({StreamState.ACTIVE}))
        record.inode, record.device = new.stat().st_ino, new.stat().st_dev
        await db.put_stream(record)
    with capture() as logs:
        await burst(settings, store, prober)
    assert store.objects[key].body == old[: 2 * PART]
    assert metadata(store, key)["status"] == "source_deleted"
    assert sorted(videos(store).values(), key=len) == [old[: 2 * PART], fresh]
    assert [e["reason"] for e in logs if e["event"] == "source_gone"] == [
        "inode reused by another file"
    ]
    assert await store.list_multipart_uploads("") == []


async def test_a_file_renamed_and_patched_while_down_keeps_its_stream(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """The same look from outside, but the recording's own: moved, and its header patched
    (the ``mdat`` size) while down. Part 2 still holds what went up: one object."""
    data = bytearray(pattern(3 * PART + 10, seed=3))
    (watch / "cam0.mp4").write_bytes(data)
    key = await _active(settings, store, watch / "cam0.mp4", bytes(data), parts=2)
    data[0:8] = b"\xff" * 8
    (watch / "cam0.mp4").write_bytes(data)
    (watch / "cam0.mp4").rename(watch / "done.mp4")
    with capture() as logs:
        await burst(settings, store, prober)
    assert videos(store) == {key: bytes(data)}
    assert metadata(store, key)["status"] == "complete"
    assert not [e for e in logs if e["event"] == "source_gone"]


async def test_a_file_overwritten_while_down_keeps_the_uploaded_parts(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Cut and written again past what went up while no process watched (simulator seed
    56196: the truncation was seen, its checkpoint not yet written, then a crash): the size
    shows nothing, none of the parts is in the file. Its parts end as their own object."""
    old = pattern(2 * PART + 10, seed=1)
    (watch / "cam0.mp4").write_bytes(old)
    key = await _active(settings, store, watch / "cam0.mp4", old, parts=2)
    (watch / "cam0.mp4").write_bytes(new := pattern(3 * PART, seed=2))  # O_TRUNC: same inode
    with capture() as logs:
        await burst(settings, store, prober)
    assert store.objects[key].body == old[: 2 * PART]
    assert metadata(store, key)["status"] == "truncated"
    assert sorted(videos(store).values(), key=len) == [old[: 2 * PART], new]
    assert [e["reason"] for e in logs if e["event"] == "source_gone"] == [
        "rewritten while nobody watched"
    ]
    assert await store.list_multipart_uploads("") == []


async def test_a_file_cut_and_regrown_while_down_keeps_the_uploaded_parts(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Simulator seed 80950: cut inside the last uploaded part (the truncation seen, a crash
    before its checkpoint) and grown back past it while down. The first parts still match;
    the last does not: its bytes in S3 are kept, not replaced by the new ones."""
    old = pattern(3 * PART + 10, seed=1)
    (watch / "cam0.mp4").write_bytes(old)
    key = await _active(settings, store, watch / "cam0.mp4", old, parts=3)
    cut = 2 * PART + 100
    with (watch / "cam0.mp4").open("r+b") as f:
        f.truncate(cut)
        f.seek(cut)
        f.write(pattern(2 * PART, seed=2))
    now = (watch / "cam0.mp4").read_bytes()
    await burst(settings, store, prober)
    assert store.objects[key].body == old[: 3 * PART]
    assert metadata(store, key)["status"] == "truncated"
    assert sorted(videos(store).values(), key=len) == [old[: 3 * PART], now]
    assert await store.list_multipart_uploads("") == []


async def test_a_read_error_while_checking_a_resumed_file_defers_it(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """EIO while the resumed file is compared with its parts says nothing of its bytes: not
    taken for a rewrite (which would end the stream and start another), but one
    ``stream_deferred`` line per look and the stream left unfinished; the next run completes it."""
    import cefmp4.streams.lifecycle

    data = pattern(2 * PART + 10, seed=1)
    (watch / "cam0.mp4").write_bytes(data)
    key = await _active(settings, store, watch / "cam0.mp4", data, parts=2)

    def eio(fd: int, part: object) -> bool:
        raise SourcePermission("read at byte 0: [Errno 5] Input/output error")

    with monkeypatch.context() as patch, capture() as logs:
        patch.setattr(cefmp4.streams.lifecycle, "holds", eio)
        await burst(settings, store, prober)
    deferred = [e for e in logs if e["event"] == "stream_deferred"]  # retried, then left
    assert deferred
    assert all("Input/output error" in e["error"] for e in deferred)
    assert videos(store) == {}
    [rec] = await records(settings)
    assert rec.state is StreamState.ACTIVE
    await burst(settings, store, prober)
    assert videos(store) == {key: data}


async def test_a_part_number_outside_the_schedule_in_listparts_is_ignored(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """ListParts is input, not truth: a part numbered 0 or past MAX_PARTS (a broken or
    hostile S3) is never adopted, and never ends the resume (before: a ValueError from the
    schedule failed the stream on every restart)."""
    path = watch / "cam.mp4"
    data = pattern(2 * PART + 4)
    path.write_bytes(data)
    key = await _active(settings, store, path, data, parts=1)
    real = store.list_parts

    async def hostile(k: str, upload_id: str) -> list[UploadedPart]:
        return [*await real(k, upload_id), UploadedPart(0, PART, "0" * 32),
                UploadedPart(10_001, PART, "1" * 32)]

    store.list_parts = hostile  # type: ignore[method-assign]
    with capture() as logs:
        await burst(settings, store, prober)
    assert store.objects[key].body == data
    assert not [e for e in logs if e["event"] in ("stream_failed", "error")]
