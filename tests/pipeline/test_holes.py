"""Regression tests for the data-path holes of issue #10, each on the fast layer.

Crashes are reproduced by writing the state a crash leaves (checkpoint rows in SQLite,
parts or an object in S3) and starting the App on it, exactly as a restart does.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import crc32c
import pytest

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.config.settings import Settings
from cefmp4.core.hashing import PartDigest, crc64nvme, header_window
from cefmp4.core.keys import new_stream_id, object_key
from cefmp4.runtime.errors import TransientError, UploadNotFound
from cefmp4.storage import PartBody
from cefmp4.storage.memory import MemoryObjectStore
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    burst,
    capture,
    daemon,
    make_settings,
    metadata,
    pattern,
    records,
    until,
    videos,
)


async def seed(
    settings: Settings, store: MemoryObjectStore, path: Path, data: bytes, *, parts: int,
    status: str | None, completed: bool = False, stray: int | None = None,
    crc: bool = False,
) -> StreamRecord:
    """The state a crash during finalize leaves: ``parts`` parts of ``data`` in S3 and
    in the checkpoint, the stream FINALIZING with ``status``; ``completed``: Complete had
    happened too (from those parts); ``stray``: one more part, past a gap, uploaded and
    checkpointed but not in the object. ``crc``: parts recorded as the uploader records them
    (CRC32C, CRC64NVME, part 1's body past its header), else by their MD5 (as reconcile
    adopts them, or as records from before the CRCs are)."""
    st = path.stat()
    stream_id = new_stream_id()
    rel = path.relative_to(settings.watch_dir).as_posix()
    key = object_key(settings.s3_key_prefix, stream_id, rel)
    upload_id = await store.create_multipart(key, "video/mp4")
    records_: list[PartRecord] = []
    for n in [*range(1, parts + 1), *([stray] if stray else [])]:
        body = data[(n - 1) * PART:n * PART]
        digest = hashlib.md5(body).digest()
        etag = await store.upload_part(key, upload_id, n, body, base64.b64encode(digest).decode())
        recorded = digest.hex()
        if crc:
            past = header_window(n, (n - 1) * PART, len(body))
            recorded = PartDigest(crc32c.crc32c(body), None, crc64nvme(body), None if past is None
                                  else (past, crc32c.crc32c(body[past:]))).record
        records_.append(PartRecord(n, (n - 1) * PART, len(body), etag, recorded, 1.0))
    if completed:
        made = [(p.part_number, p.etag) for p in records_[:parts]]
        await store.complete_multipart(key, upload_id, made)
    record = StreamRecord(
        stream_id=stream_id, path=str(path), rel_path=rel, device=st.st_dev, inode=st.st_ino,
        bucket=store.bucket, key=key, part_size=PART, max_parts=settings.max_parts,
        state=StreamState.FINALIZING, started_at=1.0, last_activity_at=2.0,
        upload_id=upload_id, status=status, completed_at=2.0,
    )
    async with open_sqlite_store(settings.state_dir) as db:
        await db.put_stream(record)
        for part in records_:
            await db.put_part(stream_id, part)
    return record


def rewrite(path: Path, data: bytes) -> None:
    """Truncate and write new bytes in place: the same inode, another recording."""
    with path.open("r+b") as f:
        f.truncate(0)
        f.write(data)


async def test_hole1_crash_in_a_truncated_streams_finalize_keeps_the_uploaded_bytes(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    old = pattern(3 * PART + 50, seed=1)
    path.write_bytes(old)
    record = await seed(settings, store, path, old, parts=3, status="truncated")
    new = pattern(4 * PART, seed=2)  # longer than what was uploaded: no truncation to see
    rewrite(path, new)
    await burst(settings, store, prober)
    assert store.objects[record.key].body == old[: 3 * PART]
    assert metadata(store, record.key)["status"] == "truncated"
    assert sorted(videos(store).values(), key=len) == [old[: 3 * PART], new]
    assert await store.list_multipart_uploads("") == []


async def test_hole1_nothing_uploaded_before_truncation_is_no_empty_object(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    old = pattern(100, seed=1)
    path.write_bytes(old)
    record = await seed(settings, store, path, old, parts=0, status="truncated")
    new = pattern(PART + 1, seed=2)
    rewrite(path, new)
    await burst(settings, store, prober)
    assert record.key not in store.objects
    assert list(videos(store).values()) == [new]
    states = {r.stream_id: r.state for r in await records(settings)}
    assert states[record.stream_id] is StreamState.FAILED


async def test_hole1_a_completed_object_is_never_overwritten_by_a_rewritten_file(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    old = pattern(2 * PART + 9, seed=1)
    path.write_bytes(old)
    # Complete happened, the crash came before the metadata; then the file was rewritten.
    record = await seed(settings, store, path, old, parts=3, status="complete", completed=True)
    new = pattern(3 * PART, seed=2)
    rewrite(path, new)
    await burst(settings, store, prober)
    assert store.objects[record.key].body == old
    assert metadata(store, record.key)["total_size_bytes"] == len(old)
    assert new in videos(store).values()


async def test_hole1_a_truncated_stream_completed_from_its_contiguous_parts_is_confirmed(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Sim seed 310: the kept object was completed from parts 1..3 while the checkpoint also
    held part 5 (4 was cancelled by the truncation); the crash came before the metadata.
    The restart must see the object as completed, not restart the upload and fail."""
    path = watch / "cam.mp4"
    old = pattern(5 * PART, seed=1)
    path.write_bytes(old)
    record = await seed(
        settings, store, path, old, parts=3, status="truncated", completed=True, stray=5
    )
    os.truncate(path, 0)
    await burst(settings, store, prober)
    assert store.objects[record.key].body == old[: 3 * PART]
    assert metadata(store, record.key)["status"] == "truncated"
    states = {r.stream_id: r.state for r in await records(settings)}
    assert states[record.stream_id] is StreamState.COMPLETED
    assert await store.list_multipart_uploads("") == []


