"""``python -m bench``: start SeaweedFS, make media, run the scenarios, print the tables."""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import capacity, floor, largetree, profile, scenarios, startup, writeraware
from bench.report import Row, med, table
from bench.seaweed import Seaweed, tool

ALL = ("catchup", "drop", "live", "many", "idle", "startup", "capacity", "large-tree", "floor",
       "writer-aware")
RESULTS = Path(__file__).resolve().parent / "results"

Runs = dict[str, dict[str, list[float]]]  # tool -> metric -> one value per run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--runs", type=int, default=3, help="repetitions per scenario (issue: 5)")
    p.add_argument("--scenarios", default=",".join(ALL), help=f"comma list of {','.join(ALL)}")
    p.add_argument("--size-mb", type=int, default=500, help="catch-up/drop file size (MiB)")
    p.add_argument("--timeout", type=float, default=2.0, help="STREAM_TIMEOUT_SECONDS")
    p.add_argument("--live-seconds", type=float, default=60, help="writer duration, live/many")
    p.add_argument("--idle-seconds", type=float, default=60, help="idle CPU window")
    p.add_argument("--idle-files", type=int, default=1000, help="completed files for idle")
    p.add_argument("--many-sync", action="store_true",
                   help="many: start all 20 writers at once (part boundaries coincide)")
    p.add_argument("--capacity-seconds", type=float, default=40,
                   help="capacity: writing window per count (the issue's figure: 300)")
    p.add_argument("--capacity-long", action="store_true",
                   help="capacity: the 5-minute version (--capacity-seconds 300)")
    p.add_argument("--capacity-counts", default="50,100,150,200,250,300",
                   help="capacity: recordings per step, ascending; stops at the first failure")
    p.add_argument("--tree-files", type=int, default=100_000,
                   help="large-tree: completed files (and completed streams per store)")
    p.add_argument("--tree-idle-seconds", type=float, default=20,
                   help="large-tree: idle CPU window before the rescan")
    p.add_argument("--writer-seconds", type=float, default=10,
                   help="writer-aware: length of each real-time ffmpeg recording")
    p.add_argument("--writer-kind", choices=writeraware.KINDS, default="regular",
                   help="writer-aware: the recording (regular, +faststart, fragmented MP4, .mkv)")
    p.add_argument("--profile", action="store_true",
                   help="also py-spy one `cefmp4 upload` of the catch-up file")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where bench-*.json goes")
    p.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "cefmp4-bench",
                   help="media cache and per-run scratch (SeaweedFS data is removed at exit)")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(ALL)
    if unknown:
        p.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if not args.writer_seconds > 0:
        p.error("--writer-seconds: must be greater than 0")
    if args.capacity_long:
        args.capacity_seconds = 300.0
    try:
        args.capacity_counts = tuple(sorted(int(c) for c in args.capacity_counts.split(",")))
    except ValueError:
        p.error("--capacity-counts: a comma list of integers")
    return args


def find_aws() -> str:
    """awscli v1 from the venv; if it cannot run there, a private venv under bench/."""
    aws = shutil.which("aws", path=str(Path(sys.executable).parent))
    if aws and subprocess.run([aws, "--version"], capture_output=True, check=False).returncode == 0:
        return aws
    venv = Path(__file__).resolve().parent / ".venv-aws"
    if not (venv / "bin" / "aws").exists():
        print("awscli does not run in this venv; installing it into bench/.venv-aws")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "awscli"], check=True)
    return str(venv / "bin" / "aws")


def collect(runs: list[dict[str, dict[str, float]]]) -> Runs:
    out: Runs = {}
    for run in runs:
        for name, metrics in run.items():
            for metric, value in metrics.items():
                out.setdefault(name, {}).setdefault(metric, []).append(value)
    return out


def _v(r: Runs, name: str, metric: str) -> list[float]:
    return r.get(name, {}).get(metric, [])


def _check(values: list[float], limit: float, *, at_least: bool = False) -> bool | None:
    m = med(values)
    if math.isnan(m) or math.isnan(limit):
        return None
    return m >= limit if at_least else m <= limit


def best_peer(r: Runs, metric: str, *, higher: bool) -> list[float]:
    """Per run, the better of s5cmd and aws (the issue's "faster"/"cheaper" peer)."""
    pick = max if higher else min
    pairs = zip(_v(r, "s5cmd", metric), _v(r, "aws", metric), strict=False)
    return [pick(a, b) for a, b in pairs]


