"""Uplink control (issue 22, SPEC §2.21), measured on a private SeaweedFS through a proxy
that notes every byte cefmp4 sends with the moment it arrived (tests/support/rateproxy.py):

1. **accuracy** - `cefmp4 run` over a backlog of 1 or 20 files with UPLOAD_BWLIMIT at 1, 4
   and 16 MiB/s: bytes that arrived in the `--window` seconds from the first body byte, over
   the limit times the window (goal 0.95-1.02), and the fullest 10 s window over the limit's
   10 s (SPEC: within ± one part).
2. **lag** - a live recording at 4 Mbit/s (500,000 B/s, 10 MiB parts: a part every 21 s)
   while a `--backlog-gib` backlog drains under 4 MiB/s. Part lag: the writer writes a
   part's last byte -> the daemon's `part_uploaded` line for it. Recording lag, sampled
   every 0.5 s: the age of the oldest byte the writer wrote that is not in S3 yet (what
   `oldest_pending_age_seconds` says). Goal: p95 <= one part's fill time + 2 s.
3. **cpu** - `cefmp4 upload` of one `--cpu-mib` file, CPU-s (wait4 rusage) per GiB with no
   UPLOAD_BWLIMIT, with `off` (a timetable whose entry now is off: lanes, no pacing), with
   10G (every byte through the pacer, a limit far above the link: what pacing itself
   costs; goal <= 2 %) and with 100M (a limit that binds on this box: the upload takes
   longer); `--cpu-runs` each, interleaved.

    .venv/bin/python -m bench.uplink [--parts accuracy,lag,cpu] [--window 60] \\
        [--backlog-gib 2] [--cpu-mib 1024] [--cpu-runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tests.support.rateproxy import RateProxy

from bench.procs import Daemon, run_measured
from bench.s3util import client, delete_prefix
from bench.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, tool

MIB = 1 << 20
PART_MIB = 10
PREFIX = "streams/"


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.seaweed = Seaweed(work / "weed")
        self.proxy: RateProxy | None = None
        self.runs = 0
        self._last: tuple[str, Path, Path] | None = None

    def __enter__(self) -> Bench:
        self.seaweed.start()
        up = urlsplit(self.seaweed.endpoint_url)
        assert up.hostname is not None
        assert up.port is not None
        self.proxy = RateProxy(up.hostname, up.port).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop()
        if self.proxy is not None:
            self.proxy.stop()
        self.seaweed.stop()

    def fresh(self, name: str, **extra: str) -> tuple[dict[str, str], Path]:
        """A new bucket, watch dir and state dir; the environment of cefmp4 for them. The
        previous run's are dropped first: a gigabyte a run fills a disk fast."""
        assert self.proxy is not None
        self.drop()
        self.runs += 1
        bucket = f"uplink-{self.runs}-{os.getpid()}"
        s3 = client(self.seaweed.endpoint_url)
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="warm", Body=b"x")  # volumes allocated now, untimed
        s3.delete_object(Bucket=bucket, Key="warm")
        watch = self.work / f"watch-{name}-{self.runs}"
        watch.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_", "UPLOAD_"))}
        env.update({
            "S3_ENDPOINT_URL": self.proxy.endpoint_url, "S3_ACCESS_KEY_ID": ACCESS_KEY,
            "S3_SECRET_ACCESS_KEY": SECRET_KEY, "S3_REGION_NAME": "us-east-1",
            "S3_BUCKET_NAME": bucket, "S3_KEY_PREFIX": PREFIX, "WATCH_DIR": str(watch),
            "STATE_DIR": str(self.work / f"state-{name}-{self.runs}"),
            "CHUNK_SIZE_MB": str(PART_MIB), "UPLOAD_CONCURRENCY": "4", "MAX_INFLIGHT_MB": "64",
            "STREAM_TIMEOUT_SECONDS": "5", "PROM_PORT": "0", "LOG_FORMAT": "json",
            "RESCAN_INTERVAL_SECONDS": "0",
        })
        env.update(extra)
        self._last = (bucket, watch, Path(env["STATE_DIR"]))
        return env, watch

    def drop(self) -> None:
        """Delete the last run's bucket (SeaweedFS frees its volumes with it) and files."""
        if self._last is None:
            return
        bucket, watch, state = self._last
        self._last = None
        s3 = client(self.seaweed.endpoint_url)
        with contextlib.suppress(Exception):
            for upload in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"],
                                          UploadId=upload["UploadId"])
        delete_prefix(s3, bucket)
        with contextlib.suppress(Exception):
            s3.delete_bucket(Bucket=bucket)
        shutil.rmtree(watch, ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)