async def test_hole1_an_idle_stream_whose_file_went_away_is_not_called_complete(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Sim seed 300: the idle end (status complete) was checkpointed, the file grew, the
    process crashed mid-verification and the file was deleted while it was down. What S3
    kept is a prefix the file once held as part of more: not a "complete" object."""
    path = watch / "cam.mp4"
    old = pattern(5 * PART + 7, seed=1)
    path.write_bytes(old)
    record = await seed(settings, store, path, old, parts=3, status="complete")
    path.unlink()
    await burst(settings, store, prober)
    assert store.objects[record.key].body == old[: 3 * PART]
    doc = metadata(store, record.key)
    assert (doc["status"], doc["completed_by"]) == ("source_deleted", "source_deleted")
    assert await store.list_multipart_uploads("") == []


@pytest.mark.parametrize("status", ["complete", "truncated"])  # truncated: it was replaced
async def test_hole1_an_empty_recordings_object_written_before_a_crash_gets_its_metadata(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber, status: str
) -> None:
    """Sim seed 9252: an empty file's object was written (PutObject), the crash came before
    the metadata and the file went away: the restart must publish it, not fail the stream
    and leave an object without a metadata document."""
    path = watch / "cam.mp4"
    path.write_bytes(b"")
    record = await seed(settings, store, path, b"", parts=0, status=status)
    assert record.upload_id is not None
    await store.abort_multipart(record.key, record.upload_id)
    await store.put_object(record.key, b"", "video/mp4")
    path.unlink()
    await burst(settings, store, prober)
    doc = metadata(store, record.key)
    assert (doc["status"], doc["total_size_bytes"]) == (status, 0)
    states = {r.stream_id: r.state for r in await records(settings)}
    assert states[record.stream_id] is StreamState.COMPLETED


async def test_hole1_an_empty_recordings_object_stands_when_the_file_grew_while_down(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Sim seed 54164: the same crash, but the file grew while down, and a part of the
    resumed finalize met NoSuchUpload (the key already holds the empty object). That object
    gets its metadata; the bytes since are a new stream's, and no upload is left open."""
    path = watch / "cam.mp4"
    path.write_bytes(b"")
    record = await seed(settings, store, path, b"", parts=0, status="complete")
    assert record.upload_id is not None
    await store.abort_multipart(record.key, record.upload_id)
    await store.put_object(record.key, b"", "video/mp4")
    path.write_bytes(grown := pattern(PART + 5, seed=4))
    store.fail_next("upload_part", UploadNotFound("NoSuchUpload"), times=1)
    await burst(settings, store, prober)
    doc = metadata(store, record.key)
    assert (doc["status"], doc["total_size_bytes"]) == ("complete", 0)
    assert sorted(videos(store).values(), key=len) == [b"", grown]
    assert await store.list_multipart_uploads("") == []


class TwoAtOnceLost(MemoryObjectStore):
    """UploadPart answers NoSuchUpload to the first two calls, both at the same moment
    (MinIO purging a stale upload while a catch-up has several parts in flight)."""

    def __init__(self) -> None:
        super().__init__("test-bucket")
        self._arrived = 0
        self._both = asyncio.Event()

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: PartBody,
        md5_b64: str = "", **check: str
    ) -> str:
        if self._arrived < 2:
            self._arrived += 1
            if self._arrived == 2:
                self._both.set()
            await self._both.wait()
            raise UploadNotFound(f"UploadPart failed: NoSuchUpload ({upload_id})")
        return await super().upload_part(key, upload_id, part_number, body, md5_b64, **check)


