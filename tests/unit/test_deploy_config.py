"""Deployment files agree with the code: Settings, example.env, compose, Dockerfile, dashboards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cefmp4.metrics import Metrics
from cefmp4.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_VARS = {name.upper() for name in Settings.model_fields}


def _example_env() -> dict[str, str]:
    values: dict[str, str] = {}
    for raw in (ROOT / "example.env").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"not NAME=value: {line!r}"
        assert name not in values, f"{name} twice in example.env"
        values[name] = value
    return values


def _compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(doc, dict)
    return doc


def _environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_setting_is_in_example_env() -> None:
    missing = SETTINGS_VARS - set(_example_env())
    assert not missing, f"add to example.env: {sorted(missing)}"


def test_every_example_env_variable_is_a_setting() -> None:
    unknown = set(_example_env()) - SETTINGS_VARS
    assert not unknown, f"not a Settings field: {sorted(unknown)}"


def test_every_example_env_variable_is_documented() -> None:
    lines = (ROOT / "example.env").read_text().splitlines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert i > 0
            assert lines[i - 1].startswith("#"), f"no comment above {line!r}"


def test_example_env_is_a_valid_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SETTINGS_VARS:
        monkeypatch.delenv(name, raising=False)
    settings = Settings(_env_file=ROOT / "example.env")
    assert settings.chunk_size_mb >= 5
    assert settings.prom_port == 8000


def test_compose_app_environment_names_settings() -> None:
    compose = _compose()
    app = compose["services"]["app"]
    unknown = set(_environment(app)) - SETTINGS_VARS
    assert not unknown, f"compose sets variables Settings does not know: {sorted(unknown)}"
    env_files = app["env_file"] if isinstance(app["env_file"], list) else [app["env_file"]]
    assert "example.env" in env_files
    env = _environment(app)
    assert env["S3_ENDPOINT_URL"] == "http://minio:9000"
    assert env["REDIS_URL"].startswith("redis://redis:6379")


def test_compose_is_health_gated_and_keeps_uploads() -> None:
    services = _compose()["services"]
    assert set(services) >= {"app", "minio", "redis"}
    depends = services["app"]["depends_on"]
    for dep in ("minio", "redis"):
        assert depends[dep]["condition"] == "service_healthy"
        assert "healthcheck" in services[dep]
    assert services["minio"]["environment"]["MINIO_API_STALE_UPLOADS_EXPIRY"] == "168h"
    command = services["redis"]["command"]
    command = " ".join(command) if isinstance(command, list) else command
    assert "--appendonly yes" in command


def test_docker_compose_config_is_valid() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose binary not installed (CI installs it)")
    result = subprocess.run(
        [binary, "config", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_dockerfile_runs_as_non_root_under_dumb_init_with_healthcheck() -> None:
    text = (ROOT / "Dockerfile").read_text()
    instructions = [line.split(None, 1) for line in text.splitlines()
                    if line.strip() and not line.startswith((" ", "#"))]
    keywords = [parts[0].upper() for parts in instructions]
    assert "HEALTHCHECK" in keywords
    assert "/healthz" in text
    users = [parts[1].strip() for parts in instructions if parts[0].upper() == "USER"]
    assert users, "no USER instruction"
    assert users[-1] not in ("root", "0")
    entrypoint = next(parts[1] for parts in instructions if parts[0].upper() == "ENTRYPOINT")
    assert json.loads(entrypoint)[0] == "dumb-init"
    assert "ffmpeg" in text  # ffprobe


def _metric_names_in(text: str) -> set[str]:
    known_suffix = re.compile(r"\b([a-z_]+(?:_total|_seconds(?:_bucket)?|_bytes|_streams))\b")
    return {m for m in known_suffix.findall(text)}


def test_dashboard_and_alerts_use_existing_metrics() -> None:
    exposed = set(Metrics().names())
    exposed |= {f"{n}_{s}" for n in exposed for s in ("bucket", "count", "sum")}
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    exprs = " ".join(
        t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])
    )
    alerts = (ROOT / "deploy" / "alerts.yml").read_text()
    for source, text in (("dashboard", exprs), ("alerts", alerts)):
        used = _metric_names_in(text) - {"humanizeDuration"}
        assert used, source
        assert used <= exposed, f"{source} uses unknown metrics: {sorted(used - exposed)}"
