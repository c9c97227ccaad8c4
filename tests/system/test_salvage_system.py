"""The recording survives the recorder (SPEC §2.19), with the installed script against real
SeaweedFS and real ffprobe: the host dies mid-recording with its file and its embedded
store, and `cefmp4 salvage` on another host makes the uploaded parts a playable object."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import make_settings
from tests.support.media import GrowingWriter
from tests.support.proc import Daemon, run_cli, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3
from tests.system.conftest import sha256_bytes, wait_until_impl

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


def test_host_loss_then_salvage_from_a_fresh_host(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon], source_12mb_fragmented: Path,
) -> None:
    host_a = tmp_path / "host-a"
    host_a.mkdir()
    settings = make_settings(tmp_path=host_a, s3=s3_server, bucket=s3_bucket,
                             stream_timeout_seconds=30)
    daemon = Daemon(settings_env(settings), host_a / "run.log")
    daemons.append(daemon)
    daemon.start()
    view = bucket_view(s3_server, s3_bucket)
    source = source_12mb_fragmented.read_bytes()
    target = settings.watch_dir / "cam1" / "rec.mp4"
    target.parent.mkdir()
    writer = GrowingWriter(source_12mb_fragmented, target, rate=4 * MIB)
    writer.start()
    try:
        wait_until_impl(lambda: view.parts_listed() >= 2, timeout=60,
                        what="two parts uploaded", alive=(daemon,))
    finally:
        writer.stop()
    daemon.kill()  # the host is gone: its process, its file and its embedded store
    shutil.rmtree(host_a)
    [upload] = view.uploads()

    host_b = tmp_path / "host-b"
    host_b.mkdir()
    fresh = make_settings(tmp_path=host_b, s3=s3_server, bucket=s3_bucket)
    env = settings_env(fresh)
    # Just after the crash it is indistinguishable from a live upload: left alone.
    young = run_cli(["salvage", "--json"], env)
    assert young.returncode == 0, young.stdout + young.stderr
    [row] = json.loads(young.stdout)
    assert row["action"] == "skip_live"
    assert row["upload_id"] == upload["UploadId"]
    dry = run_cli(["salvage", "--dry-run", "--older-than", "0"], env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would complete" in dry.stdout
    assert "cam1/rec.mp4" in dry.stdout
    assert [u["UploadId"] for u in view.uploads()] == [upload["UploadId"]]  # nothing changed

    done = run_cli(["salvage", "--older-than", "0"], env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "complete:" in done.stdout
    assert "plays" in done.stdout
    assert view.uploads() == []
    [video] = view.video_keys("cam1/rec.mp4")
    remote = view.get(video)
    assert len(remote) >= 2 * 5 * MIB
    assert remote == source[: len(remote)]  # the uploaded prefix, byte for byte
    [doc] = view.metadata("cam1/rec.mp4")
    assert doc["status"] == "salvaged"
    assert doc["completed_by"] == "salvage"
    assert doc["total_size_bytes"] == len(remote)
    assert doc["sha256"] == sha256_bytes(remote)
    assert doc["original_file_path"] is None
    assert (doc["duration_seconds"] or 0) > 0  # fragmented: it plays
    assert doc["salvage"]["playable"] is True
    assert sum(c["size_bytes"] for c in doc["chunks"]) == len(remote)
    # Idempotent: nothing left to do.
    again = run_cli(["salvage", "--json", "--older-than", "0"], env)
    assert again.returncode == 0
    assert json.loads(again.stdout) == []


def test_salvage_leaves_an_upload_whose_key_holds_an_object_open_and_fails(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str,
) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    env = settings_env(settings)
    client = s3_server.boto_client()
    key = "streams/20260101T000000Z-0123456789/x.mp4"
    upload_id = client.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=s3_bucket, Key=key, UploadId=upload_id, PartNumber=1,
                       Body=b"x" * (5 * MIB))
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"an object already here")
    result = run_cli(["salvage", "--older-than", "0"], env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "blocked" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == (
        b"an object already here")
    listed = client.list_multipart_uploads(Bucket=s3_bucket, Prefix="streams/")
    assert [u["UploadId"] for u in listed.get("Uploads", [])] == [upload_id]
    client.abort_multipart_upload(Bucket=s3_bucket, Key=key, UploadId=upload_id)


def test_a_live_instance_salvages_a_dead_hosts_stream_within_the_lease_ttl(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon], source_12mb_fragmented: Path, redis_server: RedisServer,
) -> None:
    """Redis, two hosts: A records and dies with its disk; B watches another directory, so
    takeover has no file to resume from. B salvages A's upload within LEASE_TTL + 60 s
    (it used to stay open for ever: the record quarantined, never completed)."""
    import time

    ttl = 4.0
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    common = {"lease_ttl_seconds": ttl, "stream_timeout_seconds": 30,
              "redis_key_prefix": "salvage-test:"}
    a = make_settings(tmp_path=host_a, s3=s3_server, bucket=s3_bucket, redis=redis_server,
                      instance_id="host-a", **common)
    b = make_settings(tmp_path=host_b, s3=s3_server, bucket=s3_bucket, redis=redis_server,
                      instance_id="host-b", **common)
    first = Daemon(settings_env(a), host_a / "run.log")
    second = Daemon(settings_env(b), host_b / "run.log")
    daemons.extend([first, second])
    first.start()
    second.start()
    view = bucket_view(s3_server, s3_bucket)
    target = a.watch_dir / "rec.mp4"
    writer = GrowingWriter(source_12mb_fragmented, target, rate=4 * MIB)
    writer.start()
    try:
        wait_until_impl(lambda: view.parts_listed() >= 2, timeout=60,
                        what="two parts uploaded", alive=(first,))
    finally:
        writer.stop()
    first.kill()
    died = time.monotonic()
    shutil.rmtree(a.watch_dir)
    wait_until_impl(lambda: len(view.metadata_keys("rec.mp4")) == 1, timeout=ttl + 60,
                    what="the dead host's stream salvaged", alive=(second,))
    took = time.monotonic() - died
    assert took <= ttl + 60
    [doc] = view.metadata("rec.mp4")
    assert doc["status"] == "salvaged"
    assert doc["original_file_path"] == str(target)  # the store remembered it
    [video] = view.video_keys("rec.mp4")
    remote = view.get(video)
    assert remote == source_12mb_fragmented.read_bytes()[: len(remote)]
    assert view.uploads() == []
    events = [e for e in second.events() if e.get("event") == "abandoned_stream_salvaged"]
    assert len(events) == 1
    assert second.stop() == 0


def test_with_rpo_the_host_loss_costs_seconds_not_a_part(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon], source_12mb_fragmented: Path,
) -> None:
    """RPO_SECONDS=1, a recording at 1 MiB/s killed with its writer 3.5 s in (not a single
    10 MiB part yet): the salvaged object holds all but the last ~RPO + one upload of it."""
    import time

    host_a = tmp_path / "host-a"
    host_a.mkdir()
    rate = 1 * MIB
    settings = make_settings(tmp_path=host_a, s3=s3_server, bucket=s3_bucket,
                             stream_timeout_seconds=30, chunk_size_mb=10, rpo_seconds=1)
    daemon = Daemon(settings_env(settings), host_a / "run.log")
    daemons.append(daemon)
    daemon.start()
    view = bucket_view(s3_server, s3_bucket)
    target = settings.watch_dir / "rec.mp4"
    writer = GrowingWriter(source_12mb_fragmented, target, rate=rate)
    writer.start()
    time.sleep(3.5)
    writer.stop()  # the host dies: writer and cefmp4 at once
    daemon.kill()
    written = writer.bytes_written
    shutil.rmtree(host_a)
    assert view.parts_listed() == 0  # no part yet: without RPO all of it would be lost
    fresh = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    done = run_cli(["salvage", "--older-than", "0"], settings_env(fresh))
    assert done.returncode == 0, done.stdout + done.stderr
    [video] = view.video_keys("rec.mp4")
    remote = view.get(video)
    assert remote == source_12mb_fragmented.read_bytes()[: len(remote)]
    lost = written - len(remote)
    assert 0 <= lost <= 2.5 * rate, (written, len(remote))
    [doc] = view.metadata("rec.mp4")
    assert doc["salvage"]["tail_bytes"] == len(remote)
    assert [k for k in view.list_keys() if "/.cefmp4/" in k] == []  # segments deleted


def test_check_reports_abandoned_uploads_and_fails_on_one_that_must_stay_open(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`check` runs salvage's dry run: an abandoned upload is named with what would happen
    to it; one that cannot be salvaged (an object at its key) is a FAIL. Read-only."""
    import asyncio
    import time

    import cefmp4.cli.salvage as salvage_cli
    from cefmp4.cli.check import _check_abandoned

    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    client = s3_server.boto_client()
    assert asyncio.run(_check_abandoned(settings)).detail == "none"
    key = "streams/20260101T000000Z-0123456789/x.mp4"
    upload_id = client.create_multipart_upload(Bucket=s3_bucket, Key=key)["UploadId"]
    client.upload_part(Bucket=s3_bucket, Key=key, UploadId=upload_id, PartNumber=1,
                       Body=b"x" * (5 * MIB))
    later = time.time() + 3600  # an hour without a part
    monkeypatch.setattr(salvage_cli.time, "time", lambda: later)
    found = asyncio.run(_check_abandoned(settings))
    assert found.ok
    assert found.detail.startswith("1 abandoned (5.0 MiB)")
    client.put_object(Bucket=s3_bucket, Key=key, Body=b"an object already here")
    stuck = asyncio.run(_check_abandoned(settings))
    assert not stuck.ok
    assert key in stuck.detail
    assert "salvage --dry-run" in stuck.fix
    listed = client.list_multipart_uploads(Bucket=s3_bucket, Prefix="streams/")
    assert [u["UploadId"] for u in listed.get("Uploads", [])] == [upload_id]  # untouched
    client.abort_multipart_upload(Bucket=s3_bucket, Key=key, UploadId=upload_id)
