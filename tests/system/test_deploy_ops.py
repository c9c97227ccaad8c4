"""Operating cefmp4 as deployed: secrets from files, a read-only `check` with `--fix`, and
`status --watch`; real processes against real SeaweedFS and redis-server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.support.app import make_settings
from tests.support.proc import Daemon, cefmp4_bin, run_cli, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3, write_s3_identities

pytestmark = pytest.mark.timeout(180)

ACCESS_KEY = "AKIDFILESECRET0042"
SECRET_KEY = "file-secret-9c1e7a3b5d"
REDIS_PASSWORD = "file-redis-pw-4f2d8e"
MiB = 1024 * 1024


def _until(condition: Callable[[], bool], *, timeout: float, what: str,
           daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            tail = daemon.log_tail() if daemon is not None else ""
            raise AssertionError(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.1)


def _event(daemon: Daemon, name: str) -> Callable[[], bool]:
    return lambda: any(e.get("event") == name for e in daemon.events())


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS that accepts only ACCESS_KEY/SECRET_KEY: the files must be read right."""
    data = tmp_path_factory.mktemp("seaweed-file-secrets")
    config = write_s3_identities(data / "identities.json", ACCESS_KEY, SECRET_KEY)
    with SeaweedS3(data, s3_config=config) as server:
        yield server


def _require_password(server: RedisServer, password: str) -> None:
    command = [b"CONFIG", b"SET", b"requirepass", password.encode()]
    wire = b"*%d\r\n" % len(command) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in command
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(wire)
        assert sock.recv(64).startswith(b"+OK")


def _env_with_secret_files(tmp_path: Path, env: dict[str, str], redis_port: int) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    files = {
        "S3_ACCESS_KEY_ID_FILE": ("s3_access_key_id", ACCESS_KEY),
        "S3_SECRET_ACCESS_KEY_FILE": ("s3_secret_access_key", SECRET_KEY),
        "REDIS_URL_FILE": ("redis_url", f"redis://:{REDIS_PASSWORD}@127.0.0.1:{redis_port}/0"),
    }
    for setting, (name, value) in files.items():
        path = secrets / name
        path.write_text(value + "\n")  # as `kubectl create secret --from-file` leaves it
        path.chmod(0o400)
        env[setting] = str(path)
        env.pop(setting.removesuffix("_FILE"), None)


def test_daemon_with_secrets_from_files_shows_none_of_them(
    tmp_path: Path, auth_s3: SeaweedS3, sample_mp4: Path
) -> None:
    bucket = "file-secrets"
    client = auth_s3.boto_client(ACCESS_KEY, SECRET_KEY)
    client.create_bucket(Bucket=bucket)
    client.close()
    with RedisServer(tmp_path / "redis") as redis:
        _require_password(redis, REDIS_PASSWORD)
        settings = make_settings(tmp_path=tmp_path, s3=auth_s3, bucket=bucket)
        env = settings_env(settings, LOG_LEVEL="DEBUG")
        _env_with_secret_files(tmp_path, env, redis.port)
        with Daemon(env, tmp_path / "daemon.log") as daemon:
            daemon.start()
            assert daemon.proc is not None
            pid = daemon.proc.pid
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
            shutil.copyfile(sample_mp4, settings.watch_dir / "secret.mp4")
            _until(_event(daemon, "stream_completed"), timeout=60, what="completion",
                   daemon=daemon)
            assert daemon.http_get("/readyz")[0] == 200  # both files were read right
            assert daemon.stop() == 0
        check = run_cli(["check"], env)
        status = run_cli(["status", "--json"], env)

    assert check.returncode == 0, check.stdout + check.stderr
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)[0]["state"] == "completed"
    log = (tmp_path / "daemon.log").read_text()
    for secret in (ACCESS_KEY, SECRET_KEY, REDIS_PASSWORD):
        for where, text in (("cmdline", cmdline), ("environ", environ), ("log", log),
                            ("check", check.stdout + check.stderr),
                            ("status", status.stdout + status.stderr)):
            assert secret not in text, f"{secret!r} in {where}"
    assert "S3_SECRET_ACCESS_KEY_FILE=" in environ  # the path, not the secret


def test_check_redacts_endpoint_userinfo_and_keys(tmp_path: Path, s3_server: SeaweedS3) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket="redact-check")
    host = s3_server.endpoint_url.removeprefix("http://")
    env = settings_env(settings, S3_ENDPOINT_URL=f"http://user:url-pw-73ac@{host}",
                       S3_SECRET_ACCESS_KEY="check-secret-5e9")
    result = run_cli(["check"], env, timeout=60)
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    assert "url-pw-73ac" not in out
    assert "check-secret-5e9" not in out
    assert "user:***@" in out  # the endpoint is still named, with its password masked


# --- check: read-only by default, --fix creates ---------------------------------------------


def _bucket_exists(s3: SeaweedS3, bucket: str) -> bool:
    client = s3.boto_client()
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except client.exceptions.ClientError:
        return False
    finally:
        client.close()