def _ratio_check(values: list[float], peer: list[float], limit: float, *, at_least: bool) -> bool:
    ratios = [v / p for v, p in zip(values, peer, strict=False) if p]
    return _check(ratios, limit, at_least=at_least) is True


def catchup_rows(r: Runs) -> list[Row]:
    best = {"mb_s": best_peer(r, "mb_s", higher=True)}
    for metric in ("cpu_s", "rss_mib", "wall_s", "sha256_ok"):
        best[metric] = best_peer(r, metric, higher=False)
    targets: dict[str, tuple[str, Callable[[list[float]], bool | None]]] = {
        "mb_s": ("≥ 1.0x best peer",
                 lambda v: _ratio_check(v, best["mb_s"], 1.0, at_least=True)),
        "cpu_s": ("≤ 1.1x best peer",
                  lambda v: _ratio_check(v, best["cpu_s"], 1.1, at_least=False)),
        "rss_mib": ("≤ 100 MiB", lambda v: _check(v, 100)),
        "sha256_ok": ("= 1", lambda v: _check(v, 1, at_least=True)),
    }
    rows = []
    for metric in ("mb_s", "cpu_s", "rss_mib", "wall_s", "sha256_ok"):
        for name in ("cefmp4", "s5cmd", "aws"):
            target, judge = targets.get(metric, ("", lambda _v: None))
            ours = name == "cefmp4"
            rows.append(Row(
                metric, name, _v(r, name, metric), best[metric],
                target if ours else "", judge(_v(r, name, metric)) if ours else None,
            ))
    return rows


def drop_rows(r: Runs) -> list[Row]:
    s5 = _v(r, "s5cmd", "upload_s")
    after = _v(r, "cefmp4", "after_timeout_s")
    return [
        Row("metadata after timeout (S3) s", "cefmp4", after, s5, "≤ 1.1x s5cmd + 1 s",
            _check(after, 1.1 * med(s5) + 1)),
        Row("metadata after timeout (log) s", "cefmp4", _v(r, "cefmp4", "log_after_timeout_s"),
            s5),
        Row("upload s", "s5cmd", s5),
        Row("daemon CPU-s", "cefmp4", _v(r, "cefmp4", "cpu_s")),
        Row("CPU-s per GiB ingested", "cefmp4", _v(r, "cefmp4", "cpu_s_per_gib"),
            _v(r, "s5cmd", "cpu_s_per_gib"), "≤ 1.0x s5cmd",
            _ratio_check(_v(r, "cefmp4", "cpu_s_per_gib"), _v(r, "s5cmd", "cpu_s_per_gib"),
                         1.0, at_least=False)),
        Row("CPU-s per GiB", "s5cmd", _v(r, "s5cmd", "cpu_s_per_gib")),
        Row("daemon peak RSS MiB", "cefmp4", _v(r, "cefmp4", "rss_mib")),
    ]


def _grow_rows(r: Runs, limits: dict[str, tuple[str, float]]) -> list[Row]:
    rows = []
    for metric in ("lag_p50_s", "lag_p95_s", "lag_max_s", "meta_after_timeout_s", "cpu_pct",
                   "cpu_pct_window", "rss_mib", "parts", "parts_unlisted"):
        values = _v(r, "cefmp4", metric)
        target, limit = limits.get(metric, ("", math.nan))
        rows.append(Row(metric, "cefmp4", values, None, target,
                        _check(values, limit) if target else None))
    return rows


def live_rows(r: Runs) -> list[Row]:
    return _grow_rows(r, {
        "lag_p50_s": ("≤ 0.3 s", 0.3), "lag_p95_s": ("≤ 0.6 s", 0.6),
        "meta_after_timeout_s": ("≤ 1 s", 1.0), "parts_unlisted": ("= 0", 0),
    })


def many_rows(r: Runs) -> list[Row]:
    return _grow_rows(r, {
        "cpu_pct": ("≤ 15 %", 15), "rss_mib": ("≤ 150 MiB", 150), "lag_max_s": ("≤ 2 s", 2),
        "parts_unlisted": ("= 0", 0),
    })