async def test_hole2_no_such_upload_with_two_parts_in_flight_restarts_the_upload(
    settings: Settings, watch: Path, prober: FakeProber
) -> None:
    store = TwoAtOnceLost()
    data = pattern(4 * PART + 3)
    (watch / "copy.mp4").write_bytes(data)
    with capture() as logs:
        await burst(settings, store, prober)
    assert list(videos(store).values()) == [data]
    assert [e["event"] for e in logs].count("upload_restarted") == 1
    assert not [e for e in logs if e["event"] == "stream_failed"]


class TruncatesDuringPart(MemoryObjectStore):
    """The recorder truncates the file while UploadPart ``number`` is sending its body."""

    def __init__(self, path: Path, number: int, keep: int) -> None:
        super().__init__("test-bucket")
        self.path, self.number, self.keep = path, number, keep
        self.done = False

    async def upload_part(
        self, key: str, upload_id: str, part_number: int, body: PartBody,
        md5_b64: str = "", **check: str
    ) -> str:
        if part_number == self.number and not self.done:
            self.done = True
            with self.path.open("r+b") as f:
                f.truncate(self.keep)
        return await super().upload_part(key, upload_id, part_number, body, md5_b64, **check)


@pytest.mark.parametrize("keep", [2 * PART - 10, 2 * PART + 10])
async def test_hole3_truncation_during_a_part_is_a_source_error_not_an_outage(
    settings: Settings, watch: Path, prober: FakeProber, keep: int
) -> None:
    from tests.pipeline.conftest import make_settings

    path = watch / "cam.mp4"
    data = pattern(3 * PART + 1)
    path.write_bytes(data)
    store = TruncatesDuringPart(path, number=3, keep=keep)
    one_at_a_time = make_settings(settings.state_dir.parent, watch, upload_concurrency=1)
    with capture() as logs:
        await asyncio.wait_for(burst(one_at_a_time, store, prober), 20)
    retried = [e for e in logs if e["event"] == "retry" and e["operation"] == "upload_part"]
    assert retried == [], "a read error of the source was retried as an S3 outage"
    bodies = sorted(videos(store).values(), key=len)
    if keep < 2 * PART:
        # Uploaded bytes are gone from the file: that stream ends with parts 1-2, and what
        # the file holds now is a new stream.
        assert bodies == [path.read_bytes(), data[: 2 * PART]]
    else:
        # Only bytes not uploaded yet went away: one object, the file as it is now.
        assert bodies == [path.read_bytes()]
    assert await store.list_multipart_uploads("") == []


