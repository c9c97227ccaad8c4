"""``cefmp4 upload``, ``status``, ``check`` and configuration errors, through the installed
console script as a subprocess, against real SeaweedFS, redis-server and ffprobe."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cefmp4.config.settings import Settings
from tests.support.app import make_settings, sha256_file
from tests.support.proc import Daemon, cefmp4_bin, free_port, run_cli, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(180)

# The SPEC §1.2 names every subcommand's --help must mention.
SPEC_SETTINGS = (
    "WATCH_DIR", "CHUNK_SIZE_MB", "STREAM_TIMEOUT_SECONDS", "S3_ENDPOINT_URL",
    "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_BUCKET_NAME", "S3_REGION_NAME",
    "S3_KEY_PREFIX", "REDIS_URL", "STATE_DIR", "LOG_LEVEL", "LOG_FORMAT", "PROM_PORT",
    "FFPROBE_PATH",
)  # fmt: skip

WRITER_KEY, WRITER_SECRET = "writer-key", "writer-secret-0123456789"
ADMIN_KEY, ADMIN_SECRET = "admin-key", "admin-secret-0123456789"


def _setup(
    tmp_path: Path, s3: SeaweedS3, bucket: str, redis: RedisServer | None = None, **kw: Any
) -> tuple[Settings, dict[str, str]]:
    settings = make_settings(tmp_path=tmp_path, s3=s3, bucket=bucket, redis=redis, **kw)
    return settings, settings_env(settings)


def _keys(s3: SeaweedS3, bucket: str) -> set[str]:
    client = s3.boto_client()
    try:
        listing = client.list_objects_v2(Bucket=bucket)
        return {obj["Key"] for obj in listing.get("Contents", [])}
    finally:
        client.close()


def _get(s3: SeaweedS3, bucket: str, key: str) -> tuple[bytes, str]:
    client = s3.boto_client()
    try:
        response = client.get_object(Bucket=bucket, Key=key)
        return response["Body"].read(), response["ContentType"]
    finally:
        client.close()


def _video_key(keys: set[str], rel: str) -> str:
    [key] = [k for k in keys if k.endswith(f"/{rel}")]
    assert re.fullmatch(rf"streams/[^/]+/{re.escape(rel)}", key), key
    return key


def _assert_uploaded(s3: SeaweedS3, bucket: str, source: Path, rel: str) -> str:
    """The object is byte-identical to ``source`` and its metadata describes it."""
    keys = _keys(s3, bucket)
    key = _video_key(keys, rel)
    body, _ = _get(s3, bucket, key)
    assert hashlib.sha256(body).hexdigest() == sha256_file(source)
    raw, content_type = _get(s3, bucket, key + ".metadata.json")
    assert content_type == "application/json"
    doc = json.loads(raw)
    assert doc["status"] == "complete"
    assert doc["s3_key"] == key
    assert doc["s3_bucket"] == bucket
    assert doc["sha256"] == sha256_file(source)
    assert doc["total_size_bytes"] == source.stat().st_size
    assert doc["original_file_path"] == str(source.resolve())
    assert sum(c["size_bytes"] for c in doc["chunks"]) == source.stat().st_size
    return key


def _status_json(env: dict[str, str]) -> list[dict[str, Any]]:
    result = run_cli(["status", "--json"], env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    return rows


# --- upload ---------------------------------------------------------------------------------


def test_upload_two_files_then_again_uploads_nothing(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3_bucket: str,
    sample_mp4: Path,
    sample_fragmented_mp4: Path,
) -> None:
    settings, env = _setup(tmp_path, s3_server, s3_bucket)
    first = settings.watch_dir / "cam1.mp4"
    second = settings.watch_dir / "site" / "cam2.mp4"
    second.parent.mkdir()
    shutil.copyfile(sample_mp4, first)
    shutil.copyfile(sample_fragmented_mp4, second)

    result = run_cli(["upload", str(first), str(second)], env)

    assert result.returncode == 0, result.stderr
    # Not a terminal: one plain line per file, no progress bar redraws or colour codes.
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    assert all(line.startswith("ok ") for line in lines), result.stdout
    assert "\r" not in result.stdout
    assert "\x1b" not in result.stdout
    key1 = _assert_uploaded(s3_server, s3_bucket, first, "cam1.mp4")
    key2 = _assert_uploaded(s3_server, s3_bucket, second, "site/cam2.mp4")
    assert key1 in result.stdout
    assert key2 in result.stdout
    before = _keys(s3_server, s3_bucket)
    assert len(before) == 4  # two videos, two metadata documents
    streams_before = _status_json(env)
    assert len(streams_before) == 2

    again = run_cli(["upload", str(first), str(second)], env)

    assert again.returncode == 0, again.stderr
    assert _keys(s3_server, s3_bucket) == before
    assert _status_json(env) == streams_before
    assert again.stdout.count("already uploaded") == 2, again.stdout


def test_upload_outside_watch_dir_and_a_missing_file(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path
) -> None:
    settings, env = _setup(tmp_path, s3_server, s3_bucket)
    outside = tmp_path / "elsewhere" / "outside.mp4"
    outside.parent.mkdir()
    shutil.copyfile(sample_mp4, outside)
    assert not outside.is_relative_to(settings.watch_dir)
    missing = tmp_path / "no-such-recording.mp4"

    only_missing = run_cli(["upload", str(missing)], env)

    assert only_missing.returncode != 0
    assert f"{missing}: not a readable file" in only_missing.stderr
    assert "Traceback" not in only_missing.stderr

    mixed = run_cli(["upload", str(outside), str(missing)], env)

    assert mixed.returncode != 0  # exit 0 only if all succeeded
    assert f"{missing}: not a readable file" in mixed.stderr
    # The file that exists is uploaded anyway, keyed by its name alone.
    _assert_uploaded(s3_server, s3_bucket, outside, "outside.mp4")


# --- status ---------------------------------------------------------------------------------


def _assert_status_rows(rows: list[dict[str, Any]], sources: dict[str, Path]) -> None:
    assert sorted(row["path"] for row in rows) == sorted(str(p.resolve()) for p in sources.values())
    for row in rows:
        source = Path(row["path"])
        assert row["stream_id"]
        assert row["state"] == "completed"
        assert row["bytes_uploaded"] == source.stat().st_size
        assert row["parts_uploaded"] == 3  # 12 MB in 5 MiB parts
        last = datetime.fromisoformat(row["last_activity_utc"])
        assert last.utcoffset() is not None
        assert abs(time.time() - last.timestamp()) < 600


def test_status_sqlite_beside_a_running_daemon(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3_bucket: str,
    sample_mp4: Path,
    sample_fragmented_mp4: Path,
) -> None:
    settings, env = _setup(tmp_path, s3_server, s3_bucket)
    assert _status_json(env) == []  # no database yet: no streams, not an error
    sources = {"a.mp4": sample_mp4, "b.mp4": sample_fragmented_mp4}
    for name, sample in sources.items():
        shutil.copyfile(sample, settings.watch_dir / name)
    paths = {name: settings.watch_dir / name for name in sources}
    assert run_cli(["upload", *map(str, paths.values())], env).returncode == 0

    rows = _status_json(env)
    _assert_status_rows(rows, paths)

    with Daemon(env, tmp_path / "daemon.log") as daemon:
        daemon.start()
        # The daemon holds the SQLite store's single-instance lock...
        second = run_cli(["run"], {**env, "PROM_PORT": "0"}, timeout=30)
        assert second.returncode == 2
        assert "STATE_DIR" in second.stderr
        # ...and status still reads it.
        assert _status_json(env) == rows
        table = run_cli(["status"], env)
        assert table.returncode == 0, table.stderr
        for row in rows:
            assert row["stream_id"] in table.stdout
        assert daemon.stop() == 0


def test_status_redis(
    tmp_path: Path,
    s3_server: SeaweedS3,
    s3_bucket: str,
    redis_server: RedisServer,
    sample_mp4: Path,
) -> None:
    settings, env = _setup(tmp_path, s3_server, s3_bucket, redis=redis_server)
    source = settings.watch_dir / "r.mp4"
    shutil.copyfile(sample_mp4, source)
    assert _status_json(env) == []
    assert run_cli(["upload", str(source)], env).returncode == 0

    rows = _status_json(env)

    _assert_status_rows(rows, {"r.mp4": source})
    assert not settings.state_dir.exists()  # Redis mode never touches the embedded store
    table = run_cli(["status"], env)
    assert table.returncode == 0, table.stderr
    line = next(ln for ln in table.stdout.splitlines() if rows[0]["stream_id"] in ln)
    cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
    # The table says what --json says (issue #26: "complete" beside "state": "completed").
    assert cells[1:3] == [rows[0]["state"], rows[0]["status"]] == ["completed", "complete"]


# --- check ----------------------------------------------------------------------------------


def test_check_passes_before_the_store_exists(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    settings, env = _setup(tmp_path, s3_server, s3_bucket)
    assert not settings.state_dir.exists()

    result = run_cli(["check"], env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "will be created in STATE_DIR" in result.stdout
    assert "FAIL" not in result.stdout
    assert not settings.state_dir.exists()  # check creates nothing there


def test_check_passes_with_redis(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, redis_server: RedisServer
) -> None:
    _, env = _setup(tmp_path, s3_server, s3_bucket, redis=redis_server)
    result = run_cli(["check"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   checkpoint store: redis" in result.stdout


def _assert_check_fails(result: subprocess.CompletedProcess[str], name: str, fix: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    failing = [i for i, line in enumerate(lines) if line.startswith(f"FAIL {name}")]
    assert len(failing) == 1, result.stdout
    fix_line = lines[failing[0] + 1]
    assert fix_line.strip().startswith("fix:"), result.stdout
    assert fix in fix_line, result.stdout
    # Only the broken dependency fails.
    assert sum(line.startswith("FAIL") for line in lines) == 1, result.stdout


@pytest.mark.parametrize(
    ("case", "name", "fix"),
    [
        ("s3_unreachable", "s3", "S3_ENDPOINT_URL"),
        ("redis_unreachable", "checkpoint store", "REDIS_URL"),
        ("bad_ffprobe", "ffprobe", "FFPROBE_PATH"),
        ("state_dir_is_a_file", "checkpoint store", "STATE_DIR"),
    ],
)
def test_check_names_what_is_wrong(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, case: str, name: str, fix: str
) -> None:
    _, env = _setup(tmp_path, s3_server, s3_bucket)
    if case == "s3_unreachable":
        env["S3_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    elif case == "redis_unreachable":
        env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    elif case == "bad_ffprobe":
        env["FFPROBE_PATH"] = str(tmp_path / "no-ffprobe-here")
    else:
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        env["STATE_DIR"] = str(blocker / "state")

    started = time.monotonic()
    result = run_cli(["check"], env, timeout=60)

    _assert_check_fails(result, name, fix)
    assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def locked_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """A SeaweedFS that knows two identities: an admin, and a writer who cannot create
    buckets."""
    data = tmp_path_factory.mktemp("seaweed-identities")
    config = data / "s3.json"
    config.write_text(json.dumps({"identities": [
        {"name": "admin", "credentials": [{"accessKey": ADMIN_KEY, "secretKey": ADMIN_SECRET}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "writer",
         "credentials": [{"accessKey": WRITER_KEY, "secretKey": WRITER_SECRET}],
         "actions": ["Read", "Write", "List"]},
    ]}))  # fmt: skip
    server = SeaweedS3(data, s3_config=config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_check_wrong_credentials(tmp_path: Path, locked_s3: SeaweedS3) -> None:
    client = locked_s3.boto_client(ADMIN_KEY, ADMIN_SECRET)
    client.create_bucket(Bucket="creds-bucket")
    client.close()
    _, env = _setup(tmp_path, locked_s3, "creds-bucket")
    env.update(S3_ACCESS_KEY_ID=ADMIN_KEY, S3_SECRET_ACCESS_KEY="not-the-secret")

    result = run_cli(["check"], env)

    _assert_check_fails(result, "s3", "S3_SECRET_ACCESS_KEY")
    assert "access denied" in result.stdout
    assert "not-the-secret" not in result.stdout + result.stderr

    env["S3_SECRET_ACCESS_KEY"] = ADMIN_SECRET
    assert run_cli(["check"], env).returncode == 0


def test_run_missing_bucket_without_permission_to_create_it(
    tmp_path: Path, locked_s3: SeaweedS3
) -> None:
    _, env = _setup(tmp_path, locked_s3, "never-created-bucket")
    env.update(S3_ACCESS_KEY_ID=WRITER_KEY, S3_SECRET_ACCESS_KEY=WRITER_SECRET, PROM_PORT="0")

    result = run_cli(["run"], env, timeout=60)

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    # Logs are JSON lines on stderr; the error is the one line that is not.
    plain = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert len(plain) == 1, result.stderr
    assert "never-created-bucket" in plain[0]
    assert "cannot be created" in plain[0]
    assert WRITER_SECRET not in result.stderr


# --- configuration errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHUNK_SIZE_MB", "4"),
        ("CHUNK_SIZE_MB", "-1"),
        ("CHUNK_SIZE_MB", "ten"),
        ("LOG_LEVEL", "loud"),
        ("STREAM_TIMEOUT_SECONDS", "0"),
        ("PROM_PORT", "70000"),
        ("WATCH_DIR", "<a regular file>"),
        ("REDIS_URL", "http://x"),
        ("REDIS_URL", "http://:pw-CONFIGTEST-91@x"),
    ],
)
def test_bad_setting_is_one_line_and_exit_2(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, name: str, value: str
) -> None:
    _, env = _setup(tmp_path, s3_server, s3_bucket)
    if value == "<a regular file>":
        regular = tmp_path / "recording.mp4"
        regular.write_bytes(b"not a directory")
        value = str(regular)
    env[name] = value

    result = run_cli(["run"], env, timeout=30)

    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stderr
    assert "CONFIGTEST" not in result.stderr  # a secret setting's value is never echoed
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        (["--chunk-size-mb", "4"], "CHUNK_SIZE_MB"),
        (["--log-level", "loud"], "LOG_LEVEL"),
        (["--stream-timeout-seconds", "-3"], "STREAM_TIMEOUT_SECONDS"),
        (["--prom-port", "70000"], "PROM_PORT"),
    ],
)
def test_bad_flag_is_one_line_and_exit_2(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, flags: list[str], name: str
) -> None:
    _, env = _setup(tmp_path, s3_server, s3_bucket)  # the environment alone is valid
    result = run_cli(["run", *flags], env, timeout=30)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0]


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def test_flags_win_over_env_and_fractional_timeout_is_accepted(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    _, env = _setup(tmp_path, s3_server, s3_bucket)
    # Every one of these would be a configuration error if the flag did not win.
    env.update(CHUNK_SIZE_MB="4", PROM_PORT="70000", LOG_LEVEL="loud",
               STREAM_TIMEOUT_SECONDS="2.5")  # fmt: skip
    port = free_port()
    log = tmp_path / "run.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [cefmp4_bin(), "run", "--chunk-size-mb", "5", "--prom-port", str(port),
             "--log-level", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _http_status(f"http://127.0.0.1:{port}/healthz") != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # The same environment with its own STREAM_TIMEOUT_SECONDS=2.5 passes `check`.
    del env["CHUNK_SIZE_MB"], env["PROM_PORT"], env["LOG_LEVEL"]
    result = run_cli(["check"], env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("command", ["run", "upload", "status", "check"])
def test_help_of_every_subcommand_mentions_the_settings(command: str) -> None:
    result = run_cli([command, "--help"], {"PATH": "/usr/bin:/bin", "COLUMNS": "100"})
    assert result.returncode == 0, result.stderr
    for name in SPEC_SETTINGS:
        assert name in result.stdout, f"{name} missing from `cefmp4 {command} --help`"
    assert "--watch-dir" in result.stdout
    assert "--chunk-size-mb" in result.stdout


def test_top_level_help_lists_the_commands() -> None:
    result = run_cli(["--help"], {"PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    for command in ("run", "upload", "status", "check"):
        assert command in result.stdout


def test_status_lists_multipart_uploads_no_checkpoint_knows(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path
) -> None:
    """SPEC §2.13: `status` shows the uploads under the prefix that the sweeper would abort."""
    _settings, env = _setup(tmp_path, s3_server, s3_bucket)
    target = tmp_path / "known.mp4"
    shutil.copyfile(sample_mp4, target)
    assert run_cli(["upload", str(target)], env).returncode == 0
    client = s3_server.boto_client()
    stray = client.create_multipart_upload(
        Bucket=s3_bucket, Key="streams/20260101T000000Z-0123456789/lost.mp4"
    )["UploadId"]
    outside = client.create_multipart_upload(Bucket=s3_bucket, Key="other/x.mp4")["UploadId"]
    table = run_cli(["status"], env)
    assert table.returncode == 0, table.stderr
    assert stray in table.stdout
    assert "lost.mp4" in table.stdout
    assert outside not in table.stdout  # never outside S3_KEY_PREFIX
    # The JSON form stays a list of streams.
    rows = _status_json(env)
    assert [r["path"] for r in rows] == [str(target.resolve())]


def test_run_warns_once_when_it_creates_watch_dir(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str
) -> None:
    """A misspelled WATCH_DIR is created (SPEC: created if missing), and said so once."""
    _settings, env = _setup(tmp_path, s3_server, s3_bucket)
    typo = tmp_path / "inptu-videos"
    daemon = Daemon({**env, "WATCH_DIR": str(typo)}, tmp_path / "run.log")
    with daemon:
        daemon.start()
        assert typo.is_dir()
        created = [e for e in daemon.events() if e.get("event") == "watch_dir_created"]
        assert [(e["level"], e["path"]) for e in created] == [("warning", str(typo))]
        assert daemon.stop() == 0
    # An existing WATCH_DIR: nothing to say.
    again = Daemon({**env, "WATCH_DIR": str(typo)}, tmp_path / "again.log")
    with again:
        again.start()
        assert not [e for e in again.events() if e.get("event") == "watch_dir_created"]
        assert again.stop() == 0
