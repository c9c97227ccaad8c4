"""deploy/ monitoring checked by machines: promtool on the alert rules and their unit tests,
and every metric the alerts and the Grafana dashboard use is one cefmp4 exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cefmp4.runtime.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "alerts.yml"
ALERT_TESTS = DEPLOY / "alerts_test.yml"
DASHBOARD = DEPLOY / "grafana-dashboard.json"

# Metrics Prometheus itself makes for every target.
PROMETHEUS_OWN = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# PromQL words that are not metric names: functions, aggregations, keywords.
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "stddev", "topk", "bottomk", "quantile",
    "rate", "irate", "increase", "delta", "deriv", "histogram_quantile", "abs", "clamp_min",
    "clamp_max", "absent", "absent_over_time", "max_over_time", "min_over_time",
    "avg_over_time", "time", "vector", "scalar", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "bool", "offset",
}  # fmt: skip


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool not installed: apt-get install prometheus (.ci/run does)")
    return found


def _yaml() -> object:
    return pytest.importorskip("yaml")


def _alert_rules() -> list[dict[str, object]]:
    doc = _yaml().safe_load(ALERTS.read_text())  # type: ignore[attr-defined]
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _exported() -> set[str]:
    """Every sample name cefmp4's registry exposes, read from the registry itself."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{s}" for s in ("bucket", "count", "sum"))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (selectors, with or without braces)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables ($__rate_interval, $instance)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text))
    return {w for w in words if w not in PROMQL_WORDS and not re.fullmatch(r"e\d*", w)}


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    return exprs


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [_promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    result = subprocess.run(
        [_promtool(), "test", "rules", str(ALERT_TESTS)], capture_output=True, text=True,
        timeout=60, check=False, cwd=DEPLOY,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_unit_test() -> None:
    doc = _yaml().safe_load(ALERT_TESTS.read_text())  # type: ignore[attr-defined]
    assert doc["rule_files"] == ["alerts.yml"]
    firing: set[str] = set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            if case.get("exp_alerts"):
                firing.add(case["alertname"])
    alerts = {str(rule["alert"]) for rule in _alert_rules()}
    assert alerts, "no alerts in deploy/alerts.yml"
    assert alerts <= firing, f"alerts without a test that fires them: {sorted(alerts - firing)}"


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le) (rate(video_chunk_upload_seconds_bucket'
            '{job="cefmp4", instance=~"$instance"}[$__rate_interval]))) > 1e3 or up == 0')
    assert metric_names(expr) == {"video_chunk_upload_seconds_bucket", "up"}
    assert metric_names('sum(active_streams) / count(pending_bytes{x="y{"})') == {
        "active_streams", "pending_bytes"
    }


def test_alerts_use_only_exported_metrics() -> None:
    exported = _exported() | PROMETHEUS_OWN
    used: set[str] = set()
    for rule in _alert_rules():
        names = metric_names(str(rule["expr"]))
        assert names, f"{rule['alert']}: no metric in {rule['expr']!r}"
        used |= names
    assert used <= exported, f"alerts use unknown metrics: {sorted(used - exported)}"


def test_dashboard_uses_only_exported_metrics() -> None:
    exported = _exported() | PROMETHEUS_OWN
    used = set().union(*(metric_names(expr) for expr in _dashboard_exprs()))
    assert used <= exported, f"dashboard uses unknown metrics: {sorted(used - exported)}"
    # The SPEC's headline metrics are on the dashboard.
    assert {"active_streams", "pending_bytes", "oldest_pending_age_seconds"} <= used


def test_a_renamed_metric_would_be_caught() -> None:
    """The check is not vacuous: a typo'd name in an expression is reported."""
    exported = _exported()
    assert "video_bytes_uploaded_total" in exported
    assert metric_names("rate(video_byte_uploaded_total[5m])") - exported == {
        "video_byte_uploaded_total"
    }