def idle_rows(r: Runs, files: int) -> list[Row]:
    limits = {
        "ready_s": ("≤ 5 s", 5.0),
        "startup_requests": (f"≪ {files} (none per file)", files / 10),
        "idle_cpu_pct": ("≤ 0.5 %", 0.5),
        "streams_started": ("= 0", 0),
    }
    metrics = ["ready_s", "startup_requests", "idle_cpu_pct", "idle_requests", "startup_cpu_s",
               "rss_mib", "streams_started"]
    metrics += sorted(m for m in r.get("cefmp4", {}) if m.startswith("req_"))
    rows = []
    for metric in metrics:
        values = _v(r, "cefmp4", metric)
        target, limit = limits.get(metric, ("", math.nan))
        rows.append(Row(metric, "cefmp4", values, None, target,
                        _check(values, limit) if target else None))
    return rows


def startup_rows(r: Runs) -> list[Row]:
    rows = [
        Row("--help s", "cefmp4", _v(r, "cefmp4", "help_s")),
        Row("check s", "cefmp4", _v(r, "cefmp4", "check_s")),
        Row("python -c pass s", "floor", _v(r, "floor", "python_s")),
        Row("import aiobotocore+aiohttp s", "floor", _v(r, "floor", "s3_stack_import_s")),
    ]
    for metric, target in (("first_part_s", ("≤ 0.3 s", 0.3)), ("first_request_s", None),
                           ("cpu_s", None)):
        for name in ("cefmp4", "s5cmd", "aws"):
            ours = name == "cefmp4" and target is not None
            values = _v(r, name, metric)
            rows.append(Row(metric, name, values, None, target[0] if ours and target else "",
                            _check(values, target[1]) if ours and target else None))
    return rows


def capacity_rows(r: Runs) -> list[Row]:
    limits = {"count": ("≥ 200", 200.0)}
    rows = []
    for metric in ("count", "first_failing_count", "lag_p50_s", "lag_p95_s", "lag_max_s",
                   "lag_growth_s", "parts", "cpu_pct", "cpu_pct_per_stream", "rss_mib",
                   "weed_cpu_pct", "host_busy_pct", "writer_mb_s",
                   "writer_target_mb_s"):
        values = _v(r, "cefmp4", metric)
        target, limit = limits.get(metric, ("", math.nan))
        rows.append(Row(metric, "cefmp4", values, None, target,
                        _check(values, limit, at_least=True) if target else None))
    for metric in ("count", "lag_p95_s", "lag_growth_s", "cpu_pct", "weed_cpu_pct",
                   "host_busy_pct", "writer_mb_s", "writer_target_mb_s"):
        if _v(r, "first failing", metric):
            rows.append(Row(metric, "1st fail", _v(r, "first failing", metric)))
    for metric in ("mb_s", "cameras", "weed_cpu_s_per_100mb", "client_cpu_s_per_100mb"):
        rows.append(Row(metric, "weed+s5cmd", _v(r, "seaweed+s5cmd", metric)))
    return rows


def tree_rows(r: Runs, files: int) -> list[Row]:
    limits = {
        "ready_s": ("≤ 10 s", 10.0), "rss_mib": ("≤ 150 MiB", 150.0),
        "idle_cpu_pct": ("≤ 0.5 %", 0.5),
        "startup_requests": (f"≪ {files} (none per file)", max(10.0, files / 100)),
        "requests_after_ready": ("none per file", max(10.0, files / 100)),
        "streams_started": ("= 0", 0.0),
    }
    rows = []
    for kind in largetree.KINDS:
        for metric in ("ready_s", "rss_mib", "idle_cpu_pct", "rescan_s", "rescan_cpu_s",
                       "startup_requests", "requests_after_ready", "streams_started"):
            values = _v(r, kind, metric)
            target, limit = limits.get(metric, ("", math.nan))
            rows.append(Row(metric, kind, values, None, target,
                            _check(values, limit) if target else None))
    return rows


def writer_rows(r: Runs) -> list[Row]:
    idle = _v(r, "idle-only", "exit_to_meta_s")
    limit = writeraware.CLOSE_S + 0.5
    rows = [
        Row("exit → metadata in S3 s", "on-close", _v(r, "on-close", "exit_to_meta_s"), idle,
            f"p50 ≤ {limit:g} s", _check(_v(r, "on-close", "exit_to_meta_s"), limit)),
        Row("exit → metadata in S3 s", "idle-only", idle),
    ]
    for metric, target in (("exit_to_log_s", None), ("expected_completed_by", "= 1"),
                           ("objects", "= 1"), ("sha256_ok", "= 1")):
        for mode in writeraware.MODES:
            values = _v(r, mode, metric)
            rows.append(Row(metric, mode, values, None, target or "",
                            _check(values, 1, at_least=True) and _check(values, 1)
                            if target else None))
    return rows


