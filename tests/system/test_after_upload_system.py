"""AFTER_UPLOAD=delete with the installed script: a SIGKILL at every step converges (§2.15)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cefmp4.runtime.failpoints import CRASH_EXIT_STATUS
from tests.support.app import make_settings
from tests.support.proc import Daemon, run_cli, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3
from tests.system.conftest import wait_until_impl

pytestmark = pytest.mark.timeout(150)


def _confirmed(view: Any, rel: str, local: bytes) -> bool:
    """The object and its metadata are in S3, and the object is the file's bytes."""
    videos, metas = view.video_keys(rel), view.metadata_keys(rel)
    return len(videos) == 1 and len(metas) == 1 and view.get(videos[0]) == local


@pytest.mark.parametrize(
    "point",
    ["after_metadata", "after_outbox", "after_upload_staged", "after_upload_done", None],
)
def test_delete_only_after_confirmation_and_crashes_converge(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon], sample_mp4: Path, checkpoint_kind: str, redis_server: RedisServer,
    point: str | None,
) -> None:
    settings = make_settings(
        tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket, stream_timeout_seconds=1.0,
        redis=redis_server if checkpoint_kind == "redis" else None, after_upload="delete",
    )
    env = settings_env(settings)
    view = bucket_view(s3_server, s3_bucket)
    rel = "cam/del.mp4"
    target = settings.watch_dir / rel
    target.parent.mkdir()
    local = sample_mp4.read_bytes()
    if point is not None:
        crashing = Daemon({**env, "CEFMP4_FAILPOINTS": point}, tmp_path / "run1.log")
        daemons.append(crashing)
        crashing.start()
        shutil.copyfile(sample_mp4, target)
        assert crashing.proc is not None
        assert crashing.proc.wait(60) == CRASH_EXIT_STATUS, crashing.log_tail()
        # The invariant at every crash point: gone only with a confirmed object.
        if not target.exists():
            assert _confirmed(view, rel, local), f"deleted before confirmation ({point})"
        hidden = [p.name for p in target.parent.iterdir() if p.name.startswith(".")]
        assert point == "after_upload_staged" or not hidden
    daemon = Daemon(env, tmp_path / "run2.log")
    daemons.append(daemon)
    daemon.start()
    if point is None:
        shutil.copyfile(sample_mp4, target)
    wait_until_impl(lambda: not target.exists() and not list(target.parent.iterdir()),
                    timeout=60, what="the source to be deleted", alive=(daemon,))
    assert _confirmed(view, rel, local)
    [doc] = view.metadata(rel)
    assert doc["status"] == "complete"
    assert view.uploads() == []
    assert daemon.stop() == 0


def test_truncated_stream_keeps_its_file_until_its_successor_is_confirmed(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    daemons: list[Daemon], sample_mp4: Path,
) -> None:
    settings = make_settings(
        tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket, stream_timeout_seconds=1.5,
        after_upload="delete",
    )
    daemon = Daemon(settings_env(settings), tmp_path / "run.log")
    daemons.append(daemon)
    daemon.start()
    view = bucket_view(s3_server, s3_bucket)
    target = settings.watch_dir / "trunc.mp4"
    data = sample_mp4.read_bytes()
    with target.open("wb") as out:
        out.write(data)
        out.flush()
        wait_until_impl(lambda: view.parts_listed() >= 2, timeout=30,
                        what="two parts uploaded", alive=(daemon,))
        out.truncate(1_000_000)  # the recorder restarted the file: truncated
        out.seek(0)
        out.write(data[:1_000_000])
    wait_until_impl(lambda: not target.exists(), timeout=60, what="the successor's delete",
                    alive=(daemon,))
    docs = {d["status"]: d for d in view.metadata("trunc.mp4")}
    assert set(docs) == {"truncated", "complete"}
    assert docs["complete"]["total_size_bytes"] == 1_000_000
    assert docs["truncated"]["completed_by"] == "truncated"
    assert docs["complete"]["completed_by"] == "idle_timeout"
    acted = [e for e in daemon.events() if e.get("event") == "after_upload_done"]
    assert [e.get("stream_id") for e in acted] == [docs["complete"]["stream_id"]]
    assert daemon.stop() == 0


@pytest.mark.parametrize("action", ["delete", "move"])
def test_upload_command_reports_ok_for_files_it_then_deleted_or_moved(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, bucket_view: Callable[..., Any],
    sample_mp4: Path, action: str,
) -> None:
    """``cefmp4 upload`` judges each file by what it uploaded, not by a stat of the path
    after the after-upload action removed it."""
    moved = tmp_path / "moved"
    moved.mkdir()
    extra: dict[str, Any] = {"after_upload_dir": moved} if action == "move" else {}
    settings = make_settings(
        tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket, after_upload=action, **extra
    )
    sources = [settings.watch_dir / "a.mp4", settings.watch_dir / "b.mp4"]
    for source in sources:
        shutil.copyfile(sample_mp4, source)
    local = sample_mp4.read_bytes()

    result = run_cli(["upload", "--stream-timeout-seconds", "1", *map(str, sources)],
                     settings_env(settings))

    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert all(line.startswith("ok ") for line in lines), result.stdout
    assert not any(source.exists() for source in sources)
    if action == "move":
        assert sorted(p.name for p in moved.rglob("*.mp4")) == ["a.mp4", "b.mp4"]
    view = bucket_view(s3_server, s3_bucket)
    for name in ("a.mp4", "b.mp4"):
        assert _confirmed(view, name, local), name