def backlog_files(watch: Path, count: int, total: int, *, hours_old: float = 1.0) -> None:
    """``count`` finished files of ``total`` bytes in all (random, not compressible)."""
    block = os.urandom(4 * MIB)
    size = total // count
    then = time.time() - hours_old * 3600
    for i in range(count):
        path = watch / f"old-{i:03d}.mp4"
        with path.open("wb") as f:
            left = size
            while left > 0:
                f.write(block[: min(left, len(block))])
                left -= len(block)
        os.utime(path, (then - i, then - i))


# --- 1. accuracy --------------------------------------------------------------------------------


def accuracy(b: Bench, limit_mib: int, streams: int, window: float) -> dict[str, float]:
    assert b.proxy is not None
    env, watch = b.fresh(f"acc{limit_mib}x{streams}", UPLOAD_BWLIMIT=f"{limit_mib}M")
    total = int(limit_mib * MIB * (window + 15) * 1.1)
    backlog_files(watch, streams, total)
    t0 = time.monotonic()
    daemon = Daemon(tool("cefmp4"), env, b.work, b.work / f"acc-{limit_mib}-{streams}.log")
    try:
        daemon.wait_event("ready", 60)
        deadline = time.monotonic() + window + 60
        while time.monotonic() < deadline:
            arrivals = [a for a in b.proxy.arrivals() if a[0] >= t0 and a[1] > 4096]
            if arrivals and time.monotonic() > arrivals[0][0] + window + 1:
                break
            time.sleep(0.5)
        first = next(t for t, n in b.proxy.arrivals() if t >= t0 and n > 4096)
        sent = b.proxy.total(first, first + window)
        fullest = b.proxy.max_window(10.0, first, first + window)
        cpu = daemon.cpu_s()
    finally:
        daemon.stop()
    limit = limit_mib * MIB
    return {"achieved_over_limit": sent / (limit * window),
            "fullest_10s_over_limit": fullest / (limit * 10), "cpu_pct": 100 * cpu / window}


# --- 2. lag -----------------------------------------------------------------------------------


class Writer(threading.Thread):
    """Appends at ``rate`` bytes/s (a write every 50 ms) and notes when the file reached each
    size: ``marks`` (monotonic, size)."""

    def __init__(self, path: Path, rate: float, seconds: float) -> None:
        super().__init__(name="live-writer", daemon=True)
        self.path, self.rate, self.seconds = path, rate, seconds
        self.marks: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        block = os.urandom(1 << 20)
        started, written = time.monotonic(), 0
        with self.path.open("wb") as f:
            while not self.stop.is_set() and time.monotonic() - started < self.seconds:
                due = int(self.rate * (time.monotonic() - started))
                while written < due:
                    n = min(due - written, len(block))
                    f.write(block[:n])
                    written += n
                f.flush()
                self.marks.append((time.monotonic(), written))
                time.sleep(0.05)

    def written_at(self, offset: int) -> float:
        """When the byte at ``offset`` was written."""
        for t, size in self.marks:
            if size > offset:
                return t
        return self.marks[-1][0]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def lag(b: Bench, backlog_gib: float) -> dict[str, Any]:
    env, watch = b.fresh("lag", UPLOAD_BWLIMIT="4M")
    backlog_files(watch, 20, int(backlog_gib * 1024 * MIB))
    rate = 500_000.0  # 4 Mbit/s
    drain_s = backlog_gib * 1024 / 4
    daemon = Daemon(tool("cefmp4"), env, b.work, b.work / "lag.log")
    try:
        daemon.wait_event("ready", 60)
        writer = Writer(watch / "live.mp4", rate, drain_s)
        writer.start()
        writer.join()
        end = time.monotonic()
        time.sleep(3)
        events = list(daemon.events)
        done = sum(1 for _, e in events
                   if e.get("event") == "stream_completed" and "old-" in str(e.get("path")))
    finally:
        daemon.stop()
    part = PART_MIB * MIB
    arrived = {e["part_number"]: t for t, e in events
               if e.get("event") == "part_uploaded" and str(e.get("path", "")).endswith("live.mp4")}
    part_lags = [arrived[n] - writer.written_at(n * part - 1)
                 for n in sorted(arrived) if n * part <= writer.marks[-1][1]]
    # Recording lag: every 0.5 s, the age of the oldest byte written but not in a part.
    samples, t = [], writer.marks[0][0] + 2 * part / rate  # from the second part on
    while t < end:
        durable = 0
        while durable // part + 1 in arrived and arrived[durable // part + 1] <= t:
            durable += part
        written = max((s for m, s in writer.marks if m <= t), default=0)
        samples.append(t - writer.written_at(durable) if written > durable else 0.0)
        t += 0.5
    fill = part / rate
    return {
        "parts": len(part_lags), "backlog_files_done": done, "fill_s": fill,
        "part_lag_p50": percentile(part_lags, 0.5), "part_lag_p95": percentile(part_lags, 0.95),
        "part_lag_max": max(part_lags),
        "rec_lag_p50": percentile(samples, 0.5), "rec_lag_p95": percentile(samples, 0.95),
        "goal_p95": fill + 2, "window_s": end - writer.marks[0][0],
    }