def run_scenario(b: scenarios.Bench, name: str, prepared: dict[str, Any]) -> Runs:
    runs = []
    for i in range(b.runs):
        if name == "idle":
            if "idle" not in prepared:
                prepared["idle"] = scenarios.idle_setup(b)
            runs.append(scenarios.idle(b, i, prepared["idle"]))
        elif name == "large-tree":
            if "tree" not in prepared:
                prepared["tree"] = largetree.setup(b)
            runs.append(largetree.large_tree(b, i, prepared["tree"]))
        elif name == "startup":
            runs.append(startup.startup(b, i))
        elif name == "capacity":
            runs.append(capacity.capacity(b, i))
        elif name == "floor":
            runs.append(floor.floor(b, i))
        elif name == "writer-aware":
            runs.append(writeraware.writer_aware(b, i, b.writer_kind, b.writer_seconds))
        else:
            runs.append(getattr(scenarios, name)(b, i))
    return collect(runs)


def render(name: str, r: Runs, args: argparse.Namespace) -> str:
    n = f"{args.runs} run(s)"
    part = f"part {scenarios.PART_MIB} MiB, concurrency {scenarios.CONCURRENCY}"
    if name == "catchup":
        return table(f"1. catch-up: {args.size_mb} MiB file, {part}, {n}", catchup_rows(r),
                     "÷ best peer", "MB/s = 10^6 B per wall second of the whole child "
                     "(start-up and cefmp4's verify/probe/metadata included)")
    if name == "drop":
        return table(f"2. drop: {args.size_mb} MiB into `cefmp4 run`, timeout "
                     f"{args.timeout:g} s, {n}", drop_rows(r), "÷ s5cmd")
    if name == "live":
        return table(f"3. live: 4 MiB/s for {args.live_seconds:g} s, {n}", live_rows(r), "",
                     "lag: part's last byte written → listed by ListParts (50 ms polling)")
    if name == "many":
        start = "at once" if args.many_sync else "started 0.5 s apart"
        return table(f"4. many: 20 files x 1 MiB/s for {args.live_seconds:g} s, {start}, {n}",
                     many_rows(r), "", "cpu_pct: cefmp4 (+ffprobe) while all 20 grow; "
                     "cpu_pct_window: first to last write (includes early files' finalize)")
    if name == "startup":
        return table(f"6. start-up: `cefmp4 --help`, `check`, `upload` of "
                     f"{startup.FILE_MIB} MiB, {n}", startup_rows(r), "",
                     "first_part_s: spawn → first UploadPart request at the counting proxy "
                     "(server side); first_request_s: spawn → first S3 request")
    if name == "capacity":
        return table(f"7. capacity: recordings at 0.5 MB/s, {args.capacity_seconds:g} s per "
                     f"count, counts {','.join(map(str, args.capacity_counts))}, part "
                     f"{capacity.PART_MIB} MiB, {n}", capacity_rows(r), "",
                     "figures at the largest count with part lag p95 ≤ 2 s, no part missing "
                     "and no lag growth (2nd-half p95 - 1st-half p95 ≤ 0.5 s); cpu_pct of one "
                     "core, cefmp4 + ffprobe")
    if name == "large-tree":
        return table(f"8. large-tree: {args.tree_files} completed files and streams, "
                     f"{args.tree_idle_seconds:g} s idle, {n}", tree_rows(r, args.tree_files),
                     "", "requests by the counting proxy; rescan: the CPU burst of the first "
                     "periodic rescan (n/a: none seen)")
    if name == "writer-aware":
        w = writeraware
        return table(f"10. writer-aware: ffmpeg {args.writer_kind} recording at real time for "
                     f"{args.writer_seconds:g} s into `cefmp4 run`, {n}", writer_rows(r),
                     "÷ idle-only",
                     f"on-close: COMPLETE_ON_CLOSE_SECONDS={w.CLOSE_S:g}, STREAM_TIMEOUT_SECONDS="
                     f"{w.LONG_TIMEOUT_S:g}; idle-only: STREAM_TIMEOUT_SECONDS="
                     f"{w.IDLE_TIMEOUT_S:g}; median = p50, min-max shows the max; "
                     "exit: the recorder process has exited; S3 listing polled every 50 ms")
    if name == "floor":
        rows = [Row(m, name, _v(r, name, m)) for name in ("read", "sha256", "md5", "crc32c")
                for m in ("cpu_s", "mb_s")]
        return table(f"9. floor: one in-process pass over the {args.size_mb} MiB file "
                     "(4 MiB preadv blocks, page cache)", rows, "")
    return table(f"5. idle: {args.idle_files} completed files, {args.idle_seconds:g} s idle, "
                 f"{n}", idle_rows(r, args.idle_files), "",
                 "requests counted by a proxy in front of SeaweedFS; start-up = spawn → "
                 "ready + 0.5 s")


