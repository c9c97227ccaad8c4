"""deploy/kubernetes/: valid against the Kubernetes JSON schemas (offline, strict), and the
properties an operator relies on: probes, non-root read-only containers, secrets as files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

# Dev dependencies: a missing one must fail the run, never skip these tests.
import kubernetes_validate
import pytest
import yaml

from cefmp4.config.settings import SECRET_FILES, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
MANIFESTS = sorted(K8S.glob("*.yaml"))
SETTINGS_VARS = {name.upper() for name in Settings.model_fields}
# Oldest supported Kubernetes minor and the newest the schemas know.
VERSIONS = ["1.28.0", kubernetes_validate.latest_version()]


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _all() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _all() if d["kind"] == kind
             and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} found"
    return found[0]


def _cefmp4_workloads() -> list[dict[str, Any]]:
    return [_kind("Deployment", "cefmp4"), _kind("DaemonSet", "cefmp4-node")]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_manifests_exist() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"deployment.yaml", "daemonset.yaml", "configmap.yaml",
            "secret.example.yaml", "redis.yaml"} <= names


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_against_the_schema(path: Path, version: str) -> None:
    docs = _documents(path)
    assert docs
    for doc in docs:
        # strict: an unknown or misspelt field is an error, not silently ignored.
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_schema_check_catches_a_misspelt_field() -> None:
    deployment = _kind("Deployment", "cefmp4")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    _container(broken)["readinessProbes"] = _container(broken).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[-1], strict=True)
    wrong_type = yaml.safe_load(yaml.safe_dump(deployment))
    wrong_type["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("workload", ["Deployment", "DaemonSet"])
def test_probes_on_healthz_and_readyz(workload: str) -> None:
    [doc] = [w for w in _cefmp4_workloads() if w["kind"] == workload]
    container = _container(doc)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 8000
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


@pytest.mark.parametrize("kind", ["Deployment", "DaemonSet", "StatefulSet"])
def test_containers_are_non_root_read_only_without_capabilities(kind: str) -> None:
    doc = _kind(kind)
    pod = doc["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    assert pod.get("hostNetwork") is not True
    for container in pod["containers"]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True
        assert ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"]["drop"] == ["ALL"]
        assert "add" not in ctx["capabilities"]
        assert ctx.get("privileged") is not True


def test_the_image_user_is_the_one_the_manifests_name() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    user = re.findall(r"^USER\s+(\d+)", dockerfile, re.MULTILINE)
    assert user, "the image's USER must be numeric for runAsNonRoot"
    for workload in _cefmp4_workloads():
        assert workload["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
            user[-1]
        )


@pytest.mark.parametrize("workload", ["Deployment", "DaemonSet"])
def test_secrets_are_files_never_values(workload: str) -> None:
    [doc] = [w for w in _cefmp4_workloads() if w["kind"] == workload]
    container = _container(doc)
    env = _env(container)
    for secret in SECRET_FILES:
        assert secret.upper() not in env, f"{secret.upper()} as an environment value"
    for entry in container.get("env", []):
        assert "secretKeyRef" not in entry.get("valueFrom", {}), entry["name"]
    assert "secretRef" not in str(container.get("envFrom", []))
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
    secret_mounts = {n: m for n, m in mounts.items() if "secret" in volumes[n]}
    assert secret_mounts, "no Secret mounted"
    keys = set(_kind("Secret", "cefmp4-secrets")["stringData"])
    file_vars = {name: e["value"] for name, e in env.items() if name.endswith("_FILE")}
    assert {"S3_ACCESS_KEY_ID_FILE", "S3_SECRET_ACCESS_KEY_FILE"} <= set(file_vars)
    for name, path in file_vars.items():
        mount = next(m for m in secret_mounts.values() if path.startswith(m["mountPath"] + "/"))
        assert mount["readOnly"] is True
        assert path.rsplit("/", 1)[1] in keys, f"{name}: {path} is no key of the Secret"
    for name in secret_mounts:
        assert volumes[name]["secret"]["defaultMode"] == 0o400


def test_every_variable_is_a_setting() -> None:
    configmap = _kind("ConfigMap", "cefmp4-config")
    unknown = set(configmap["data"]) - SETTINGS_VARS
    for workload in _cefmp4_workloads():
        env = _env(_container(workload))
        # A variable only there to be expanded into a setting ($(NODE_NAME)) is fine.
        expanded = {name for name in env
                    if any(f"$({name})" in str(e.get("value", "")) for e in env.values())}
        unknown |= set(env) - SETTINGS_VARS - expanded
    assert not unknown, f"not Settings: {sorted(unknown)}"


def test_shutdown_grace_fits_in_the_termination_grace_period() -> None:
    grace = float(_kind("ConfigMap", "cefmp4-config")["data"]["SHUTDOWN_GRACE_SECONDS"])
    for workload in _cefmp4_workloads():
        assert workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 5


def test_deployment_scales_out_on_a_read_write_many_volume_with_redis() -> None:
    deployment = _kind("Deployment", "cefmp4")
    assert deployment["spec"]["replicas"] > 1
    env = _env(_container(deployment))
    assert "REDIS_URL_FILE" in env  # several instances need the shared store
    assert env["WATCH_FORCE_POLLING"]["value"] == "true"
    assert env["INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    claim = volumes["recordings"]["persistentVolumeClaim"]["claimName"]
    pvc = _kind("PersistentVolumeClaim", claim)
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    mount = next(m for m in _container(deployment)["volumeMounts"] if m["name"] == "recordings")
    assert mount["mountPath"] == env["WATCH_DIR"]["value"]
    redis_url = _kind("Secret", "cefmp4-secrets")["stringData"]["redis_url"]
    service = _kind("Service", "cefmp4-redis")
    assert f"@{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/" in redis_url


def test_daemonset_watches_a_host_path_with_its_own_store() -> None:
    daemonset = _kind("DaemonSet", "cefmp4-node")
    container = _container(daemonset)
    env = _env(container)
    assert "REDIS_URL_FILE" not in env  # embedded SQLite, one per node
    volumes = {v["name"]: v for v in daemonset["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert "hostPath" in volumes["recordings"]
    assert mounts["recordings"] == env["WATCH_DIR"]["value"]
    assert "hostPath" in volumes["state"]  # checkpoints survive the pod
    assert mounts["state"] == env["STATE_DIR"]["value"]


def test_daemonset_nodes_never_share_key_space() -> None:
    """SPEC §2.19: siblings with separate stores must not take each other's uploads for
    orphans; a key segment per node keeps them apart (the age rule is the second guard)."""
    names = [e["name"] for e in _container(_kind("DaemonSet", "cefmp4-node"))["env"]]
    env = _env(_container(_kind("DaemonSet", "cefmp4-node")))
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    prefix = env["S3_KEY_PREFIX"]["value"]
    assert prefix.startswith("streams/")
    assert "$(NODE_NAME)" in prefix
    assert prefix.endswith("/")
    # Kubernetes expands $(VAR) only from variables defined before it.
    assert names.index("NODE_NAME") < names.index("S3_KEY_PREFIX")


def test_redis_password_is_on_no_command_line() -> None:
    redis = _kind("StatefulSet", "cefmp4-redis")
    [container] = redis["spec"]["template"]["spec"]["containers"]
    assert "requirepass" not in " ".join(container.get("args", []) + container.get("command", []))
    assert container["args"] == ["redis-server", "/etc/redis/redis.conf"]
    assert re.fullmatch(r"redis:\d+\.\d+\.\d+-alpine", container["image"])
