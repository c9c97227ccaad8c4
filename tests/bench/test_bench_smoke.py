"""The bench runner's newer scenarios execute end to end in a tiny configuration.

No timing is asserted (the bench judges targets, tests never do): only that the runner
exits 0 and reports every metric its tables are built from.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(170)
def test_capacity_and_large_tree_run_in_a_tiny_configuration(tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = [
        sys.executable, "-m", "bench", "--runs", "1", "--scenarios", "capacity,large-tree",
        "--capacity-seconds", "12", "--capacity-counts", "2", "--tree-files", "40",
        "--tree-idle-seconds", "1", "--work-dir", str(tmp_path / "work"),
        "--results-dir", str(results),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "REDIS_"))}
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=160, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report,) = results.glob("bench-*.json")
    data = json.loads(report.read_text())["results"]
    cap = data["capacity"]["cefmp4"]
    assert cap["count"] == [2.0], cap  # two 0.5 MB/s recordings are kept up with
    assert cap["parts_missing"] == [0.0]
    assert cap["parts"][0] >= 1
    assert cap["writer_mb_s"][0] > 0
    assert cap["host_busy_pct"][0] > 0
    ceiling = data["capacity"]["seaweed+s5cmd"]  # the S3 server's own ceiling beside it
    assert ceiling["mb_s"][0] > 0
    assert ceiling["weed_cpu_s_per_100mb"][0] > 0
    for kind in ("sqlite", "redis"):
        tree = data["large-tree"][kind]
        assert not math.isnan(tree["ready_s"][0])
        assert tree["streams_started"] == [0.0]  # completed, unchanged files stay done
        assert tree["rss_mib"][0] > 0


@pytest.mark.timeout(120)
def test_writer_aware_runs_a_real_recorder_under_both_modes(tmp_path: Path) -> None:
    results = tmp_path / "results"
    args = [
        sys.executable, "-m", "bench", "--runs", "1", "--scenarios", "writer-aware",
        "--writer-seconds", "2", "--work-dir", str(tmp_path / "work"),
        "--results-dir", str(results),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "REDIS_"))}
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report,) = results.glob("bench-*.json")
    data = json.loads(report.read_text())["results"]["writer-aware"]
    for mode in ("on-close", "idle-only"):
        # The mode's own rule ended the stream (writer_closed / idle_timeout), one object,
        # byte-identical to the recording; the latency itself is the bench's to judge.
        assert data[mode]["expected_completed_by"] == [1.0], data
        assert data[mode]["objects"] == [1.0], data
        assert data[mode]["sha256_ok"] == [1.0], data
        assert not math.isnan(data[mode]["exit_to_meta_s"][0])


@pytest.mark.timeout(120)
def test_a_missing_recorder_is_one_line_and_exit_1(tmp_path: Path) -> None:
    venv_bin = str(Path(sys.executable).parent)  # weed, s5cmd, cefmp4; no ffmpeg
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "REDIS_"))}
    env["PATH"] = venv_bin
    args = [
        sys.executable, "-m", "bench", "--runs", "1", "--scenarios", "writer-aware",
        "--writer-seconds", "2", "--work-dir", str(tmp_path / "work"),
        "--results-dir", str(tmp_path / "results"),
    ]
    proc = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=110, check=False
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "bench: error: writer-aware: ffmpeg not found on PATH (apt-get install ffmpeg)"
    )
    assert list((tmp_path / "results").glob("bench-*.json"))  # what finished is kept
