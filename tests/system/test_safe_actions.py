"""AFTER_UPLOAD=delete acts only on proof (§2.25), shown with the installed script against
real SeaweedFS: a recorder cefmp4 cannot see in /proc, and a writer that closes and reopens."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.app import make_settings
from tests.support.proc import Daemon, settings_env
from tests.support.seaweed import SeaweedS3
from tests.system.conftest import wait_until_impl

pytestmark = pytest.mark.timeout(150)

MIB = 1 << 20


def _objects_holding(view: Any, rel: str) -> list[bytes]:
    return [view.get(key) for key in view.video_keys(rel)]


def test_a_recorder_in_another_pid_namespace_is_never_deleted_under(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon],
) -> None:
    """cefmp4 in its own PID namespace, as in the compose and Kubernetes layouts: the
    recorder (this test) writes 6 MiB, pauses past STREAM_TIMEOUT_SECONDS with the file
    open, then writes 3 MiB more. The 6 MiB stream completes, but the file is not deleted
    while it is open; the whole 9 MiB recording ends in S3, and then the file goes."""
    if shutil.which("unshare") is None:
        raise AssertionError("unshare (util-linux) is needed for this test")
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             stream_timeout_seconds=1.5, after_upload="delete")
    daemon = Daemon(settings_env(settings), tmp_path / "run.log",
                    wrapper=["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
    daemons.append(daemon)
    daemon.start()
    view = bucket_view(s3_server, s3_bucket)
    path = settings.watch_dir / "cam.mp4"
    first, more = os.urandom(6 * MIB), os.urandom(3 * MIB)
    with path.open("wb") as recorder:
        recorder.write(first)
        recorder.flush()
        wait_until_impl(lambda: first in _objects_holding(view, "cam.mp4")
                        and len(view.metadata_keys("cam.mp4")) == 1,
                        timeout=60, what="the paused recording's object", alive=(daemon,))

        def kept() -> bool:
            return any(e.get("event") == "delivery_failed" for e in daemon.events())

        wait_until_impl(kept, timeout=30, what="the after-upload attempt", alive=(daemon,))
        [failed] = [e for e in daemon.events() if e.get("event") == "delivery_failed"]
        assert "open for writing" in failed["error"]
        assert path.read_bytes() == first
        recorder.write(more)
    wait_until_impl(lambda: not path.exists(), timeout=60,
                    what="the whole recording's delete", alive=(daemon,))
    assert first + more in _objects_holding(view, "cam.mp4")
    assert os.listdir(settings.watch_dir) == []


def test_a_writer_that_closes_and_reopens_keeps_one_whole_copy(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon],
) -> None:
    """The recommended profile (complete on close) and a writer that appends and closes
    (FTP APPE cameras): the first completion is fast, but the delete waits
    STREAM_TIMEOUT_SECONDS, so the append lands in the same file and S3 gets it whole."""
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             stream_timeout_seconds=5, complete_on_close_seconds=0.5,
                             after_upload="delete")
    daemon = Daemon(settings_env(settings), tmp_path / "run.log")
    daemons.append(daemon)
    daemon.start()
    view = bucket_view(s3_server, s3_bucket)
    path = settings.watch_dir / "appe.mp4"
    head, tail = os.urandom(2 * MIB), os.urandom(2 * MIB)
    with path.open("wb") as camera:
        camera.write(head)
        camera.flush()
        wait_until_impl(lambda: any(e.get("event") == "stream_started" for e in daemon.events()),
                        timeout=30, what="the stream's start", alive=(daemon,))
    wait_until_impl(lambda: head in _objects_holding(view, "appe.mp4")
                    and len(view.metadata_keys("appe.mp4")) == 1,
                    timeout=60, what="the first close's object", alive=(daemon,))
    with path.open("ab") as again:  # the camera's next upload appends
        again.write(tail)
    wait_until_impl(lambda: not path.exists(), timeout=60, what="the delete",
                    alive=(daemon,))
    assert head + tail in _objects_holding(view, "appe.mp4")
    events = daemon.events()
    # The first completion came on close, well before STREAM_TIMEOUT_SECONDS.
    assert next(e["completed_by"] for e in events if e.get("event") == "stream_idle") == (
        "writer_closed")
    assert len([e for e in events if e.get("event") == "after_upload_done"]) == 1


def test_a_file_hidden_by_a_crash_comes_back_when_the_restart_keeps_files(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, daemons: list[Daemon],
    sample_mp4: Path,
) -> None:
    """SIGKILL right after the source was renamed to its hidden name, then the operator
    restarts with AFTER_UPLOAD=keep: the file is back in view, not hidden for ever."""
    from cefmp4.runtime.failpoints import CRASH_EXIT_STATUS

    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             stream_timeout_seconds=1.0, after_upload="delete")
    env = settings_env(settings)
    target = settings.watch_dir / "clip.mp4"
    crashing = Daemon({**env, "CEFMP4_FAILPOINTS": "after_upload_staged"}, tmp_path / "1.log")
    daemons.append(crashing)
    crashing.start()
    shutil.copyfile(sample_mp4, target)
    assert crashing.proc is not None
    assert crashing.proc.wait(60) == CRASH_EXIT_STATUS, crashing.log_tail()
    assert not target.exists()  # hidden, as the crash left it
    keeping = Daemon({**env, "AFTER_UPLOAD": "keep"}, tmp_path / "2.log")
    daemons.append(keeping)
    keeping.start()
    wait_until_impl(target.exists, timeout=30, what="the file back in view", alive=(keeping,))
    assert target.read_bytes() == sample_mp4.read_bytes()
    assert sorted(p.name for p in settings.watch_dir.iterdir()) == ["clip.mp4"]
    assert keeping.stop() == 0
