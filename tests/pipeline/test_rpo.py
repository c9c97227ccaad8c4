"""RPO_SECONDS (SPEC §2.20) on the memory store, in virtual time: an active stream's bytes
not in a part yet are shipped as tail segments at least that often, each byte at most
twice; they count as in S3 for pending_bytes; they go once the object is complete; and
salvage appends them when the host is lost."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cefmp4.checkpoint import PartRecord, StreamRecord, StreamState
from cefmp4.checkpoint.sqlite import open_sqlite_store
from cefmp4.config.settings import Settings
from cefmp4.core.keys import metadata_key
from cefmp4.core.tail import segment_key, tail_prefix
from cefmp4.storage.memory import MemoryObjectStore
from cefmp4.streams.salvage import Salvager
from tests.pipeline.conftest import (
    PART,
    FakeProber,
    burst,
    capture,
    daemon,
    make_settings,
    pattern,
    until,
    videos,
)
from tests.pipeline.test_holes import rewrite, seed

PREFIX = "streams/"


def _segments(store: MemoryObjectStore) -> dict[str, bytes]:
    return {k: o.body for k, o in store.objects.items() if "/.cefmp4/tail/" in k}


async def _recorded_then_deleted_while_down(
    settings: Settings, store: MemoryObjectStore, prober: FakeProber, path: Path, data: bytes
) -> None:
    """A daemon ships part 1 and 400,000 bytes of tail segments, stops; the file goes."""
    async with daemon(settings, store, prober):
        path.write_bytes(data)
        await until(lambda: store.calls["upload_part"] >= 1
                    and sum(len(b) for b in _segments(store).values()) >= 400_000,
                    timeout=10, what="part 1 and its tail shipped")
    path.unlink()


async def _active_with_a_gap(
    settings: Settings, store: MemoryObjectStore, path: Path, data: bytes
) -> StreamRecord:
    """An active stream with parts 1, 2 and 4 in S3 and its checkpoint (3 lost)."""
    record = await seed(settings, store, path, data, parts=2, status=None, stray=4)
    async with open_sqlite_store(settings.state_dir) as db:
        record.state = StreamState.ACTIVE
        record.completed_at = None
        await db.put_stream(record)
    return record


async def test_the_tail_is_shipped_every_rpo_seconds_and_deleted_after_completion(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch, rpo_seconds=1.0, stream_timeout_seconds=5.0)
    data = pattern(PART + PART // 2)
    path = watch / "cam.mp4"
    async with daemon(settings, store, prober) as app:
        with path.open("wb") as f:
            f.write(data[:300_000])
            f.flush()
            await until(lambda: len(_segments(store)) == 1, timeout=3, what="a first segment")
            [(_key, body)] = _segments(store).items()
            assert body == data[:300_000]  # before any part: the recording is not lost
            assert app.metrics.pending_bytes._value.get() == 0  # it counts as in S3
            assert len(store.open_uploads()) == 1  # salvage finds it by its upload
            f.write(data[300_000:PART + 100])
            f.flush()
            await until(lambda: len(_segments(store)) >= 2, timeout=3, what="the next one")
            # Only what no segment held yet: each byte is sent at most twice.
            bodies = [b for _k, b in sorted(_segments(store).items())]
            assert b"".join(bodies) == data[:sum(len(b) for b in bodies)]
            f.write(data[PART + 100:])
            f.flush()
        await until(lambda: len(videos(store)) == 1, timeout=30, what="the object")
    assert list(videos(store).values()) == [data]
    assert _segments(store) == {}  # the object holds all they held


async def test_a_lost_host_loses_at_most_the_last_seconds(
    tmp_path: Path, watch: Path, prober: FakeProber
) -> None:
    """The daemon dies (stopped without finalizing, as a crash leaves it) after a part and a
    few segments; a salvage from elsewhere makes the part plus the tail one object."""
    store = MemoryObjectStore("test-bucket")
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5, stream_timeout_seconds=60.0)
    data = pattern(PART + 700_000, seed=3)
    path = watch / "cam.mp4"
    async with daemon(settings, store, prober):
        with path.open("wb") as f:
            f.write(data[:PART + 200_000])
            f.flush()
            await until(lambda: any(len(b) for b in _segments(store).values())
                        and store.open_uploads() and store.calls["upload_part"] >= 1,
                        timeout=5, what="a part and a segment")
            f.write(data[PART + 200_000:])
            f.flush()
            written = len(data)
            await until(lambda: sum(len(b) for b in _segments(store).values()) >= 700_000,
                        timeout=5, what="the last bytes shipped")
    # The daemon stopped (SIGTERM leaves streams resumable): now the host is gone.
    clock = store.clock
    salvager = Salvager(store, PREFIX, prober=None, clock=lambda: clock().timestamp() + 3600)
    uploads = store.open_uploads()
    [plan] = await salvager.survey(uploads, {}, older_than=900)
    outcome = await salvager.carry_out(plan, None)
    assert outcome.done, outcome
    [(key, body)] = videos(store).items()
    assert body == data[:written]  # nothing lost: the tail was shipped
    doc = json.loads(store.objects[metadata_key(key)].body)
    assert doc["status"] == "salvaged"
    assert doc["total_size_bytes"] == written
    sid = key.split("/")[1]
    assert [k for k in store.objects if k.startswith(tail_prefix(PREFIX, sid))] == []


async def test_no_rpo_no_segments(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    settings = make_settings(tmp_path, watch)
    path = watch / "plain.mp4"
    async with daemon(settings, store, prober):
        path.write_bytes(pattern(300_000))
        await until(lambda: len(videos(store)) == 1, what="the object")
        await asyncio.sleep(1)
    assert _segments(store) == {}
    assert store.calls["list_objects"] == 0



async def test_a_truncated_recording_keeps_its_tail_segments_in_its_object(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """The file cut below what S3 holds: the stream ends with what S3 holds, which is the
    part and the tail segments after it (they were deleted unused before: the last
    seconds of footage S3 held)."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5, stream_timeout_seconds=5.0)
    data = pattern(PART + 400_000, seed=5)
    path = watch / "cam.mp4"
    async with daemon(settings, store, prober):
        with path.open("wb") as f:
            f.write(data)
            f.flush()
            await until(lambda: store.calls["upload_part"] >= 1
                        and sum(len(b) for b in _segments(store).values()) >= 400_000,
                        timeout=10, what="part 1 and its tail shipped")
            f.truncate(1000)
        await until(lambda: len(videos(store)) == 1, timeout=30, what="the kept object")
    [(key, body)] = videos(store).items()
    assert body == data  # every byte S3 held
    doc = json.loads(store.objects[metadata_key(key)].body)
    assert (doc["status"], doc["end_reason"]) == ("truncated", "truncated")
    assert doc["tail_bytes"] == 400_000
    assert [c["size_bytes"] for c in doc["chunks"]] == [PART, 400_000]
    assert _segments(store) == {}  # now the object holds them


