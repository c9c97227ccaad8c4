"""A crash at each step boundary converges after a restart (SPEC §2.6, §2.9).

The daemon exits abruptly (``os._exit``, no cleanup) the first time it reaches the armed
failpoint; the restart, without it, must end with one byte-identical object, one metadata
object and no open multipart upload.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest

from cefmp4.runtime.failpoints import CRASH_EXIT_STATUS
from tests.support.app import PROBE_MARK, make_settings
from tests.support.media import GrowingWriter, make_mp4
from tests.support.proc import Daemon, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(120)


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.parametrize(
    "point", ["after_create", "after_upload_part", "after_complete", "after_metadata"]
)
def test_crash_at_step_boundary_converges(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3_bucket: str,
    sample_mp4: Path,
    checkpoint_kind: str,
    redis_server: RedisServer,
    point: str,
) -> None:
    settings = make_settings(
        tmp_path=tmp_path,
        s3=s3_server,
        bucket=s3_bucket,
        redis=redis_server if checkpoint_kind == "redis" else None,
        stream_timeout_seconds=1.0,
        rescan_interval_seconds=1.0,
    )
    env = settings_env(settings)
    client = s3_server.boto_client()
    target = settings.watch_dir / "cam.mp4"
    with Daemon({**env, "CEFMP4_FAILPOINTS": point}, tmp_path / "run1.log") as daemon:
        daemon.start()
        shutil.copyfile(sample_mp4, target)
        assert daemon.proc is not None
        assert daemon.proc.wait(60) == CRASH_EXIT_STATUS, daemon.log_tail()

    with Daemon(env, tmp_path / "run2.log") as daemon:
        daemon.start()

        def metadata_keys() -> list[str]:
            listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="streams/")
            return [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".json")]

        _wait(lambda: len(metadata_keys()) >= 1, 60, "metadata after the restart")
        seen = len(daemon.events())
        # A (wrong) second stream would be running or starting at the next rescan.
        _wait(
            lambda: any(
                e.get("event") == "rescan" and e.get("streams") == 0
                for e in daemon.events()[seen:]
            ),
            30, "a rescan with nothing to do",
        )
        assert daemon.stop() == 0

    [meta_key] = metadata_keys()
    doc = json.loads(client.get_object(Bucket=s3_bucket, Key=meta_key)["Body"].read())
    video = client.get_object(Bucket=s3_bucket, Key=doc["s3_key"])["Body"].read()
    assert hashlib.sha256(video).hexdigest() == hashlib.sha256(target.read_bytes()).hexdigest()
    assert doc["sha256"] == hashlib.sha256(video).hexdigest()
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="streams/")
    assert sorted(o["Key"] for o in listed["Contents"]) == sorted([doc["s3_key"], meta_key])
    uploads = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert uploads == []


def test_checkpoint_store_wiped_mid_stream_is_rebuilt_from_s3(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3_bucket: str,
    media_dir: Path,
    checkpoint_kind: str,
    redis_server: RedisServer,
) -> None:
    source = media_dir / "wipe-source.mp4"
    if not source.exists():
        make_mp4(source, seconds=6, mbytes=26)
    settings = make_settings(
        tmp_path=tmp_path,
        s3=s3_server,
        bucket=s3_bucket,
        redis=redis_server if checkpoint_kind == "redis" else None,
        stream_timeout_seconds=2.0,
    )
    env = settings_env(settings)
    client = s3_server.boto_client()
    target = settings.watch_dir / "wiped.mp4"

    def listed_parts() -> list[int]:
        uploads = [u for u in client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
                   if PROBE_MARK not in u["Key"]]
        if not uploads:
            return []
        parts = client.list_parts(
            Bucket=s3_bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
        ).get("Parts", [])
        return sorted({p["PartNumber"] for p in parts})

    writer = GrowingWriter(source, target, rate=2_500_000)
    with Daemon(env, tmp_path / "run1.log") as daemon:
        daemon.start()
        writer.start()
        _wait(lambda: len(listed_parts()) >= 2, 60, "two parts listed")
        daemon.kill()
    before = listed_parts()
    # Wipe every checkpoint while the daemon is down.
    if checkpoint_kind == "redis":
        import redis

        with redis.Redis.from_url(redis_server.url) as r:
            for key in r.scan_iter(match=f"{settings.redis_key_prefix}*"):
                r.delete(key)
    else:
        shutil.rmtree(settings.state_dir)

    with Daemon(env, tmp_path / "run2.log") as daemon:
        daemon.start()
        writer.wait(60)

        def metadata_keys() -> list[str]:
            listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="streams/")
            return [o["Key"] for o in listed.get("Contents", []) if o["Key"].endswith(".json")]

        _wait(lambda: len(metadata_keys()) >= 1, 60, "metadata after the restart")
        events = daemon.events()
        assert daemon.stop() == 0

    assert any(e.get("event") == "stream_rebuilt" for e in events)
    again = [
        e["part_number"]
        for e in events
        if e.get("event") in ("part_uploaded", "part_reuploaded") and e["part_number"] in before
    ]
    # Only a part whose bytes changed since (the muxer's header patch) may go up again.
    assert len(again) <= 1, again
    [meta_key] = metadata_keys()
    doc = json.loads(client.get_object(Bucket=s3_bucket, Key=meta_key)["Body"].read())
    video = client.get_object(Bucket=s3_bucket, Key=doc["s3_key"])["Body"].read()
    assert video == source.read_bytes()
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
