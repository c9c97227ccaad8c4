"""Operating ``cefmp4 run``: metrics, health endpoints, logs and signals, through the
installed console script against real SeaweedFS and redis-server."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.app import make_settings
from tests.support.proc import Daemon, settings_env
from tests.support.redis import RedisServer
from tests.support.seaweed import SeaweedS3

pytestmark = pytest.mark.timeout(180)

SPEC_METRICS = (
    "video_chunks_uploaded_total", "video_bytes_uploaded_total", "streams_completed_total",
    "streams_failed_total", "active_streams", "video_failed_operations_total",
    "video_stream_duration_seconds", "video_chunk_upload_seconds",
    "video_parts_reuploaded_total", "pending_bytes", "oldest_pending_age_seconds",
)  # fmt: skip

STREAM_EVENTS = (
    "stream_started", "part_uploaded", "stream_idle", "stream_completed", "metadata_written",
)  # fmt: skip


def _until(predicate: Callable[[], bool], *, timeout: float, what: str, daemon: Daemon) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert daemon.proc is not None
        assert daemon.proc.poll() is None, f"cefmp4 exited:\n{daemon.log_tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{daemon.log_tail()}"
        time.sleep(0.1)


def _has_event(daemon: Daemon, name: str) -> Callable[[], bool]:
    return lambda: any(e.get("event") == name for e in daemon.events())


def _samples(body: str) -> dict[str, float]:
    """``{sample name with labels: value}`` from a Prometheus text exposition."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def _families(body: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(body):
        # The parser strips a counter's _total; the SPEC names include it.
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


# --- metrics --------------------------------------------------------------------------------


def test_metrics_after_a_file_completes(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path
) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    name = "metrics-cam-7.mp4"
    with Daemon(settings_env(settings), tmp_path / "daemon.log") as daemon:
        daemon.start()
        status, body = daemon.http_get("/metrics")
        assert status == 200
        assert _samples(body)["active_streams"] == 0

        shutil.copyfile(sample_mp4, settings.watch_dir / name)
        _until(_has_event(daemon, "stream_completed"), timeout=60, what="completion",
               daemon=daemon)  # fmt: skip

        def settled() -> bool:
            values = _samples(daemon.http_get("/metrics")[1])
            return values["active_streams"] == 0 and values["streams_completed_total"] == 1

        _until(settled, timeout=10, what="active_streams 0", daemon=daemon)
        status, body = daemon.http_get("/metrics")
        assert daemon.stop() == 0

    assert status == 200
    [stream_id] = {e["stream_id"] for e in daemon.events() if e.get("event") == "stream_started"}
    client = s3_server.boto_client()
    try:
        [meta_key] = [
            obj["Key"]
            for obj in client.list_objects_v2(Bucket=s3_bucket)["Contents"]
            if obj["Key"].endswith(".metadata.json")
        ]
        doc = json.loads(client.get_object(Bucket=s3_bucket, Key=meta_key)["Body"].read())
    finally:
        client.close()
    size = sample_mp4.stat().st_size
    assert doc["total_size_bytes"] == size

    values = _samples(body)
    assert values["video_chunks_uploaded_total"] == len(doc["chunks"]) == 3
    assert values["video_bytes_uploaded_total"] == size
    assert values["streams_completed_total"] == 1
    assert values["streams_failed_total"] == 0
    assert values["active_streams"] == 0
    assert values["pending_bytes"] == 0
    assert values["video_parts_reuploaded_total"] == 0
    assert values["video_stream_duration_seconds_count"] == 1
    assert values["video_stream_duration_seconds_sum"] > 0
    assert values["video_chunk_upload_seconds_count"] == 3
    assert values["video_chunk_upload_seconds_sum"] > 0
    assert "video_failed_operations_total{operation=upload_part}" in values
    missing = set(SPEC_METRICS) - _families(body)
    assert not missing, f"metrics missing from /metrics: {sorted(missing)}"
    # No per-stream labels: neither the stream id nor the file name appears anywhere.
    assert stream_id not in body
    assert "metrics-cam-7" not in body
    assert str(settings.watch_dir) not in body


# --- health ---------------------------------------------------------------------------------