class NoWholeGets(MemoryObjectStore):
    """An object store that can serve ranges and refuses to hand out a video whole."""

    def __init__(self) -> None:
        super().__init__("test-bucket")
        self.ranges: list[tuple[int, int]] = []

    async def get_object(self, key: str) -> bytes:
        raise AssertionError(f"GetObject of the whole {key}")

    async def get_range(self, key: str, start: int, end: int) -> bytes:
        self.ranges.append((start, end))
        return self.objects[key].body[start:end]


async def test_hole4_the_sha256_of_an_orphan_is_read_in_bounded_ranges(
    settings: Settings, watch: Path, prober: FakeProber
) -> None:
    store = NoWholeGets()
    path = watch / "gone.mp4"
    data = pattern(3 * PART + 5)
    path.write_bytes(data)
    record = await seed(settings, store, path, data, parts=3, status=None)
    path.unlink()  # deleted while the daemon was down
    await burst(settings, store, prober)
    body = store.objects[record.key].body
    assert body == data[: 3 * PART]
    doc = metadata(store, record.key)
    assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    assert doc["status"] == "source_deleted"
    assert store.ranges
    assert max(e - s for s, e in store.ranges) <= 8 * 1024 * 1024


class WritesDuringComplete(MemoryObjectStore):
    """The recorder appends once while CompleteMultipartUpload runs (after verification)."""

    def __init__(self, path: Path) -> None:
        super().__init__("test-bucket")
        self.path = path
        self.wrote = False

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> str:
        if not self.wrote:
            self.wrote = True
            with self.path.open("ab") as f:
                f.write(b"late bytes")
        return await super().complete_multipart(key, upload_id, parts)


async def test_hole5_the_fingerprint_is_of_the_verified_bytes(
    settings: Settings, watch: Path, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    data = pattern(PART + 3)
    path.write_bytes(data)
    os.utime(path, (1_000_000_000, 1_000_000_000))  # settled long ago
    verified_mtime = path.stat().st_mtime_ns
    store = WritesDuringComplete(path)
    await burst(settings, store, prober)
    first, second = await records(settings)
    assert first.final_size == len(data)
    assert first.final_mtime_ns == verified_mtime
    # The file changed after its bytes were verified, so it was not taken for unchanged:
    # a second stream holds it as it is now.
    assert store.objects[first.key].body == data
    assert store.objects[second.key].body == path.read_bytes()


class WritesDuringCompleteOutage(MemoryObjectStore):
    """The first CompleteMultipartUpload fails with a transport error and the recorder
    appends meanwhile; ``executed``: S3 had completed it (the answer was lost)."""

    def __init__(self, path: Path, *, executed: bool) -> None:
        super().__init__("test-bucket")
        self.path = path
        self.executed = executed
        self.failed = False

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]]
    ) -> str:
        if self.failed:
            return await super().complete_multipart(key, upload_id, parts)
        self.failed = True
        if self.executed:
            await super().complete_multipart(key, upload_id, parts)
        with self.path.open("ab") as f:
            f.write(pattern(PART, seed=9))
        raise TransientError("complete_multipart: ReadTimeoutError (simulated)")


async def test_hole5_a_complete_retried_after_a_write_is_of_the_file_as_it_is_now(
    settings: Settings, watch: Path, prober: FakeProber
) -> None:
    """Sim seeds 449, 481: a Complete held back by an outage while the recorder wrote, then
    retried with the parts verified before the write: the object was a state the file had
    left, and a delete meanwhile lost the rest. The retry must verify again first."""
    path = watch / "cam.mp4"
    path.write_bytes(pattern(PART + 3))
    store = WritesDuringCompleteOutage(path, executed=False)
    await burst(settings, store, prober)
    (only,) = await records(settings)
    assert store.objects[only.key].body == path.read_bytes()
    assert metadata(store, only.key)["total_size_bytes"] == 2 * PART + 3