# --- 3. cpu -------------------------------------------------------------------------------------


def cpu(b: Bench, mib: int, runs: int) -> dict[str, Any]:
    variants = {"none": {}, "off": {"UPLOAD_BWLIMIT": "00:00,off 23:59,off"},
                "10G": {"UPLOAD_BWLIMIT": "10G"}, "100M": {"UPLOAD_BWLIMIT": "100M"}}
    out: dict[str, list[float]] = {name: [] for name in variants}
    walls: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, extra in variants.items():
            env, watch = b.fresh(f"cpu-{name}", **extra)
            backlog_files(watch, 1, mib * MIB)
            source = next(watch.iterdir())
            result = run_measured([tool("cefmp4"), "upload", str(source)], env, b.work)
            if result.code != 0:
                raise RuntimeError(result.output[-2000:])
            out[name].append(result.cpu_s / (mib / 1024))
            walls[name].append(result.wall_s)
            source.unlink()
    med = {name: statistics.median(v) for name, v in out.items()}
    return {"cpu_s_per_gib": med, "wall_s": {n: statistics.median(v) for n, v in walls.items()},
            "all": out, "pacing_over_none_pct": 100 * (med["10G"] / med["none"] - 1),
            "binding_100M_over_none_pct": 100 * (med["100M"] / med["none"] - 1),
            "off_over_none_pct": 100 * (med["off"] / med["none"] - 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.uplink")
    parser.add_argument("--parts", default="accuracy,lag,cpu")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--limits", default="1,4,16")
    parser.add_argument("--streams", default="1,20")
    parser.add_argument("--backlog-gib", type=float, default=2.0)
    parser.add_argument("--cpu-mib", type=int, default=1024)
    parser.add_argument("--cpu-runs", type=int, default=5)
    parser.add_argument("--work-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="cefmp4-uplink-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with Bench(work) as b:
        if "accuracy" in parts:
            rows = []
            for limit in (int(x) for x in args.limits.split(",")):
                for streams in (int(x) for x in args.streams.split(",")):
                    r = accuracy(b, limit, streams, args.window)
                    rows.append({"limit_mib_s": limit, "streams": streams, **r})
                    print(f"accuracy {limit:>2} MiB/s {streams:>2} stream(s): achieved/limit "
                          f"{r['achieved_over_limit']:.3f} over {args.window:.0f} s, fullest "
                          f"10 s {r['fullest_10s_over_limit']:.3f}, daemon CPU {r['cpu_pct']:.0f}%",
                          flush=True)
            results["accuracy"] = rows
        if "lag" in parts:
            results["lag"] = lag(b, args.backlog_gib)
            print("lag", json.dumps(results["lag"]), flush=True)
        if "cpu" in parts:
            results["cpu"] = cpu(b, args.cpu_mib, args.cpu_runs)
            print("cpu", json.dumps(results["cpu"]), flush=True)
    out = Path(__file__).resolve().parent / "results" / f"uplink-{int(time.time())}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"args": vars(args) | {"work_dir": str(work)}, **results},
                              indent=2, default=str))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
