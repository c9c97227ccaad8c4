"""`cefmp4 check` says which writer signals this deployment has, and checks AFTER_UPLOAD_DIR."""

from __future__ import annotations

from pathlib import Path

from tests.support.app import make_settings
from tests.support.proc import cefmp4_bin, run_cli, settings_env
from tests.support.seaweed import SeaweedS3


def test_check_reports_writer_signals(tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             complete_on_close_seconds=2, hold_while_open=True)
    result = run_cli(["check"], settings_env(settings))
    assert result.returncode == 0, result.stdout + result.stderr
    [line] = [x for x in result.stdout.splitlines() if "writer signals" in x]
    assert line.startswith("ok   writer signals:")
    assert "close-write events (inotify): available" in line
    assert "open-for-write descriptors (/proc):" in line


def test_check_after_upload_dir_not_writable(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             after_upload="move", after_upload_dir=tmp_path / "done")
    env = settings_env(settings, AFTER_UPLOAD_DIR=str(blocker / "done"))
    result = run_cli(["check"], env)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    [fail] = [i for i, x in enumerate(lines) if x.startswith("FAIL")]
    assert lines[fail].startswith("FAIL after-upload dir: AFTER_UPLOAD_DIR:")
    assert "AFTER_UPLOAD_DIR" in lines[fail + 1]


def test_check_fails_a_destructive_after_upload_that_cannot_see_every_writer(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    """As in a container without CAP_LEASE: its own PID namespace, no lease on another
    user's file. ``check`` says so as a FAIL with AFTER_UPLOAD=delete, and passes with the
    lease (root here) or with keep."""
    import shutil
    import subprocess

    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            raise AssertionError(f"{tool} (util-linux) is needed for this test")
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
                             after_upload="delete")
    env = settings_env(settings)
    contained = ["unshare", "--pid", "--fork", "--mount-proc",
                 "setpriv", "--bounding-set", "-lease", "--inh-caps", "-lease"]
    result = subprocess.run([*contained, cefmp4_bin(), "check"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    [fail] = [i for i, x in enumerate(lines) if x.startswith("FAIL")]
    assert lines[fail].startswith("FAIL after-upload proof: AFTER_UPLOAD=delete keeps files")
    assert "no CAP_LEASE and cefmp4 runs in its own PID namespace" in lines[fail]
    assert lines[fail + 1].strip().startswith("fix:")
    ok = run_cli(["check"], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok   after-upload proof:" in ok.stdout


def test_bad_feature_settings_are_one_line_exit_2(tmp_path: Path) -> None:
    env = {"WATCH_DIR": str(tmp_path), "STATE_DIR": str(tmp_path / ".s"), "PROM_PORT": "0",
           "PATH": "/usr/bin:/bin"}
    for name, value in (("WATCH_EXTENSIONS", "mkv"), ("AFTER_UPLOAD", "move"),
                        ("NOTIFY_WEBHOOK_URL", "ftp://tok3n@x/"), ("MAX_HOLD_SECONDS", "0"),
                        ("COMPLETE_ON_CLOSE_SECONDS", "-1")):
        result = run_cli(["check"], {**env, name: value})
        assert result.returncode == 2, (name, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (name, lines)
        assert "Traceback" not in result.stderr
        assert "tok3n" not in result.stderr
        setting = "AFTER_UPLOAD_DIR" if name == "AFTER_UPLOAD" else name
        assert setting in lines[0], (name, lines)
