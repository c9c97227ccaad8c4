"""The real process at the edges of its resources (#9.5, #9.8): few file descriptors, and a
stop signal while a dependency is down at start-up."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cefmp4.core.keys import metadata_key
from tests.support.app import make_settings
from tests.support.proc import Daemon, cefmp4_bin, free_port, settings_env
from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(300)

FILES = 300
NOFILE = 128


def _few_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


def test_300_files_under_ulimit_n_128_without_redis_are_all_uploaded(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    files = []
    for n in range(FILES):
        path = settings.watch_dir / f"d{n % 7}" / f"cam{n:03}.mp4"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(os.urandom(2_000 + n))
        files.append(path)
    result = subprocess.run(
        [cefmp4_bin(), "upload", *map(str, files)], env=settings_env(settings),
        capture_output=True, text=True, timeout=240, preexec_fn=_few_descriptors, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(line.startswith("ok") for line in result.stdout.splitlines()) == FILES
    client = s3_server.boto_client()
    try:
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        uploads = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    finally:
        client.close()
    videos = [k for k in keys if k.endswith(".mp4")]
    assert len(videos) == FILES
    assert len([k for k in keys if k in {metadata_key(v) for v in videos}]) == FILES
    assert uploads == []


@pytest.mark.parametrize("down", ["s3", "redis"])
def test_sigterm_during_a_start_up_outage_exits_0_within_5_s(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, down: str
) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    nothing = f"127.0.0.1:{free_port()}"  # a port nobody listens on
    extra = (
        {"S3_ENDPOINT_URL": f"http://{nothing}"} if down == "s3"
        else {"REDIS_URL": f"redis://{nothing}/0"}
    )  # fmt: skip
    env = settings_env(settings, **extra)
    with Daemon(env, tmp_path / "daemon.log") as daemon:
        daemon.start(wait_ready=False)
        assert daemon.proc is not None
        # Start-up is retrying (its health server up, reporting the dependency down).
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "retry" for e in daemon.events()):
            assert daemon.proc.poll() is None, daemon.log_tail()
            assert time.monotonic() < deadline, daemon.log_tail()
            time.sleep(0.1)
        sent = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = daemon.proc.wait(15)
        took = time.monotonic() - sent
    assert code == 0, daemon.log_tail()
    assert took < 5, f"took {took:.1f} s"
    assert not any(e.get("event") == "ready" for e in daemon.events())
