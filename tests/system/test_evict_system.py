"""AFTER_UPLOAD=evict on a real small file system (a tmpfs mounted by the test, as root):
confirmed sources stay until space runs short, then go oldest first; a restart keeps the
order (it comes from the checkpoint store); nothing unconfirmed is ever evicted."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import make_settings
from tests.support.proc import Daemon, settings_env
from tests.support.seaweed import SeaweedS3
from tests.system.conftest import wait_until_impl

pytestmark = pytest.mark.timeout(180)

MIB = 1 << 20


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: its free space is what the test writes into it."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _metric(daemon: Daemon, name: str) -> float:
    status, body = daemon.http_get("/metrics")
    assert status == 200
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not on /metrics")


def test_sources_are_evicted_oldest_first_only_when_space_runs_short(
    tmp_path: Path, small_fs: Path, s3_server: SeaweedS3, s3_bucket: str,
    bucket_view: Callable[..., Any], daemons: list[Daemon],
) -> None:
    watch = small_fs / "watch"
    watch.mkdir()
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             watch_dir=watch, stream_timeout_seconds=1.0,
                             after_upload="evict", evict_keep_free="50%")
    env = settings_env(settings)
    view = bucket_view(s3_server, s3_bucket)
    first = Daemon(env, tmp_path / "1.log")
    daemons.append(first)
    first.start()

    running = [first]

    def record(name: str) -> Path:
        path = watch / name
        path.write_bytes(os.urandom(10 * MIB))
        wait_until_impl(lambda: len(view.metadata_keys(name)) == 1, timeout=60,
                        what=f"{name} in S3", alive=(running[-1],))
        return path

    a = record("a.mp4")
    b = record("b.mp4")  # 20 MiB used, 28 MiB free: more than half, all kept
    wait_until_impl(lambda: _metric(first, "evictable_files") == 2, timeout=30,
                    what="both kept and counted", alive=(first,))
    assert _metric(first, "evictable_bytes") == 20 * MIB  # their sizes, as uploaded
    assert a.exists()
    assert b.exists()
    c = record("c.mp4")  # 30 MiB used, 18 MiB free: short of 24 MiB
    wait_until_impl(lambda: not a.exists(), timeout=30, what="the oldest evicted",
                    alive=(first,))
    assert b.exists()
    assert c.exists()
    # Counted just after the unlink, not with it.
    wait_until_impl(lambda: _metric(first, "files_evicted_total") == 1, timeout=5,
                    what="the eviction counted", alive=(first,))
    # Down by a's bytes as it goes (not at the next count), up by c's as it completed.
    wait_until_impl(lambda: _metric(first, "evictable_bytes") == 20 * MIB, timeout=5,
                    what="b and c kept", alive=(first,))
    assert _metric(first, "evictable_files") == 2
    first.kill()
    # Which files are evictable, and in which order, comes from the store, not memory.
    second = Daemon(env, tmp_path / "2.log")
    daemons.append(second)
    second.start()
    running.append(second)
    record("d.mp4")
    wait_until_impl(lambda: not b.exists(), timeout=30, what="the next oldest evicted",
                    alive=(second,))
    assert c.exists()
    # The restart read c back from the store; d came since, and b went.
    wait_until_impl(lambda: _metric(second, "evictable_bytes") == 20 * MIB, timeout=5,
                    what="c and d kept", alive=(second,))
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4"):
        assert len(view.video_keys(name)) == 1  # every evicted source is safe in S3
    assert second.stop() == 0
