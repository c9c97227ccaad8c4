"""``cefmp4 check`` masks whole secrets only (review #9): with the run-local keys
(``local`` / ``localsecret``) it printed ``http://***host:…`` and ``.***/state``. No server
is needed: the S3 line fails on a closed port and still names the endpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.proc import free_port, run_cli

pytestmark = pytest.mark.timeout(120)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "S3_", "REDIS_", "NOTIFY_"))}  # fmt: skip
    watch = tmp_path / "watch"
    watch.mkdir(exist_ok=True)
    env.update(WATCH_DIR=str(watch), STATE_DIR=str(tmp_path / ".local" / "state"),
               S3_BUCKET_NAME="bucket", LOG_FORMAT="json", PROM_PORT="0", **extra)  # fmt: skip
    return env


def test_check_output_is_not_garbled_by_short_keys(tmp_path: Path) -> None:
    port = free_port()  # nothing listens: the S3 line fails, naming the endpoint
    env = _env(tmp_path, S3_ENDPOINT_URL=f"http://localhost:{port}",
               S3_ACCESS_KEY_ID="local", S3_SECRET_ACCESS_KEY="localsecret")  # fmt: skip
    result = run_cli(["check"], env, timeout=90)
    out = result.stdout + result.stderr
    assert "Traceback" not in out
    assert f"http://localhost:{port}" in out
    assert ".local/state" in out
    assert "***" not in out  # nothing here is a secret
    assert "localsecret" not in out


def test_check_still_masks_a_secret_it_prints(tmp_path: Path) -> None:
    port = free_port()
    env = _env(tmp_path, S3_ENDPOINT_URL=f"http://user:endpoint-pw-5e9@localhost:{port}",
               S3_ACCESS_KEY_ID="local", S3_SECRET_ACCESS_KEY="localsecret")  # fmt: skip
    result = run_cli(["check"], env, timeout=90)
    out = result.stdout + result.stderr
    assert "endpoint-pw-5e9" not in out
    assert f"http://user:***@localhost:{port}" in out
