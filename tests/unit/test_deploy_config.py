"""Deployment files agree with the code: Settings, example.env, compose, Dockerfile.

Monitoring (alerts, dashboard): tests/unit/test_monitoring.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cefmp4.config.settings import Settings

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
    assert env["REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")
    assert env["REDIS_URL"].endswith("@redis:6379/0")


def test_compose_is_health_gated_and_keeps_uploads() -> None:
    services = _compose()["services"]
    assert set(services) >= {"app", "minio", "minio-init", "redis"}
    depends = services["app"]["depends_on"]
    for dep in ("minio", "redis"):
        assert depends[dep]["condition"] == "service_healthy"
        assert "healthcheck" in services[dep]
    assert depends["minio-init"]["condition"] == "service_completed_successfully"
    assert services["minio"]["environment"]["MINIO_API_STALE_UPLOADS_EXPIRY"] == "168h"
    assert "appendonly yes" in _redis_command(services["redis"])


def _redis_command(service: dict[str, Any]) -> str:
    command = service["command"]
    return "\n".join(command) if isinstance(command, list) else str(command)


# Values for the mandatory passwords, so `docker-compose config` can render the file.
COMPOSE_SECRETS = {
    "MINIO_ROOT_PASSWORD": "root-pw-for-the-test",
    "CEFMP4_S3_SECRET_KEY": "app-secret-for-the-test",
    "REDIS_PASSWORD": "redis-pw-for-the-test",
}


def _docker_compose(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip("docker-compose binary not installed (CI installs it)")
    clean = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    # An empty --env-file: a developer's own .env (with real passwords) must not count.
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return subprocess.run(
        [binary, "--env-file", str(empty), "config"], cwd=ROOT, capture_output=True,
        text=True, timeout=60, check=False, env={**clean, **env},
    )


def test_docker_compose_config_is_valid(tmp_path: Path) -> None:
    result = _docker_compose(COMPOSE_SECRETS, tmp_path)
    assert result.returncode == 0, result.stderr
    yaml = pytest.importorskip("yaml")
    rendered = yaml.safe_load(result.stdout)
    app_env = rendered["services"]["app"]["environment"]
    assert app_env["REDIS_URL"] == "redis://:redis-pw-for-the-test@redis:6379/0"
    assert app_env["S3_SECRET_ACCESS_KEY"] == "app-secret-for-the-test"


@pytest.mark.parametrize("missing", sorted(COMPOSE_SECRETS))
def test_compose_refuses_to_start_without_each_password(missing: str, tmp_path: Path) -> None:
    env = {k: v for k, v in COMPOSE_SECRETS.items() if k != missing}
    result = _docker_compose(env, tmp_path)
    assert result.returncode != 0
    assert f"set {missing} in .env" in result.stderr


def test_no_default_password_anywhere() -> None:
    compose_text = (ROOT / "docker-compose.yml").read_text()
    for text in (compose_text, (ROOT / "example.env").read_text()):
        assert "minioadmin" not in text
    for name, service in _compose()["services"].items():
        for var, value in _environment(service).items():
            if any(word in var for word in ("PASSWORD", "SECRET")):
                assert value.startswith("${"), f"{name}: {var}={value}"
                assert ":?" in value, f"{name}: {var}={value} has a default"
    # Every password-like variable compose interpolates is mandatory.
    secret_var = re.compile(r"\$\{([A-Z0-9_]*(?:PASSWORD|SECRET)[A-Z0-9_]*)([^}]*)\}")
    for match in secret_var.finditer(compose_text):
        assert match[2].startswith(":?"), f"{match[1]} has a default: {match[0]}"


def test_minio_and_redis_are_not_published_beyond_loopback() -> None:
    compose = _compose()
    services = compose["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            text = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port}"
            assert text.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    published = {str(p).rsplit(":", 1)[-1] for p in services["minio"].get("ports", [])}
    assert "9000" not in published, "MinIO's S3 API is published"
    assert not services["redis"].get("ports"), "Redis is published"
    assert compose["networks"]["backend"]["internal"] is True
    assert services["redis"]["networks"] == ["backend"]
    assert "backend" in services["minio"]["networks"]
    assert "backend" in services["app"]["networks"]


def test_images_are_pinned_to_versions() -> None:
    for name, service in _compose()["services"].items():
        image = service["image"]
        repo, sep, tag = image.rpartition(":")
        assert sep, f"{name}: {image} has no tag"
        assert repo, name
        assert tag != "latest", f"{name}: {image}"
        assert re.search(r"\d", tag), f"{name}: {image} is not a version"
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.MULTILINE)
    assert base is not None
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base[1]), base[1]


def test_every_container_is_hardened() -> None:
    for name, service in _compose()["services"].items():
        assert service.get("cap_drop") == ["ALL"], name
        assert service.get("read_only") is True, name
        assert "no-new-privileges:true" in service.get("security_opt", []), name
        # A read-only root needs somewhere to write temporary files.
        assert "/tmp" in service.get("tmpfs", []), name


def test_app_uses_the_least_privilege_user_not_root() -> None:
    services = _compose()["services"]
    app, init = _environment(services["app"]), _environment(services["minio-init"])
    root_user = _environment(services["minio"])["MINIO_ROOT_USER"]
    assert app["S3_ACCESS_KEY_ID"] == init["APP_ACCESS_KEY"] != root_user
    assert app["S3_SECRET_ACCESS_KEY"] == init["APP_SECRET_KEY"]
    assert "MINIO_ROOT_PASSWORD" not in app["S3_SECRET_ACCESS_KEY"]
    assert app["S3_BUCKET_NAME"] == init["S3_BUCKET_NAME"]
    assert app["S3_KEY_PREFIX"] == init["S3_KEY_PREFIX"]


FAKE_MC = """#!/bin/sh
# Records each call; keeps a copy of every policy file it is given.
printf '%s\\n' "$*" >> "$MC_LOG"
printf '%s\\n' "$MC_HOST_root" > "$MC_OUT/mc_host"
if [ "$1 $2 $3" = "admin policy create" ]; then cp "$6" "$MC_OUT/policy-$5.json"; fi
"""


def test_minio_init_creates_a_user_limited_to_the_bucket_and_prefix(tmp_path: Path) -> None:
    """Run the init script with a recording `mc`: the policy it creates, the calls it makes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mc").write_text(FAKE_MC)
    (bin_dir / "mc").chmod(0o755)
    log = tmp_path / "mc.log"
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin", "MC_LOG": str(log), "MC_OUT": str(tmp_path),
        "TMPDIR": str(tmp_path), "MINIO_URL": "http://minio:9000",
        "MINIO_ROOT_USER": "admin", "MINIO_ROOT_PASSWORD": "root-secret-0123",
        "APP_ACCESS_KEY": "cefmp4", "APP_SECRET_KEY": "app-secret-4567",
        "S3_BUCKET_NAME": "cams", "S3_KEY_PREFIX": "site-a/",
    }
    script = ROOT / "deploy" / "compose" / "minio-init.sh"
    result = subprocess.run(
        ["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == "mb --ignore-existing root/cams"
    assert "admin user add root cefmp4 app-secret-4567" in calls
    assert "admin policy attach root cefmp4-app --user cefmp4" in calls
    assert not any("root-secret-0123" in call for call in calls), "root password as argument"
    assert (tmp_path / "mc_host").read_text().strip() == "http://admin:root-secret-0123@minio:9000"

    policy = json.loads((tmp_path / "policy-cefmp4-app.json").read_text())
    statements = policy["Statement"]
    assert all(s["Effect"] == "Allow" for s in statements)
    resources = {r for s in statements for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::cams", "arn:aws:s3:::cams/site-a/*",
                         "arn:aws:s3:::cams/site-a/.cefmp4/*"}
    for statement in statements:
        actions = set(statement["Action"])
        assert not any("*" in a or "Create" in a for a in actions), actions
        if statement["Resource"] == ["arn:aws:s3:::cams"]:
            assert actions <= {"s3:GetBucketLocation", "s3:ListBucket",
                               "s3:ListBucketMultipartUploads"}
        elif statement["Resource"] == ["arn:aws:s3:::cams/site-a/.cefmp4/*"]:
            # Salvage's own markers (SPEC §2.19): the only deletion, and never of footage.
            assert actions == {"s3:DeleteObject"}
        else:
            assert actions == {"s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload",
                               "s3:ListMultipartUploadParts"}


def test_minio_init_fails_without_its_settings(tmp_path: Path) -> None:
    script = ROOT / "deploy" / "compose" / "minio-init.sh"
    result = subprocess.run(
        ["/bin/sh", str(script)], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
        text=True, timeout=30, check=False,
    )
    assert result.returncode != 0
    assert "MINIO_URL" in result.stderr


def test_compose_redis_requires_its_password_and_hides_it(tmp_path: Path) -> None:
    """The compose Redis command, run with a local redis-server: auth required, password
    neither on the command line nor answered without it."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server not installed (CI installs it)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = _redis_command(_compose()["services"]["redis"]).replace("$$", "$")
    assert "dir /data" in command
    command = command.replace(
        "dir /data", f"dir {tmp_path}\nport {port}\nbind 127.0.0.1\nsave \"\""
    )
    password = "redis-pw-1234"
    proc = subprocess.Popen(
        ["/bin/sh", "-c", command], env={"PATH": os.environ["PATH"], "REDIS_PASSWORD": password},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        def ask(*args: str, auth: str = "") -> str:
            env = {"PATH": os.environ["PATH"]} | ({"REDISCLI_AUTH": auth} if auth else {})
            return subprocess.run(
                [cli, "-p", str(port), *args], env=env, capture_output=True, text=True,
                timeout=10, check=False,
            ).stdout.strip()

        deadline = time.monotonic() + 20
        while ask("ping", auth=password) != "PONG":
            assert proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)
        assert "NOAUTH" in ask("ping")
        assert ask("config", "get", "appendonly", auth=password).splitlines() == [
            "appendonly", "yes"
        ]
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        assert cmdline.startswith("redis-server")  # exec'd: the shell is gone
        assert password not in cmdline
    finally:
        proc.terminate()
        proc.wait(10)


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


def test_every_setting_has_a_row_in_the_generated_settings_page() -> None:
    """docs/settings.md is generated from Settings (scripts/settings_doc.py); it must be
    current, with a row for every setting and for everything example.env sets."""
    page = (ROOT / "docs" / "settings.md").read_text()
    rows = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", page, flags=re.MULTILINE))
    assert rows >= SETTINGS_VARS, f"docs/settings.md lacks {sorted(SETTINGS_VARS - rows)}"
    assert set(_example_env()) <= rows, f"no row for {sorted(set(_example_env()) - rows)}"
    stale = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "settings_doc.py"), "--check"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert stale.returncode == 0, stale.stderr


def _requirement_names(specs: list[str]) -> set[str]:
    names = set()
    for spec in specs:
        name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0]
        names.add(name.lower().replace("_", "-"))
    return names


def test_the_lock_files_pin_every_declared_dependency() -> None:
    """A dependency added to pyproject.toml without `scripts/lock` would be missing from a
    fresh clone's venv (CI and the image install the lock files only)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _requirement_names(project["dependencies"])
    dev = _requirement_names(project["optional-dependencies"]["dev"])
    for lock, wanted in (("requirements.lock", runtime), ("requirements-dev.lock", runtime | dev)):
        pinned = {
            line.split("==", 1)[0].lower().replace("_", "-")
            for line in (ROOT / lock).read_text().splitlines()
            if "==" in line and not line.startswith((" ", "#"))
        }
        assert wanted <= pinned, f"{lock} lacks {sorted(wanted - pinned)}: run scripts/lock"
