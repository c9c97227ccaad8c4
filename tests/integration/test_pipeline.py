"""The core pipeline end to end: real SeaweedFS, real redis-server / SQLite, real ffprobe."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest
import structlog.testing

from cefmp4.core.parts import MIB
from tests.support.app import (
    make_settings,
    recording_uploads,
    running_app,
    sha256_file,
    wait_for,
    wait_metadata,
)
from tests.support.media import GrowingWriter, make_corrupt_mp4, make_mp4, record_with_ffmpeg
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3, s3_store_for

pytestmark = pytest.mark.timeout(240)


def _settings(tmp_path: Path, s3: SeaweedS3, bucket: str, redis: RedisServer | None, **kw: Any):  # type: ignore[no-untyped-def]
    return make_settings(tmp_path=tmp_path, s3=s3, bucket=bucket, redis=redis, **kw)


@pytest.fixture
def redis_or_none(checkpoint_kind: str, redis_server: RedisServer) -> RedisServer | None:
    return redis_server if checkpoint_kind == "redis" else None


async def _object_sha256(s3: SeaweedS3, bucket: str, key: str) -> str:
    async with s3_store_for(s3, bucket) as store:
        return hashlib.sha256(await store.get_object(key)).hexdigest()


def _assert_valid_metadata(doc: dict[str, Any], source: Path, bucket: str) -> None:
    size = source.stat().st_size
    assert doc["s3_bucket"] == bucket
    assert doc["total_size_bytes"] == size
    assert doc["sha256"] == sha256_file(source)
    chunks = doc["chunks"]
    assert [c["part_number"] for c in chunks] == list(range(1, len(chunks) + 1))
    offset = 0
    for chunk in chunks:
        assert chunk["offset_bytes"] == offset
        offset += chunk["size_bytes"]
    assert offset == size
    assert all(c["size_bytes"] == 5 * MIB for c in chunks[:-1])
    for field in ("stream_started_at_utc", "stream_completed_at_utc", "processed_at_utc"):
        assert doc[field].endswith("+00:00")
    assert doc["stream_id"] in doc["s3_key"]


async def test_one_file_byte_identical(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, redis_or_none: RedisServer | None,
    sample_mp4: Path,
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, redis_or_none)
    async with running_app(settings):
        target = settings.watch_dir / "cam1.mp4"
        shutil.copyfile(sample_mp4, target)
        [doc] = await wait_metadata(s3_server, s3_bucket, "cam1.mp4")
    _assert_valid_metadata(doc, target, s3_bucket)
    assert doc["status"] == "complete"
    assert doc["original_file_path"] == str(target.resolve())
    assert doc["s3_key"] == f"streams/{doc['stream_id']}/cam1.mp4"
    assert doc["duration_seconds"] == pytest.approx(4.0, abs=0.1)
    assert len(doc["chunks"]) == 3
    assert await _object_sha256(s3_server, s3_bucket, doc["s3_key"]) == sha256_file(target)
    async with s3_store_for(s3_server, s3_bucket) as store:
        assert await store.list_multipart_uploads("streams/") == []


async def test_three_files_at_once(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path,
    sample_fragmented_mp4: Path,
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, None)
    async with running_app(settings):
        sources = [sample_mp4, sample_fragmented_mp4, sample_mp4]
        for i, src in enumerate(sources):
            shutil.copyfile(src, settings.watch_dir / f"f{i}.mp4")
        docs = await asyncio.gather(
            *(wait_metadata(s3_server, s3_bucket, f"f{i}.mp4") for i in range(3))
        )
    ids = set()
    for i, [doc] in enumerate(docs):
        _assert_valid_metadata(doc, settings.watch_dir / f"f{i}.mp4", s3_bucket)
        assert await _object_sha256(s3_server, s3_bucket, doc["s3_key"]) == doc["sha256"]
        ids.add(doc["stream_id"])
    assert len(ids) == 3


async def test_growing_file_parts_visible_while_writing(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, redis_or_none: RedisServer | None,
    media_dir: Path,
) -> None:
    source = make_mp4(media_dir / f"grow-{tmp_path.name}.mp4", seconds=6, mbytes=22)
    settings = _settings(
        tmp_path, s3_server, s3_bucket, redis_or_none, stream_timeout_seconds=2.0
    )
    async with running_app(settings), s3_store_for(s3_server, s3_bucket) as store:
        target = settings.watch_dir / "live.mp4"
        writer = GrowingWriter(source, target, rate=3_000_000, patch=(36, 40))
        writer.start()
        parts_seen = 0

        async def two_parts_listed() -> bool:
            nonlocal parts_seen
            uploads = recording_uploads(await store.list_multipart_uploads("streams/"))
            if not uploads:
                return False
            parts = await store.list_parts(uploads[0].key, uploads[0].upload_id)
            parts_seen = len(parts)
            return parts_seen >= 2

        await wait_for(two_parts_listed, timeout=30, what="two parts while writing")
        assert not writer.done, "the writer finished before two parts were listed"
        await asyncio.to_thread(writer.wait, 60)
        [doc] = await wait_metadata(s3_server, s3_bucket, "live.mp4")
    assert writer.patched, "the writer never rewrote the bytes it had written"
    assert target.read_bytes() == source.read_bytes()
    _assert_valid_metadata(doc, target, s3_bucket)
    assert await _object_sha256(s3_server, s3_bucket, doc["s3_key"]) == sha256_file(target)


async def test_subdirectory_uppercase_and_ignored_files(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, None, rescan_interval_seconds=1.0)
    watch = settings.watch_dir
    with structlog.testing.capture_logs() as events:
        async with running_app(settings):
            (watch / "site-a" / "door").mkdir(parents=True)
            shutil.copyfile(sample_mp4, watch / "site-a" / "door" / "CAM.MP4")
            (watch / ".hidden").mkdir()
            for ignored in ("notes.mov", ".secret.mp4", "clip.mp4.part", ".hidden/x.mp4"):
                shutil.copyfile(sample_mp4, watch / ignored)
            (watch / "dir.mp4").mkdir()
            [doc] = await wait_metadata(s3_server, s3_bucket, "site-a/door/CAM.MP4")
            done = len(events)

            async def quiet_rescan() -> bool:
                # A rescan after the completion that found nothing to work on: every ignored
                # file was looked at again and none started a stream.
                return any(
                    e["event"] == "rescan" and e["streams"] == 0 for e in events[done:]
                )

            await wait_for(quiet_rescan, timeout=30, what="a rescan with nothing to do")
    assert [e["event"] for e in events].count("stream_started") == 1
    assert doc["s3_key"].endswith("/site-a/door/CAM.MP4")
    async with s3_store_for(s3_server, s3_bucket) as store:
        keys = await store.list_keys("")
    assert sorted(keys) == sorted([doc["s3_key"], doc["s3_key"] + ".metadata.json"])


async def test_unprobeable_file_still_uploaded(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, None)
    async with running_app(settings):
        target = settings.watch_dir / "broken.mp4"
        make_corrupt_mp4(target, 6 * MIB)
        [doc] = await wait_metadata(s3_server, s3_bucket, "broken.mp4")
    _assert_valid_metadata(doc, target, s3_bucket)
    assert doc["duration_seconds"] is None
    assert doc["duration_error"]


async def test_metadata_is_json_with_content_type(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, None)
    async with running_app(settings):
        shutil.copyfile(sample_mp4, settings.watch_dir / "a.mp4")
        [doc] = await wait_metadata(s3_server, s3_bucket, "a.mp4")
    async with s3_store_for(s3_server, s3_bucket) as store:
        info = await store.head_object(doc["s3_key"] + ".metadata.json")
    assert info is not None
    assert info.content_type == "application/json"


@pytest.mark.slow
@pytest.mark.parametrize("movflags", ["", "+faststart", "+frag_keyframe+empty_moov"])
async def test_real_ffmpeg_recorder(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, movflags: str
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, None, stream_timeout_seconds=2.0)
    async with running_app(settings) as app:
        target = settings.watch_dir / "rec.mp4"
        proc = record_with_ffmpeg(target, seconds=8, movflags=movflags)
        assert await asyncio.to_thread(proc.wait, 60) == 0
        [doc] = await wait_metadata(s3_server, s3_bucket, "rec.mp4")
        reuploaded = app.metrics.parts_reuploaded._value.get()
    _assert_valid_metadata(doc, target, s3_bucket)
    assert await _object_sha256(s3_server, s3_bucket, doc["s3_key"]) == sha256_file(target)
    assert doc["duration_seconds"] == pytest.approx(8.0, abs=0.2)
    assert len(doc["chunks"]) > 2
    if movflags != "+frag_keyframe+empty_moov":
        # The muxer patched bytes in part 1 after it went up (faststart: everything moved).
        assert reuploaded >= 1
        assert doc["parts_reuploaded"] >= 1


@pytest.mark.parametrize("patch_after_predigest", [False, True])
async def test_live_stream_is_verified_during_the_idle_wait(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, media_dir: Path,
    patch_after_predigest: bool,
) -> None:
    """The second pass of SPEC §2.3 runs while the stream waits out its timeout; a patch
    made after it restarts the wait and the pass, and the object still matches the file."""
    source = make_mp4(media_dir / f"pre-{tmp_path.name}.mp4", seconds=4, mbytes=14)
    settings = _settings(tmp_path, s3_server, s3_bucket, None, stream_timeout_seconds=6.0)
    target = settings.watch_dir / "pre.mp4"
    with structlog.testing.capture_logs() as events:
        async with running_app(settings):
            writer = GrowingWriter(
                source, target, rate=8_000_000, patch=(36, 40),
                patch_delay=4.5 if patch_after_predigest else 0.0,
            )
            writer.start()
            await asyncio.to_thread(writer.wait, 60)
            [doc] = await wait_metadata(s3_server, s3_bucket, "pre.mp4")
    names = [e["event"] for e in events]
    # A patch after the first pass restarts the idle wait, and with it a fresh pass.
    assert "predigest_used" in names
    assert writer.patched
    _assert_valid_metadata(doc, target, s3_bucket)
    assert await _object_sha256(s3_server, s3_bucket, doc["s3_key"]) == sha256_file(target)


async def test_upload_honours_a_lease_a_running_daemon_holds(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, redis_server: RedisServer
) -> None:
    """``cefmp4 upload`` in Redis mode never works on a file another instance owns."""
    from cefmp4.checkpoint.redis import open_redis_store
    from cefmp4.runtime.app import App
    from cefmp4.storage.memory import MemoryObjectStore
    from cefmp4.streams.lease import LeaseKeeper, lease_namespace
    from tests.pipeline.conftest import FakeProber

    settings = _settings(tmp_path, s3_server, s3_bucket, redis_server)
    target = settings.watch_dir / "owned.mp4"
    target.write_bytes(b"\x00" * (6 * MIB))
    store = MemoryObjectStore(s3_bucket)
    async with open_redis_store(
        settings.redis_url.get_secret_value(), settings.redis_key_prefix,
        lease_namespace=lease_namespace(settings.watch_dir),
    ) as redis:
        daemon = LeaseKeeper(redis, "other-host:4026531836:1", ttl=30)
        assert await daemon.acquire(target.stat().st_ino, lambda: None) is not None
        results = await App(settings, objects=store, prober=FakeProber()).run_burst([target])
        assert results == {target.resolve(): None}
        assert store.calls["create_multipart"] == 0
        assert await redis.find_by_inode(target.stat().st_ino) == []
        await daemon.release(target.stat().st_ino)
    results = await App(settings, objects=store, prober=FakeProber()).run_burst([target])
    record = results[target.resolve()]
    assert record is not None
    assert store.objects[record.key].body == target.read_bytes()
