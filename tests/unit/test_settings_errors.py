"""Bad settings: one line naming the setting, exit 2, no traceback (#9.9), through the real
console script; and the validators behind it, in-process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cefmp4.config.settings import bucket_name_problem, load_settings, normalize_key_prefix
from cefmp4.runtime.errors import ConfigError

CEFMP4 = str(Path(sys.executable).with_name("cefmp4"))

# Nothing listens here: a run that got past configuration would only retry, never exit 2.
UNREACHABLE = "http://127.0.0.1:9"


def _env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3_", "REDIS_", "PROM_", "LEASE_", "CEFMP4"))}  # fmt: skip
    env.update(
        WATCH_DIR=str(tmp_path / "watch"), STATE_DIR=str(tmp_path / "state"),
        S3_ENDPOINT_URL=UNREACHABLE, S3_ACCESS_KEY_ID="test-key-id",
        S3_SECRET_ACCESS_KEY="test-secret-key",
        S3_REGION_NAME="us-east-1", PROM_PORT="0", LOG_FORMAT="json",
    )  # fmt: skip
    env.update(settings)
    return env


def _run(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CEFMP4, *(args or ("run",))], env=env, cwd=tmp_path, capture_output=True,
        text=True, errors="backslashreplace", timeout=30, check=False,
    )  # fmt: skip


def _assert_one_line(result: subprocess.CompletedProcess[str], name: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert name in lines[0], lines[0]
    assert lines[0].startswith("cefmp4: configuration error: ")
    return lines[0]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("S3_ENDPOINT_URL", "127.0.0.1:9000"),
        ("S3_ENDPOINT_URL", "ftp://host:21"),
        ("S3_ENDPOINT_URL", "http://host:port"),
        ("S3_ENDPOINT_URL", "http://[::1"),
        ("S3_ENDPOINT_URL", "http://user:SECRET-CONFIGTEST@host"),
        ("REDIS_URL", "redis://[::1"),
        ("REDIS_URL", "rediss://localhost:6380/0?ssl_cert_reqs=bogus"),
        ("REDIS_URL", "redis://localhost:notaport"),
        ("REDIS_URL", "redis://localhost/notadb"),
        ("REDIS_URL", "redis://localhost/0?socket_timeout=soon"),
        ("REDIS_URL", "redis://:pw-CONFIGTEST@[::1"),
        ("LEASE_TTL_SECONDS", "inf"),
        ("LEASE_TTL_SECONDS", "nan"),
        ("LEASE_TTL_SECONDS", "1e300"),
        ("STREAM_TIMEOUT_SECONDS", "inf"),
        ("STREAM_TIMEOUT_SECONDS", "nan"),
        ("POLL_INTERVAL_SECONDS", "-inf"),
        ("PROBE_TIMEOUT_SECONDS", "nan"),
        ("SHUTDOWN_GRACE_SECONDS", "inf"),
        ("ABORT_ORPHAN_UPLOADS_AFTER_HOURS", "nan"),
        ("RESCAN_INTERVAL_SECONDS", "-1"),
        ("RESCAN_INTERVAL_SECONDS", "inf"),
        ("RESCAN_INTERVAL_SECONDS", "often"),
        ("S3_KEY_TEMPLATE", "{relpath}"),
        ("S3_KEY_TEMPLATE", "/{stream_id}/{relpath}"),
        ("S3_KEY_TEMPLATE", "{stream_id}/../{relpath}"),
        ("S3_KEY_TEMPLATE", "{camera}/{stream_id}"),
        ("S3_KEY_TEMPLATE", "{started}/{stream_id}"),
        ("EVICT_KEEP_FREE", "0%"),
        ("EVICT_KEEP_FREE", "lots"),
        ("RPO_SECONDS", "0"),
        ("RPO_SECONDS", "-2"),
        ("RESCAN_INTERVAL_SECONDS", "0.001"),
        ("S3_BUCKET_NAME", "Bad_Bucket!"),
        ("S3_BUCKET_NAME", "ab"),
        ("S3_BUCKET_NAME", "-leading-hyphen"),
        ("S3_BUCKET_NAME", "two..dots"),
        ("S3_BUCKET_NAME", "192.168.5.4"),
        ("S3_BUCKET_NAME", "xn--reserved"),
        ("S3_REGION_NAME", "us east 1!"),
        ("S3_KEY_PREFIX", ""),
        ("S3_KEY_PREFIX", "/abs"),
        ("S3_KEY_PREFIX", "a//b"),
        ("S3_KEY_PREFIX", "a/../b"),
        ("S3_KEY_PREFIX_WHOLE_BUCKET", "perhaps"),
        ("PROM_HOST", "not a host!"),
        ("PROM_HOST", "::1::2"),
        ("PROM_PORT", "-1"),
        ("PROM_PORT", "http"),
        ("MAX_STREAMS", "0"),
        ("MAX_STREAMS", "1.5"),
        ("UPLOAD_CONCURRENCY", "many"),
        ("MAX_INFLIGHT_MB", "1"),
        ("MAX_PARTS", "10001"),
        ("CHUNK_SIZE_MB", "5121"),
        ("WATCH_FORCE_POLLING", "sometimes"),
        ("LOG_FORMAT", "xml"),
        ("S3_ACCESS_KEY_ID", "AKIA EXAMPLE"),
        ("S3_SECRET_ACCESS_KEY", "CONFIGTEST-secret\n"),
        ("S3_STORAGE_CLASS", "standard ia"),
        ("S3_KEY_PREFIX", "cam\tone/"),
        ("INSTANCE_ID", "x" * 300),
    ],
)
def test_bad_setting_is_one_line_exit_2(tmp_path: Path, name: str, value: str) -> None:
    line = _assert_one_line(_run(tmp_path, _env(tmp_path, **{name: value})), name)
    assert "CONFIGTEST" not in line  # credentials in a URL are never echoed


def test_a_value_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    env = {k.encode(): v.encode() for k, v in _env(tmp_path).items()}
    env[b"S3_KEY_PREFIX"] = b"streams\xff/"
    result = subprocess.run(
        [CEFMP4, "run"], env=env, cwd=tmp_path, capture_output=True, text=True,
        errors="backslashreplace", timeout=60, check=False,
    )  # fmt: skip
    _assert_one_line(result, "S3_KEY_PREFIX")


def test_a_nul_in_a_path_from_dotenv_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"STATE_DIR=state\x00dir\n")
    env = _env(tmp_path)
    del env["STATE_DIR"]
    _assert_one_line(_run(tmp_path, env), "STATE_DIR")


def test_a_dotenv_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"S3_BUCKET_NAME=caf\xe9\nCHUNK_SIZE_MB=10\n")
    _assert_one_line(_run(tmp_path, _env(tmp_path)), ".env")


@pytest.mark.parametrize("command", ["status", "check", "upload"])
def test_every_command_gives_the_same_line(tmp_path: Path, command: str) -> None:
    args = (command, str(tmp_path / "x.mp4")) if command == "upload" else (command,)
    env = _env(tmp_path, LEASE_TTL_SECONDS="inf")
    _assert_one_line(_run(tmp_path, env, *args), "LEASE_TTL_SECONDS")


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_prom_port_in_use_is_one_line(tmp_path: Path, host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as busy:
        try:
            busy.bind((host, 0))
        except OSError:
            pytest.fail(f"cannot bind {host} on this machine")
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "watch").mkdir()  # else `run` also warns that it created WATCH_DIR
        env = _env(tmp_path, PROM_PORT=str(port), PROM_HOST=host)
        line = _assert_one_line(_run(tmp_path, env), "PROM_PORT")
    assert "PROM_HOST" in line
    assert str(port) in line


# --- the validators, in-process -------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "normal"),
    [("streams", "streams/"), ("streams/", "streams/"), ("a/b", "a/b/"), ("", "")],
)
def test_the_prefix_is_a_path_segment(given: str, normal: str) -> None:
    assert normalize_key_prefix(given) == normal


def test_settings_normalize_the_prefix_and_allow_empty_only_when_told() -> None:
    assert load_settings(s3_key_prefix="streams").s3_key_prefix == "streams/"
    with pytest.raises(ConfigError) as err:
        load_settings(s3_key_prefix="")
    assert err.value.setting == "S3_KEY_PREFIX"
    whole = load_settings(s3_key_prefix="", s3_key_prefix_whole_bucket=True)
    assert whole.s3_key_prefix == ""


@pytest.mark.parametrize(
    "name", ["video-streams", "a.b.c", "abc", "x" * 63, "my-bucket-2026", "test-0123abcd"]
)
def test_good_bucket_names(name: str) -> None:
    assert bucket_name_problem(name) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", "127.0.0.1", "localhost", "fe80::1"])
def test_prom_host_accepts_addresses_and_names(host: str) -> None:
    assert load_settings(prom_host=host).prom_host == host.strip("[]")


def test_defaults_are_valid() -> None:
    settings = load_settings()
    assert settings.rescan_interval_seconds == 60
    assert settings.prom_host == "0.0.0.0"
    assert settings.s3_key_prefix == "streams/"
