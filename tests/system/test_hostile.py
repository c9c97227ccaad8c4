"""Hostile file-system input against the real daemon (``cefmp4 run`` as a subprocess, real
SeaweedFS): a name that is not UTF-8 and a fifo named ``*.mp4`` never stop anything (#9.1,
#9.2, SPEC §2.1)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cefmp4.intake.discover import printable
from cefmp4.runtime import logs
from tests.support.app import make_settings, sha256_file, wait_metadata
from tests.support.proc import Daemon, settings_env
from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(240)


def _timed_healthz(daemon: Daemon) -> float:
    started = time.monotonic()
    status, _ = daemon.http_get("/healthz", timeout=5)
    assert status == 200
    return time.monotonic() - started


async def test_a_name_that_is_not_utf8_and_a_fifo_stop_nothing(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             log_format="json")  # fmt: skip
    watch = settings.watch_dir
    env = settings_env(settings)
    first = watch / "first.mp4"
    first.write_bytes(os.urandom(200_000))
    bad = Path(os.fsdecode(os.fsencode(watch) + b"/rec\xff\xfe.mp4"))
    bad.write_bytes(os.urandom(50_000))
    fifo = watch / "pipe.mp4"
    os.mkfifo(fifo)

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        daemon.start()
        assert _timed_healthz(daemon) < 1
        # The recorder of the bad name keeps writing (each write used to end the watch),
        # another fifo appears, and new recordings start beside them.
        with bad.open("ab") as f:
            f.write(os.urandom(10_000))
        os.mkfifo(watch / "late-pipe.mp4")
        second = watch / "cam" / "second.mp4"
        second.parent.mkdir()
        second.write_bytes(os.urandom(300_000))
        for rel, path in (("first.mp4", first), ("cam/second.mp4", second)):
            (doc,) = await wait_metadata(s3_server, s3_bucket, rel)
            assert doc["sha256"] == sha256_file(path)
        with bad.open("ab") as f:
            f.write(os.urandom(10_000))
        later = watch / "later.mp4"
        later.write_bytes(os.urandom(100_000))
        (doc,) = await wait_metadata(s3_server, s3_bucket, "later.mp4")
        assert doc["sha256"] == sha256_file(later)
        assert _timed_healthz(daemon) < 1
        status, body = daemon.http_get("/readyz")
        assert status == 200, body
        assert daemon.stop() == 0
    events = daemon.events()
    skipped = [e for e in events if e.get("event") == logs.FILE_SKIPPED]
    by_path = sorted(e["path"] for e in skipped)
    assert by_path == sorted([printable(bad), str(watch / "late-pipe.mp4"), str(fifo)])
    assert not [e for e in events if e.get("level") == "error"]
    client = s3_server.boto_client()
    try:
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    finally:
        client.close()
    assert not [k for k in keys if "rec" in k or "pipe" in k]
