"""SPEC §2.4, §2.8, §2.13: a stream follows the file; part limits; unknown uploads.

In-process App against real SeaweedFS and SQLite; the file operations are real renames,
unlinks and truncations done while the daemon is uploading.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from cefmp4.config.settings import Settings
from cefmp4.core.parts import MIB
from tests.support.app import (
    make_settings,
    recording_uploads,
    running_app,
    sha256_file,
    wait_for,
    wait_metadata,
)
from tests.support.media import GrowingWriter, make_mp4
from tests.support.seaweed import SeaweedS3, s3_store_for

pytestmark = pytest.mark.timeout(180)


def _settings(tmp_path: Path, s3: SeaweedS3, bucket: str, **kw: Any) -> Settings:
    return make_settings(tmp_path=tmp_path, s3=s3, bucket=bucket, **kw)


async def _parts_listed(s3: SeaweedS3, bucket: str, n: int) -> None:
    async with s3_store_for(s3, bucket) as store:

        async def enough() -> bool:
            uploads = recording_uploads(await store.list_multipart_uploads("streams/"))
            if not uploads:
                return False
            parts = await store.list_parts(uploads[0].key, uploads[0].upload_id)
            return len(parts) >= n

        await wait_for(enough, timeout=40, what=f"{n} parts listed")


async def _object(s3: SeaweedS3, bucket: str, key: str) -> bytes:
    async with s3_store_for(s3, bucket) as store:
        return await store.get_object(key)


@pytest.fixture
def source_20mb(media_dir: Path) -> Path:
    path = media_dir / "identity-source.mp4"
    if not path.exists():
        make_mp4(path, seconds=6, mbytes=21)
    return path


async def test_rename_keeps_the_stream(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, source_20mb: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, stream_timeout_seconds=2.0)
    watch = settings.watch_dir
    async with running_app(settings):
        with GrowingWriter(source_20mb, watch / "a.mp4", rate=4_000_000) as writer:
            await _parts_listed(s3_server, s3_bucket, 1)
            os.rename(watch / "a.mp4", watch / "b.mp4")
            await asyncio.to_thread(writer.wait, 60)
        [doc] = await wait_metadata(s3_server, s3_bucket, "a.mp4")
    assert doc["status"] == "complete"
    assert doc["original_file_path"] == str((watch / "b.mp4").resolve())
    assert doc["sha256"] == sha256_file(source_20mb)
    data = await _object(s3_server, s3_bucket, doc["s3_key"])
    assert hashlib.sha256(data).hexdigest() == sha256_file(source_20mb)


async def test_delete_mid_stream_uploads_every_written_byte(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, source_20mb: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, stream_timeout_seconds=2.0)
    target = settings.watch_dir / "gone.mp4"
    async with running_app(settings):
        # The recorder keeps its file open and writes on after the unlink.
        with GrowingWriter(source_20mb, target, rate=4_000_000) as writer:
            await _parts_listed(s3_server, s3_bucket, 1)
            target.unlink()
            await asyncio.to_thread(writer.wait, 60)
        [doc] = await wait_metadata(s3_server, s3_bucket, "gone.mp4")
    assert doc["status"] == "source_deleted"
    assert doc["total_size_bytes"] == source_20mb.stat().st_size
    data = await _object(s3_server, s3_bucket, doc["s3_key"])
    assert data == source_20mb.read_bytes()


async def test_truncate_ends_the_stream_and_starts_a_new_one(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, source_20mb: Path, sample_mp4: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, stream_timeout_seconds=2.0)
    target = settings.watch_dir / "t.mp4"
    source = source_20mb.read_bytes()
    async with running_app(settings):
        with GrowingWriter(source_20mb, target, rate=4_000_000):
            await _parts_listed(s3_server, s3_bucket, 2)
        # Truncated in place (same inode): what was uploaded is gone locally. Then a new
        # recording starts in the same file.
        os.truncate(target, 0)
        await asyncio.sleep(1.0)
        target.write_bytes(sample_mp4.read_bytes())
        docs = await wait_metadata(s3_server, s3_bucket, "t.mp4", count=2)
    by_status = {d["status"]: d for d in docs}
    assert set(by_status) == {"truncated", "complete"}
    old = by_status["truncated"]
    assert old["total_size_bytes"] >= 2 * 5 * MIB
    assert old["total_size_bytes"] % (5 * MIB) == 0
    old_data = await _object(s3_server, s3_bucket, old["s3_key"])
    assert old_data == source[: old["total_size_bytes"]]
    assert hashlib.sha256(old_data).hexdigest() == old["sha256"]
    new = by_status["complete"]
    assert new["sha256"] == sha256_file(sample_mp4)
    assert await _object(s3_server, s3_bucket, new["s3_key"]) == sample_mp4.read_bytes()


async def test_replaced_file_ends_old_stream_and_starts_new(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, source_20mb: Path, sample_mp4: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, stream_timeout_seconds=2.0)
    watch = settings.watch_dir
    async with running_app(settings):
        with GrowingWriter(source_20mb, watch / "r.mp4", rate=4_000_000) as writer:
            await _parts_listed(s3_server, s3_bucket, 1)
        written = source_20mb.read_bytes()[: writer.bytes_written]
        fresh = tmp_path / "fresh.mp4"
        fresh.write_bytes(sample_mp4.read_bytes())
        os.replace(fresh, watch / "r.mp4")  # a new inode under the same name
        docs = await wait_metadata(s3_server, s3_bucket, "r.mp4", count=2)
    statuses = sorted(d["status"] for d in docs)
    assert statuses == ["complete", "truncated"]
    old = next(d for d in docs if d["status"] == "truncated")
    new = next(d for d in docs if d["status"] == "complete")
    assert old["end_reason"] == "replaced"
    # We held the old file open, so every byte written to it still reached S3.
    assert await _object(s3_server, s3_bucket, old["s3_key"]) == written
    assert await _object(s3_server, s3_bucket, new["s3_key"]) == sample_mp4.read_bytes()


async def test_completed_file_that_grows_again_is_a_new_stream(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket)
    target = settings.watch_dir / "g.mp4"
    async with running_app(settings):
        target.write_bytes(sample_mp4.read_bytes())
        await wait_metadata(s3_server, s3_bucket, "g.mp4")
        with target.open("ab") as fh:
            fh.write(b"\0" * 1000)
        docs = await wait_metadata(s3_server, s3_bucket, "g.mp4", count=2)
    sizes = sorted(d["total_size_bytes"] for d in docs)
    assert sizes == [sample_mp4.stat().st_size, sample_mp4.stat().st_size + 1000]
    regrown = next(d for d in docs if d["total_size_bytes"] == sizes[1])
    assert await _object(s3_server, s3_bucket, regrown["s3_key"]) == target.read_bytes()


async def test_part_size_grows_under_a_lowered_part_limit(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, media_dir: Path
) -> None:
    source = media_dir / "limit.mp4"
    if not source.exists():
        make_mp4(source, seconds=8, mbytes=48)
    settings = _settings(tmp_path, s3_server, s3_bucket, max_parts=20)
    async with running_app(settings):
        (settings.watch_dir / "big.mp4").write_bytes(source.read_bytes())
        [doc] = await wait_metadata(s3_server, s3_bucket, "big.mp4")
    sizes = [c["size_bytes"] for c in doc["chunks"]]
    # Tiers of max_parts // 10 = 2 parts, doubling: 5, 5, 10, 10, 20 MiB, then the tail.
    assert sizes[:4] == [5 * MIB, 5 * MIB, 10 * MIB, 10 * MIB]
    assert len(sizes) <= 20
    assert await _object(s3_server, s3_bucket, doc["s3_key"]) == source.read_bytes()


async def test_upload_aborted_out_of_band_restarts_from_zero(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, source_20mb: Path
) -> None:
    settings = _settings(tmp_path, s3_server, s3_bucket, stream_timeout_seconds=2.0)
    target = settings.watch_dir / "ab.mp4"
    async with running_app(settings), s3_store_for(s3_server, s3_bucket) as store:
        with GrowingWriter(source_20mb, target, rate=3_000_000) as writer:
            await _parts_listed(s3_server, s3_bucket, 1)
            [upload] = recording_uploads(await store.list_multipart_uploads("streams/"))
            await store.abort_multipart(upload.key, upload.upload_id)
            await asyncio.to_thread(writer.wait, 60)
        [doc] = await wait_metadata(s3_server, s3_bucket, "ab.mp4")
        assert await store.get_object(doc["s3_key"]) == source_20mb.read_bytes()
        assert await store.list_multipart_uploads("streams/") == []


async def test_sweeper_aborts_only_unknown_old_uploads_under_the_prefix(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    async with s3_store_for(s3_server, s3_bucket) as store:
        stray = await store.create_multipart(
            "streams/20260101T000000Z-0123456789/x.mp4", "video/mp4"
        )
        outside = await store.create_multipart("elsewhere/y.mp4", "video/mp4")
        await asyncio.sleep(1.5)
        # 1 ms of grace: both are "old"; only the one under the prefix may go.
        settings = _settings(tmp_path, s3_server, s3_bucket, abort_orphan_uploads_after_hours=3e-7)
        async with running_app(settings):

            async def stray_gone() -> bool:
                ids = {u.upload_id for u in await store.list_multipart_uploads("")}
                return stray not in ids

            await wait_for(stray_gone, timeout=20, what="the stray upload aborted")
        remaining = {u.upload_id for u in await store.list_multipart_uploads("")}
        assert outside in remaining
        await store.abort_multipart("elsewhere/y.mp4", outside)