def environment() -> dict[str, Any]:
    def version(name: str, flag: str) -> str:
        # A peer that is not installed only matters to the scenarios that run it.
        try:
            out = subprocess.run(
                [tool(name), flag], capture_output=True, text=True, timeout=30, check=False
            )
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, RuntimeError, subprocess.SubprocessError):
            return "?"

    return {
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "s5cmd": version("s5cmd", "version"), "weed": version("weed", "version"),
        "cefmp4": version("cefmp4", "--version"),
    }


def precompile() -> None:
    """Byte-compile cefmp4 as ``pip install`` does. This machine sets
    PYTHONDONTWRITEBYTECODE=1, so an editable checkout compiles its ~90 modules again in
    every timed run (~70 ms and as many CPU-ms), which the peers, installed by pip, never pay."""
    spec = importlib.util.find_spec("cefmp4")
    for where in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(where, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    precompile()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=args.work_dir))
    aws = find_aws() if {"catchup", "startup"} & set(args.scenarios) else "aws"
    env = environment()  # before SeaweedFS starts: nothing here may leave it running
    seaweed = Seaweed(work / "seaweed")
    seaweed.start()
    print(f"SeaweedFS at {seaweed.endpoint_url}; scratch {work}")
    b = scenarios.Bench(
        work=work, seaweed=seaweed, size_mb=args.size_mb, runs=args.runs,
        timeout=args.timeout, live_seconds=args.live_seconds,
        idle_seconds=args.idle_seconds, idle_files=args.idle_files, aws=aws,
        media_dir=args.work_dir,  # media files are cached across invocations
        many_sync=args.many_sync, capacity_seconds=args.capacity_seconds,
        capacity_counts=args.capacity_counts, tree_files=args.tree_files,
        tree_idle_seconds=args.tree_idle_seconds, writer_seconds=args.writer_seconds,
        writer_kind=args.writer_kind,
    )
    results: dict[str, Runs] = {}
    tables: list[str] = []
    started = time.time()
    prepared: dict[str, Any] = {}
    current, failure = "", ""
    try:
        for current in args.scenarios:
            print(f"-- {current}")
            results[current] = run_scenario(b, current, prepared)
            tables.append(render(current, results[current], args))
            print(tables[-1] + "\n")
        if args.profile:
            current = "profile"
            results["profile"] = {"py-spy": {}}
            tables.append(profile.run(b, args.results_dir))
    except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as exc:
        # One line; the scenarios that finished are still printed and written below.
        failure = f"{current}: {exc}"
    finally:
        if "tree" in prepared:
            largetree.cleanup(prepared["tree"])
        scenarios.cleanup(b)
        seaweed.stop()
        shutil.rmtree(work, ignore_errors=True)
    print("\n\n".join(tables))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.localtime(started))}.json"
    out.write_text(json.dumps({
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "environment": env, "started": started, "finished": time.time(),
        "settings": {"CHUNK_SIZE_MB": scenarios.PART_MIB,
                     "UPLOAD_CONCURRENCY": scenarios.CONCURRENCY,
                     "MAX_INFLIGHT_MB": scenarios.INFLIGHT_MIB},
        "results": results, "tables": tables,
    }, indent=2, default=str))
    print(f"\nresults: {out}")
    if failure:
        print(f"bench: error: {failure}", file=sys.stderr)
        return 1
    return 0