def test_check_creates_nothing_and_fix_creates_what_is_missing(
    tmp_path: Path, s3_server: SeaweedS3
) -> None:
    bucket = f"typo-{os.getpid()}-{time.monotonic_ns() % 10**8}"
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=bucket)
    watch = tmp_path / "not-yet" / "videos"
    env = settings_env(settings, WATCH_DIR=str(watch), STATE_DIR=str(tmp_path / "state"))

    result = run_cli(["check"], env, timeout=60)

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAIL s3 bucket:") and "does not exist" in line
               for line in lines), result.stdout
    assert any(line.startswith("FAIL watch dir:") and "does not exist" in line
               for line in lines), result.stdout
    assert sum("check --fix` creates it" in line for line in lines) == 2, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not _bucket_exists(s3_server, bucket)
    assert not watch.exists()
    assert not (tmp_path / "state").exists()

    fixed = run_cli(["check", "--fix"], env, timeout=60)

    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "created (--fix)" in fixed.stdout
    assert _bucket_exists(s3_server, bucket)
    assert watch.is_dir()
    again = run_cli(["check"], env, timeout=60)
    assert again.returncode == 0, again.stdout
    assert "(--fix)" not in again.stdout


def test_fix_without_permission_to_create_says_so(tmp_path: Path, auth_s3: SeaweedS3) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=auth_s3, bucket="no-such-bucket-here")
    env = settings_env(settings, S3_ACCESS_KEY_ID="nobody", S3_SECRET_ACCESS_KEY="nothing")
    result = run_cli(["check", "--fix"], env, timeout=60)
    assert result.returncode == 1
    assert "FAIL s3" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# --- status --watch -------------------------------------------------------------------------


def _growing_stream(tmp_path: Path, s3: SeaweedS3, bucket: str) -> tuple[Daemon, dict[str, str],
                                                                          Path]:
    settings = make_settings(tmp_path=tmp_path, s3=s3, bucket=bucket,
                             stream_timeout_seconds=120)
    env = settings_env(settings)
    daemon = Daemon(env, tmp_path / "daemon.log")
    daemon.start()
    path = settings.watch_dir / "live.mp4"
    path.write_bytes(os.urandom(6 * MiB))  # one full 5 MiB part, 1 MiB waiting for more
    _until(_event(daemon, "part_uploaded"), timeout=60, what="part 1", daemon=daemon)
    return daemon, env, path


def _table_rows(out: str) -> list[list[str]]:
    """The first line of each stream's row (a long path folds onto more lines)."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in out.splitlines() if "│ active" in line
    ]


def test_status_watch_shows_disk_vs_s3_and_totals(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    daemon, env, path = _growing_stream(tmp_path, s3_server, s3_bucket)
    with daemon:
        result = run_cli(["status", "--watch", "--count", "2", "--interval", "0.2"], env)
        daemon.stop()

    assert result.returncode == 0, result.stderr
    assert result.stdout.count("cefmp4 active streams (1)") == 2
    rows = _table_rows(result.stdout)
    assert len(rows) == 2, result.stdout
    stream_id, state, shown_path, on_disk, in_s3, lag, parts, last = rows[0]
    assert state == "active"
    assert str(path).startswith(shown_path)
    assert (on_disk, in_s3, lag, parts) == ("6.0 MiB", "5.0 MiB", "1.0 MiB", "1")
    assert last.endswith("s ago")
    totals = [line for line in result.stdout.splitlines() if "│ total" in line]
    assert len(totals) == 2
    assert "6.0 MiB" in totals[0]
    assert "1.0 MiB" in totals[0]
    assert stream_id in (tmp_path / "daemon.log").read_text()


@pytest.mark.parametrize("started", ["normally", "with SIGINT ignored"])
def test_status_watch_ends_with_0_on_ctrl_c(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, started: str
) -> None:
    """Also when it starts with SIGINT ignored, as a script's background job (`cmd &`) does:
    Python then raises no KeyboardInterrupt unless the command installs its handler (the
    in-session CI, started that way, timed out here)."""
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    argv = [cefmp4_bin(), "status", "--watch", "--interval", "0.2"]
    if started != "normally":  # `trap "" INT` ignores it, and exec keeps it ignored
        argv = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *argv]
    proc = subprocess.Popen(
        argv, env=settings_env(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        seen = []
        while not any("no checkpoint store yet" in line for line in seen):  # one whole table
            line = proc.stdout.readline()
            assert line, "status --watch ended before drawing a table"
            seen.append(line)
        assert "cefmp4 active streams (0)" in "".join(seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err
    assert "KeyboardInterrupt" not in err


@pytest.mark.parametrize(("args", "setting"), [
    (["--interval", "0"], "--interval"), (["--count", "-1"], "--count"),
])
def test_status_watch_bad_options_are_one_line(args: list[str], setting: str) -> None:
    result = run_cli(["status", "--watch", *args], dict(os.environ))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"configuration error: {setting}" in result.stderr


def test_status_watch_with_the_store_down_says_so_and_keeps_going(tmp_path: Path) -> None:
    nowhere = SimpleNamespace(endpoint_url=f"http://127.0.0.1:{_closed_port()}")
    settings = make_settings(tmp_path=tmp_path, s3=nowhere, bucket="unused")  # type: ignore[arg-type]
    env = settings_env(settings, REDIS_URL=f"redis://:watch-pw-31f@127.0.0.1:{_closed_port()}/0")
    result = run_cli(["status", "--watch", "--count", "2", "--interval", "0.1"], env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("checkpoint store did not answer") == 2
    assert "watch-pw-31f" not in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