async def test_deleted_while_down_the_tail_joins_the_parts(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Stopped mid-recording, the file deleted before the restart: the resumed stream
    ends with the part and the tail segments after it."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5, stream_timeout_seconds=60.0)
    data = pattern(PART + 400_000, seed=7)
    path = watch / "cam.mp4"
    await _recorded_then_deleted_while_down(settings, store, prober, path, data)
    async with daemon(settings, store, prober):
        await until(lambda: len(videos(store)) == 1, timeout=30, what="the kept object")
    [(key, body)] = videos(store).items()
    assert body == data
    doc = json.loads(store.objects[metadata_key(key)].body)
    assert (doc["status"], doc["tail_bytes"]) == ("source_deleted", 400_000)
    assert _segments(store) == {}


async def test_a_recording_shorter_than_a_part_survives_its_deletion(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """No part was ever sent, only tail segments, and the file deleted while down: the
    object is the segments (before: the stream failed, 'lost its bytes before any part
    was uploaded', and the upload was aborted)."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5, stream_timeout_seconds=60.0)
    data = pattern(300_000, seed=6)
    path = watch / "short.mp4"
    async with daemon(settings, store, prober):
        path.write_bytes(data)
        await until(lambda: sum(len(b) for b in _segments(store).values()) >= len(data),
                    timeout=10, what="the bytes shipped")
    path.unlink()
    async with daemon(settings, store, prober):
        await until(lambda: len(videos(store)) == 1, timeout=30, what="the kept object")
    [(key, body)] = videos(store).items()
    assert body == data
    doc = json.loads(store.objects[metadata_key(key)].body)
    assert (doc["status"], doc["tail_bytes"]) == ("source_deleted", len(data))
    assert _segments(store) == {}


async def test_tail_segments_over_a_gap_never_splice_the_parts_after_it(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Simulator seed 7000191: parts 1, 2 and 4 in S3 (3 lost to a restarted upload), tail
    segments from the end of part 2 on, the file deleted while down, and a crash after the
    tail part (part 3, reaching past where part 4 starts) was checkpointed. The object is
    parts 1-2 and the tail, never part 4 after it (before: a run by part numbers alone took
    1-2-3-4, the object spliced bytes and its metadata could not be written)."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5)
    data = pattern(4 * PART + 100, seed=11)
    path = watch / "cam.mp4"
    path.write_bytes(data)
    record = await _active_with_a_gap(settings, store, path, data)
    tail_end = 3 * PART + 1000  # past where part 4 starts
    for start, end in ((2 * PART, 2 * PART + 700_000), (2 * PART + 700_000, tail_end)):
        await store.put_object(segment_key(PREFIX, record.stream_id, start, end),
                               data[start:end], "application/octet-stream")
    # An earlier finish crashed after sending and checkpointing the tail part (part 3).
    body = data[2 * PART:tail_end]
    md5 = hashlib.md5(body).digest()
    assert record.upload_id is not None
    etag = await store.upload_part(record.key, record.upload_id, 3, body,
                                   base64.b64encode(md5).decode())
    async with open_sqlite_store(settings.state_dir) as db:
        await db.put_part(record.stream_id, PartRecord(3, 2 * PART, len(body), etag,
                                                       md5.hex(), 1.0))
    path.unlink()
    async with daemon(settings, store, prober):
        await until(lambda: metadata_key(record.key) in store.objects, timeout=30,
                    what="the kept object's metadata")
    assert store.objects[record.key].body == data[:tail_end]
    doc = json.loads(store.objects[metadata_key(record.key)].body)
    assert doc["status"] == "source_deleted"
    assert [c["size_bytes"] for c in doc["chunks"]] == [PART, PART, tail_end - 2 * PART]


async def test_a_purged_upload_fails_the_kept_stream_and_keeps_its_segments(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Simulator seeds 2000380/2001690: S3 purged the upload (a lifecycle rule) while the
    host was down and the file was deleted; the restart's tail part met NoSuchUpload. The
    stream fails with its reason, once, and the segments (the only bytes S3 still holds)
    stay; before, the error escaped: the stream failed on every restart, or the claim's
    task died of it."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5, stream_timeout_seconds=60.0)
    data = pattern(PART + 400_000, seed=12)
    path = watch / "cam.mp4"
    await _recorded_then_deleted_while_down(settings, store, prober, path, data)
    real = store.upload_part

    async def purged_first(key: str, upload_id: str, number: int, *a: Any, **kw: Any) -> str:
        if number == 2:  # the tail part: S3 purges the upload just before it arrives
            await store.abort_multipart(key, upload_id)
        return await real(key, upload_id, number, *a, **kw)

    store.upload_part = purged_first  # type: ignore[method-assign]
    shipped = dict(_segments(store))
    with capture() as logs:
        async with daemon(settings, store, prober):
            await until(lambda: any(e["event"] == "stream_failed" for e in logs),
                        timeout=30, what="the stream to fail")
    assert not [e for e in logs if e["event"] == "error"]  # no task died
    [failed] = [e for e in logs if e["event"] == "stream_failed"]
    assert "S3 lost the uploaded parts" in failed["error"]
    assert _segments(store) == shipped  # the bytes S3 still holds are kept
    assert videos(store) == {}


async def test_a_rewritten_finalizing_stream_stays_truncated_across_a_crash(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Simulator seed 2001351: a finalizing stream (an idle end, 'complete') whose file was
    rewritten while cefmp4 was down ends with what S3 holds, its tail segments the last
    part. A crash after that Complete, before the metadata: the restart must publish it as
    'truncated'. Before, the new end was never checkpointed over the idle one, and the
    restart, finding the file holding the last (tail) part, confirmed the object and
    called a state the file never was in 'complete'."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5)
    data = pattern(3 * PART + 300_000, seed=13)
    path = watch / "cam.mp4"
    path.write_bytes(data)
    record = await seed(settings, store, path, data, parts=3, status="complete")
    await store.put_object(segment_key(PREFIX, record.stream_id, 3 * PART, len(data)),
                           data[3 * PART:], "application/octet-stream")
    rewritten = bytearray(data)
    rewritten[2 * PART:2 * PART + 1000] = b"\x00" * 1000  # part 3 rewritten, the rest as is
    rewrite(path, bytes(rewritten))
    real = store.get_range

    async def crash_after_complete(key: str, start: int, end: int) -> bytes:
        if key == record.key:  # reading the object back for its SHA-256: right after Complete
            raise RuntimeError("the host died here")
        return await real(key, start, end)

    store.get_range = crash_after_complete  # type: ignore[method-assign]
    await burst(settings, store, prober)
    assert record.key in store.objects  # the Complete went through before the crash
    assert metadata_key(record.key) not in store.objects
    store.get_range = real  # type: ignore[method-assign]
    await burst(settings, store, prober)
    doc = json.loads(store.objects[metadata_key(record.key)].body)
    assert (doc["status"], doc["completed_by"]) == ("truncated", "truncated")
    assert store.objects[record.key].body == data  # what S3 held: the parts and the tail


async def test_a_lost_part_whose_bytes_a_segment_holds_is_filled(
    tmp_path: Path, watch: Path, store: MemoryObjectStore, prober: FakeProber
) -> None:
    """Simulator seeds 2029967/2010391: part 3 was lost to a restarted upload, parts 1, 2
    and 4 are in S3, and tail segments shipped while part 3 was missing hold its bytes.
    The file deleted while down, the kept object is parts 1-2, part 3 from the segments,
    part 4 and the segments after it: every byte S3 held (before: parts 1-2 and the tail
    after them, part 4 left out)."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.5)
    data = pattern(4 * PART + 300_000, seed=14)
    path = watch / "cam.mp4"
    path.write_bytes(data)
    record = await _active_with_a_gap(settings, store, path, data)
    for start, end in ((2 * PART, 3 * PART - 1000), (3 * PART - 1000, 3 * PART + 5000),
                       (4 * PART, len(data))):
        await store.put_object(segment_key(PREFIX, record.stream_id, start, end),
                               data[start:end], "application/octet-stream")
    path.unlink()
    async with daemon(settings, store, prober):
        await until(lambda: metadata_key(record.key) in store.objects, timeout=30,
                    what="the kept object's metadata")
    assert store.objects[record.key].body == data
    doc = json.loads(store.objects[metadata_key(record.key)].body)
    assert doc["status"] == "source_deleted"
    assert [c["size_bytes"] for c in doc["chunks"]] == [PART, PART, PART, PART, 300_000]
    assert doc["tail_bytes"] == PART + 300_000


class PartThreeHangs(MemoryObjectStore):
    """The first send of part 3 never goes through (an outage of one connection)."""

    hung = False

    async def upload_part(self, key: str, upload_id: str, number: int, *a: Any,
                          **kw: Any) -> str:
        if number == 3 and not self.hung:
            self.hung = True
            await asyncio.Event().wait()
        return await super().upload_part(key, upload_id, number, *a, **kw)


async def test_a_live_truncation_fills_a_held_back_part_from_segments(
    tmp_path: Path, watch: Path, prober: FakeProber
) -> None:
    """Simulator seed 11001459: part 3 held back, parts 4 and on in S3, a tail segment
    holding part 3's bytes; the file truncated while followed. The kept object is every
    byte S3 held: parts 1-2, part 3 from the segments, part 4 and on (before: finalize
    gave the decision only the contiguous parts, so part 4 and on were left out)."""
    settings = make_settings(tmp_path, watch, rpo_seconds=0.3, stream_timeout_seconds=5.0)
    store = PartThreeHangs("test-bucket")
    data = pattern(5 * PART, seed=15)
    path = watch / "cam.mp4"

    def shipped_part_three() -> bool:
        spans = [tuple(int(x, 16) for x in k.rsplit("/", 1)[1].split("-"))
                 for k in _segments(store)]
        return any(s <= 2 * PART and e >= 3 * PART for s, e in spans)

    async with daemon(settings, store, prober):
        with path.open("wb") as f:
            f.write(data)
            f.flush()
            await until(lambda: store.calls["upload_part"] >= 4 and shipped_part_three(),
                        timeout=10, what="parts 1, 2, 4, 5 and a segment over part 3")
            f.truncate(1000)
        await until(lambda: any(len(b) >= 4 * PART for b in videos(store).values()),
                    timeout=30, what="the kept object")
    [body] = [b for b in videos(store).values() if len(b) >= 4 * PART]
    assert data.startswith(body)