def test_readyz_follows_s3_while_healthz_stays_up(tmp_path: Path) -> None:
    s3 = SeaweedS3(tmp_path / "s3")
    s3.start()
    try:
        settings = make_settings(tmp_path=tmp_path, s3=s3, bucket="readyz-bucket")
        with Daemon(settings_env(settings), tmp_path / "daemon.log") as daemon:
            daemon.start()
            status, body = daemon.http_get("/readyz")
            assert status == 200, body
            assert json.loads(body)["checks"] == {"s3": "ok", "checkpoint_store": "ok"}

            s3.stop()
            stopped = time.monotonic()
            _until(lambda: daemon.http_get("/readyz")[0] == 503, timeout=10,
                   what="/readyz 503", daemon=daemon)  # fmt: skip
            assert time.monotonic() - stopped < 10
            status, body = daemon.http_get("/readyz")
            assert status == 503
            doc = json.loads(body)
            assert doc["checks"]["s3"].startswith("down")
            assert doc["checks"]["checkpoint_store"] == "ok"
            assert daemon.http_get("/healthz")[0] == 200
            time.sleep(1)
            assert daemon.proc is not None
            assert daemon.proc.poll() is None  # an S3 outage never ends the process

            s3.start()
            _until(lambda: daemon.http_get("/readyz")[0] == 200, timeout=30,
                   what="/readyz 200 after S3 is back", daemon=daemon)  # fmt: skip
            assert daemon.http_get("/healthz")[0] == 200
            assert daemon.stop() == 0
    finally:
        s3.stop()


# --- logs -----------------------------------------------------------------------------------


def _require_password(server: RedisServer, password: str) -> None:
    """Turn on AUTH on a running redis-server (CONFIG SET requirepass)."""
    command = [b"CONFIG", b"SET", b"requirepass", password.encode()]
    wire = b"*%d\r\n" % len(command) + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in command
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(wire)
        assert sock.recv(64).startswith(b"+OK")


def test_json_logs_carry_the_events_and_never_the_secrets(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sample_mp4: Path
) -> None:
    access_key = "AKIDLOGTESTZX81QP"
    secret_key = "s3cr3t-LOGTEST-7f0c2e9b41d6"
    redis_password = "r3dis-LOGTEST-pw-5a8e"
    with RedisServer(tmp_path / "redis") as redis:
        _require_password(redis, redis_password)
        settings = make_settings(
            tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket,
            redis_url=f"redis://:{redis_password}@127.0.0.1:{redis.port}/0",
            s3_access_key_id=access_key, s3_secret_access_key=secret_key,
            log_level="DEBUG", log_format="json",
        )  # fmt: skip
        with Daemon(settings_env(settings), tmp_path / "daemon.log") as daemon:
            daemon.start()
            shutil.copyfile(sample_mp4, settings.watch_dir / "logged.mp4")
            _until(_has_event(daemon, "stream_completed"), timeout=60, what="completion",
                   daemon=daemon)  # fmt: skip
            assert daemon.http_get("/readyz")[0] == 200  # Redis accepted the password
            assert daemon.stop() == 0

    text = (tmp_path / "daemon.log").read_text()
    for secret in (access_key, secret_key, redis_password):
        assert secret not in text
    events: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.strip():
            events.append(json.loads(line))  # every line is one JSON object
    names = [e.get("event") for e in events]
    for name in (*STREAM_EVENTS, "ready", "shutdown", "stopped"):
        assert name in names, f"no {name!r} event in {sorted(set(map(str, names)))}"
    path = str((settings.watch_dir / "logged.mp4").resolve())
    stream_ids = set()
    for event in events:
        assert "level" in event
        assert "timestamp" in event
        if event["event"] in STREAM_EVENTS:
            assert event["path"] == path
            stream_ids.add(event["stream_id"])
        if event["event"] == "part_uploaded":
            assert isinstance(event["part_number"], int)
    assert len(stream_ids) == 1
    # Parts go up concurrently, so they may finish in any order.
    assert sorted(e["part_number"] for e in events if e["event"] == "part_uploaded") == [1, 2, 3]


# --- signals --------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_on_an_idle_daemon_exits_0(
    tmp_path: Path, s3_server: SeaweedS3, s3_bucket: str, sig: signal.Signals
) -> None:
    settings = make_settings(tmp_path=tmp_path, s3=s3_server, bucket=s3_bucket)
    with Daemon(settings_env(settings), tmp_path / "daemon.log") as daemon:
        daemon.start()
        assert daemon.proc is not None
        sent = time.monotonic()
        daemon.signal(sig)
        code = daemon.proc.wait(15)
        elapsed = time.monotonic() - sent
    assert code == 0, daemon.log_tail()
    assert elapsed < 5, f"took {elapsed:.1f} s"
    names = [e.get("event") for e in daemon.events()]
    assert "signal_received" in names
    assert names[-1] == "stopped"
