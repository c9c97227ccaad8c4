"""A record forged in Redis is never acted on (#9.6, SPEC §2.18): the real daemon, a real
Redis and SeaweedFS. Anyone who can write to Redis must not be able to make cefmp4 read a
file outside WATCH_DIR or write a key outside S3_KEY_PREFIX."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from cefmp4.checkpoint import StreamRecord, StreamState
from cefmp4.checkpoint.redis import open_redis_store
from cefmp4.core.keys import new_stream_id
from cefmp4.runtime import logs
from cefmp4.streams.lease import lease_namespace
from tests.support.app import make_settings, sha256_file, wait_metadata
from tests.support.proc import Daemon, run_cli, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(240)


async def test_a_forged_redis_record_outside_the_watch_dir_and_prefix_is_never_acted_on(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, redis_server: RedisServer
) -> None:
    settings = make_settings(
        tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket, redis=redis_server,
        lease_ttl_seconds=2, rescan_interval_seconds=1, log_format="json",
    )  # fmt: skip
    secret = tmp_path / "secret" / "passwords.mp4"
    secret.parent.mkdir()
    secret.write_bytes(b"SECRET" * 10_000)
    st = secret.stat()
    forged = StreamRecord(
        stream_id=new_stream_id(), path=str(secret), rel_path="passwords.mp4",
        device=st.st_dev, inode=st.st_ino, bucket=s3_bucket, key="elsewhere/passwords.mp4",
        part_size=5 * 2**20, max_parts=settings.max_parts, state=StreamState.ACTIVE,
        started_at=time.time(), last_activity_at=time.time(),
    )  # fmt: skip
    async with open_redis_store(
        redis_server.url, settings.redis_key_prefix,
        lease_namespace=lease_namespace(settings.watch_dir),
    ) as store:  # fmt: skip
        await store.put_stream(forged)
    valid = settings.watch_dir / "cam.mp4"
    valid.write_bytes(os.urandom(300_000))
    env = settings_env(settings)

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        daemon.start()
        (doc,) = await wait_metadata(s3_server, s3_bucket, "cam.mp4")
        assert doc["sha256"] == sha256_file(valid)
        # Several takeover rounds (every 1 s) and rescans have looked at the store since.
        deadline = time.monotonic() + 30
        while sum(e.get("event") == logs.RESCAN_DONE for e in daemon.events()) < 4:
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.2)
        status, body = daemon.http_get("/readyz")
        assert status == 200, body
        assert daemon.stop() == 0
    events = daemon.events()
    warned = [e for e in events if e.get("event") == logs.RECORD_QUARANTINED]
    assert [(e["stream_id"], e["reason"]) for e in warned] == [
        (forged.stream_id, "path is outside WATCH_DIR")
    ]
    assert not [e for e in events if e.get("level") == "error"]
    assert not [e for e in events if e.get("stream_id") == forged.stream_id and e is not warned[0]]
    client = s3_server.boto_client()
    try:
        listed = client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])
        keys = [o["Key"] for o in listed]
        uploads = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    finally:
        client.close()
    assert keys
    assert all(k.startswith(settings.s3_key_prefix) for k in keys), keys
    assert not [k for k in keys if "passwords" in k]
    assert not [u for u in uploads if "passwords" in u["Key"]]

    result = run_cli(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    rows = {row["stream_id"]: row for row in json.loads(result.stdout)}
    assert rows[forged.stream_id]["state"] == "quarantined"
    assert rows[forged.stream_id]["error"] == "path is outside WATCH_DIR"
    table = run_cli(["status"], env)
    assert "quarantined records, never acted on (1)" in table.stdout, table.stdout
    check = run_cli(["check"], env)
    assert check.returncode == 1
    assert f"FAIL checkpoint record: {forged.stream_id} quarantined" in check.stdout, check.stdout
    assert "path is outside WATCH_DIR" in check.stdout
