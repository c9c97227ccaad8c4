"""Metrics: the SPEC §1.5 names are exposed exactly, with no label but ``operation``."""

from __future__ import annotations

import math
import re

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from cefmp4.runtime.metrics import OPERATIONS, Metrics

SPEC_NAMES = {
    "video_chunks_uploaded_total",
    "video_bytes_uploaded_total",
    "streams_completed_total",
    "streams_failed_total",
    "active_streams",
    "video_failed_operations_total",
    "video_stream_duration_seconds",
    "video_chunk_upload_seconds",
    "video_parts_reuploaded_total",
    "pending_bytes",
    "oldest_pending_age_seconds",
}


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, _ = metrics.render()
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_no_created_series() -> None:
    """prometheus_client's ``*_created`` companions are off (issue #26: 76 of them)."""
    metrics = Metrics()
    metrics.operation_failed("complete")
    body, _ = metrics.render()
    names = {line.split("{")[0].split(" ")[0] for line in body.decode().splitlines()
             if line and not line.startswith("#")}
    assert "video_failed_operations_total" in names
    assert [n for n in names if n.endswith("_created")] == []


def test_every_spec_name_is_exposed() -> None:
    metrics = Metrics()
    body, content_type = metrics.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    exposed = {m[1] for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE)}
    # Counters' TYPE lines carry the base name; samples carry _total.
    sample_names = {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                    if line and not line.startswith("#")}
    for name in SPEC_NAMES:
        assert name in sample_names or name in exposed, name
    assert "video_chunks_uploaded_total_total" not in text
    assert {"video_stream_duration_seconds_bucket",
            "video_chunk_upload_seconds_bucket"} <= sample_names
    assert set(metrics.names()) >= SPEC_NAMES


def test_only_operation_label() -> None:
    metrics = Metrics()
    metrics.chunks_uploaded.inc()
    metrics.chunk_upload_seconds.observe(0.3)
    metrics.operation_failed("upload_part")
    metrics.retried("checkpoint")
    metrics.stream_duration.observe(42)
    for (name, labels), _ in _samples(metrics).items():
        keys = {k for k, _ in labels} - {"le"}
        assert keys <= {"operation"}, (name, keys)
        if name.endswith("_bucket"):
            assert {k for k, _ in labels} == {"le"}


def test_helpers_and_fixed_operations() -> None:
    metrics = Metrics()
    for size, seconds in ((100, 0.2), (50, 0.1)):
        metrics.chunks_uploaded.inc()
        metrics.bytes_uploaded.inc(size)
        metrics.chunk_upload_seconds.observe(seconds)
    metrics.parts_reuploaded.inc()
    metrics.operation_failed("complete")
    metrics.operation_failed("stream-1234")  # never a new series
    samples = _samples(metrics)
    assert samples[("video_chunks_uploaded_total", ())] == 2
    assert samples[("video_bytes_uploaded_total", ())] == 150
    assert samples[("video_parts_reuploaded_total", ())] == 1
    assert samples[("video_chunk_upload_seconds_count", ())] == 2
    assert samples[("video_failed_operations_total", (("operation", "complete"),))] == 1
    assert samples[("video_failed_operations_total", (("operation", "other"),))] == 1
    ops = {dict(labels)["operation"] for (name, labels) in samples
           if name == "video_failed_operations_total"}
    assert ops == set(OPERATIONS)


def test_pending_source_is_read_at_scrape_time() -> None:
    metrics = Metrics()
    assert _samples(metrics)[("pending_bytes", ())] == 0
    state: dict[str, float] = {"bytes": 5, "age": 1.5}
    metrics.set_pending_source(lambda: (int(state["bytes"]), state["age"]))
    samples = _samples(metrics)
    assert samples[("pending_bytes", ())] == 5
    assert samples[("oldest_pending_age_seconds", ())] == 1.5
    state.update(bytes=7_000_000, age=12.0)
    samples = _samples(metrics)
    assert samples[("pending_bytes", ())] == 7_000_000
    assert samples[("oldest_pending_age_seconds", ())] == 12.0


def test_broken_pending_source_does_not_break_scrape() -> None:
    metrics = Metrics()

    def broken() -> tuple[int, float]:
        raise RuntimeError("boom")

    metrics.set_pending_source(broken)
    assert math.isnan(_samples(metrics)[("pending_bytes", ())])


def test_registry_is_injected_not_global() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.registry is registry
    assert registry.get_sample_value("active_streams") == 0
    # Two instances in one process do not clash, and the global registry stays clean.
    Metrics()
    Metrics()
    assert REGISTRY.get_sample_value("video_chunks_uploaded_total") is None


@pytest.mark.parametrize("op", OPERATIONS)
def test_known_operations_kept(op: str) -> None:
    metrics = Metrics()
    metrics.operation_failed(op)
    assert metrics.registry.get_sample_value(
        "video_failed_operations_total", {"operation": op}) == 1


def test_bytes_uploaded_value() -> None:
    metrics = Metrics()
    assert metrics.bytes_uploaded_value() == 0
    metrics.bytes_uploaded.inc(1234)
    metrics.bytes_uploaded.inc(6)
    assert metrics.bytes_uploaded_value() == 1240