async def test_hole5_a_complete_that_happened_before_the_write_stands(
    settings: Settings, watch: Path, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    data = pattern(PART + 3)
    path.write_bytes(data)
    store = WritesDuringCompleteOutage(path, executed=True)
    await burst(settings, store, prober)
    first, second = await records(settings)
    assert store.objects[first.key].body == data  # confirmed by HeadObject, never redone
    assert metadata(store, first.key)["total_size_bytes"] == len(data)
    assert store.objects[second.key].body == path.read_bytes()  # the growth: a new stream
    assert await store.list_multipart_uploads("") == []


class TruncatedDuringComplete(MemoryObjectStore):
    """The first Complete fails just after the recorder cut the file. With ``regrown`` it
    hangs first while the recorder writes the file anew (other bytes, more of them), and
    fails as a read timeout does; without, it fails at once."""

    def __init__(self, path: Path, regrown: bytes | None = None) -> None:
        super().__init__("test-bucket")
        self.path, self.regrown, self.failed = path, regrown, False

    async def complete_multipart(
        self, key: str, upload_id: str, parts: list[tuple[int, str]], **kw: str
    ) -> str:
        if self.failed:
            return await super().complete_multipart(key, upload_id, parts, **kw)
        self.failed = True
        os.truncate(self.path, 100)
        if self.regrown is None:
            raise TransientError("complete_multipart: connection reset (simulated)")
        await asyncio.sleep(0.2)  # ten poll intervals short: a follower would notice
        with self.path.open("r+b") as f:
            f.write(self.regrown)
        raise TransientError("complete_multipart: ReadTimeoutError (simulated)")


async def test_a_truncation_while_a_complete_is_held_back_ends_the_recording(
    settings: Settings, watch: Path, prober: FakeProber
) -> None:
    """Sim seed 11006656: the file was truncated and regrown while a Complete hung; the
    retry verified the regrown file, re-sent part 1 over the bytes S3 held, and they were
    in no object. The truncation ends the recording with what S3 holds; the regrown file
    is a new stream."""
    path = watch / "cam.mp4"
    recording = pattern(PART + 700, seed=31)
    path.write_bytes(recording)
    regrown = pattern(3 * PART, seed=32)
    store = TruncatedDuringComplete(path, regrown)
    await burst(settings, store, prober)
    bodies = videos(store)
    assert recording in bodies.values(), "the recording's bytes, which S3 held, are lost"
    first = next(k for k, b in bodies.items() if b == recording)
    assert metadata(store, first)["status"] == "truncated"
    assert regrown in bodies.values()


async def test_hole6_a_superseded_upload_is_aborted_only_after_the_grace_period(
    settings: Settings, watch: Path, prober: FakeProber
) -> None:
    """Start-up aborts the uploads of a stream that moved on to another upload id, but
    never one younger than the grace period: a peer may have just created it."""
    now = datetime.now(UTC)
    at = [now - timedelta(hours=2)]
    store = MemoryObjectStore("test-bucket", clock=lambda: at[0])
    path = watch / "cam.mp4"
    data = pattern(PART + 5)
    path.write_bytes(data)
    record = await seed(settings, store, path, data, parts=1, status=None)
    old = await store.create_multipart(record.key, "video/mp4")
    at[0] = now
    young = await store.create_multipart(record.key, "video/mp4")
    async with daemon(settings, store, prober):
        still_open = {u.upload_id for u in store.open_uploads()}
        assert old not in still_open
        assert young in still_open


async def test_hole_74393_a_stranger_with_a_one_part_streams_inode_at_its_path(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    path = watch / "cam.mp4"
    recording = pattern(PART + 5000, seed=21)
    path.write_bytes(recording)
    """Hole 74393 (closed): a one-part stream at its own path has only the part a header
    patch changes, so it was trusted, and a stranger given the recording's inode number at
    the same path while cefmp4 was down had its part 1 re-sent over the recording's. Part
    1's bytes past the header (its second half, ``core.hashing.header_window``) tell them
    apart now: the recording ends with what S3 held, and the stranger is a new stream."""
    record = await _one_part_stream(settings, store, path, recording)
    stranger = pattern(PART + 9000, seed=22)  # another recording, the same inode and path
    rewrite(path, stranger)
    await burst(settings, store, prober)
    kept = [body for body in videos(store).values() if body[:PART] == recording[:PART]]
    assert kept, "the recording's part 1, which S3 held, is in no object"
    assert metadata(store, record.key)["status"] == "truncated"
    assert stranger in videos(store).values()  # a stream of its own


async def _one_part_stream(
    settings: Settings, store: MemoryObjectStore, path: Path, data: bytes
) -> StreamRecord:
    record = await seed(settings, store, path, data, parts=1, status=None, crc=True)
    async with open_sqlite_store(settings.state_dir) as db:
        record.state = StreamState.ACTIVE
        record.completed_at = None
        await db.put_stream(record)
    return record


@pytest.mark.parametrize("patch_at", [0, 40, 2 * 1024 * 1024, PART // 2 - 8])
async def test_a_one_part_recordings_header_patched_while_down_is_still_the_recording(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber,
    patch_at: int,
) -> None:
    """What hole 74393's fix must not break: the recorder finished the file while cefmp4
    was down, patching its header (in part 1) and appending its index. It is the same
    recording: one object, the patched bytes in it, nothing left as a truncated object."""
    path = watch / "cam.mp4"
    recording = pattern(PART + 5000, seed=24)
    path.write_bytes(recording)
    record = await _one_part_stream(settings, store, path, recording)
    finished = bytearray(recording + pattern(3000, seed=25))
    finished[patch_at:patch_at + 8] = b"\xff" * 8
    with path.open("r+b") as f:
        f.write(finished)
    await burst(settings, store, prober)
    assert videos(store) == {record.key: bytes(finished)}
    assert metadata(store, record.key)["status"] == "complete"


async def test_a_one_part_recording_rewritten_past_its_header_while_down_loses_nothing(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """The price of hole 74393's fix: a recorder that rewrote part 1's second half while
    cefmp4 was down (a reserved index space larger than half a part) is not told from
    another file. Nothing is lost: part 1 as S3 held it is an object of its own
    (``truncated``), and the file as it is now is a new stream, one object of its bytes."""
    path = watch / "cam.mp4"
    recording = pattern(PART + 5000, seed=26)
    path.write_bytes(recording)
    record = await _one_part_stream(settings, store, path, recording)
    finished = bytearray(recording + pattern(3000, seed=27))
    finished[PART // 2:PART // 2 + 8] = b"\xff" * 8
    with path.open("r+b") as f:
        f.write(finished)
    await burst(settings, store, prober)
    assert store.objects[record.key].body == recording[:PART]
    assert metadata(store, record.key)["status"] == "truncated"
    assert bytes(finished) in videos(store).values()


async def test_an_own_complete_of_the_first_parts_is_published_not_failed(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """A finalizing stream's Complete of parts 1-3 went through, a crash before its
    metadata; part 4 was checkpointed too and the file grew. The restart publishes its own
    object made of the first three parts; the growth is a new stream (§2.4). (Simulator
    seed 2022346 reaches the same state with the grown run in finish_kept, where the
    stream failed with "an object not made of the checkpointed parts is already at the
    key" and its object never had metadata; that seed is its regression test.)"""
    path = watch / "cam.mp4"
    data = pattern(4 * PART + 777, seed=23)
    path.write_bytes(data)
    record = await seed(settings, store, path, data[:4 * PART], parts=3, status="complete",
                        completed=True, stray=4)
    with capture() as logs:
        await burst(settings, store, prober)
    assert not [e for e in logs if e["event"] == "stream_failed"]
    assert store.objects[record.key].body == data[:3 * PART]
    doc = metadata(store, record.key)
    assert (doc["status"], doc["total_size_bytes"]) == ("complete", 3 * PART)
    assert data in videos(store).values()  # the grown file: a new stream of its own


async def test_a_failing_stream_hands_an_upload_with_parts_to_salvage_never_aborts_it(
    settings: Settings, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Destroy only on proof: a stream that ends with nothing it can use (part 2 in S3, no
    part 1, the file deleted while down) fails, but its upload holds footage, so it is left
    open and released to salvage (its record stops naming it), not aborted."""
    path = watch / "cam.mp4"
    data = pattern(2 * PART + 10, seed=41)
    path.write_bytes(data)
    record = await seed(settings, store, path, data, parts=0, status="truncated", stray=2)
    path.unlink()
    with capture() as logs:
        await burst(settings, store, prober)
    [upload] = await store.list_multipart_uploads("")
    assert upload.upload_id == record.upload_id
    assert [p.part_number for p in await store.list_parts(record.key, upload.upload_id)] == [2]
    (failed,) = await records(settings)
    assert failed.state is StreamState.FAILED
    assert failed.upload_id is None  # the orphan sweeper and `cefmp4 salvage` may take it
    assert "left open for salvage" in (failed.error or "")
    assert any(e["event"] == "upload_released" for e in logs)


async def test_a_truncation_while_the_file_is_hashed_ends_the_recording(
    settings: Settings, watch: Path, prober: FakeProber, store: MemoryObjectStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same while finalize hashes the file again (seconds for a large one): the file
    cut below what S3 holds and written anew meanwhile. Verifying the regrown file would
    re-send part 1 over the bytes S3 held; the truncation ends the recording instead."""
    from cefmp4.streams import finalize

    path = watch / "cam.mp4"
    recording = pattern(PART + 700, seed=33)
    regrown = pattern(3 * PART, seed=34)
    real = finalize.digest_now
    calls: list[int] = []

    async def hashed_while_cut(fd: int, *a: Any, **kw: Any) -> Any:
        if not calls:
            calls.append(fd)
            os.truncate(path, 100)
            await asyncio.sleep(0.3)  # fifteen poll intervals short
            with path.open("r+b") as f:
                f.write(regrown)
        return await real(fd, *a, **kw)

    monkeypatch.setattr(finalize, "digest_now", hashed_while_cut)
    path.write_bytes(recording[:PART])
    async with daemon(settings, store, prober):
        await until(lambda: store.calls["upload_part"] >= 1, what="part 1")
        with path.open("ab") as f:
            f.write(recording[PART:])  # the file is no longer quiet since its start
        # What S3 held of the recording (part 1; the rest was never sent) stands.
        await until(lambda: recording[:PART] in videos(store).values()
                    and regrown in videos(store).values(), timeout=20,
                    what="the recording kept and the regrown file")
    assert calls, "finalize did not hash the file"
    first = next(k for k, b in videos(store).items() if b == recording[:PART])
    assert metadata(store, first)["status"] == "truncated"


async def test_a_truncation_seen_by_the_complete_retry_itself_ends_the_recording(
    tmp_path: Path, watch: Path, prober: FakeProber, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by review: with the default 1 s poll, a Complete retried within 0.2 s saw the
    changed file before any look; without the truncation it went back to hashing, and the
    file regrown meanwhile was verified and its part 1 sent over the bytes S3 held."""
    from cefmp4.streams import finalize

    settings = make_settings(tmp_path, watch, poll_interval_seconds=1.0)  # the default
    path = watch / "cam.mp4"
    recording = pattern(PART + 700, seed=35)
    path.write_bytes(recording)
    regrown = pattern(3 * PART, seed=36)
    store = TruncatedDuringComplete(path)
    real, done = finalize.digest_now, []

    async def regrown_while_hashed(*a: Any, **kw: Any) -> Any:
        if store.failed and not done:
            done.append(True)
            with path.open("r+b") as f:
                f.write(regrown)
        return await real(*a, **kw)

    monkeypatch.setattr(finalize, "digest_now", regrown_while_hashed)
    await burst(settings, store, prober)
    assert recording in videos(store).values()
