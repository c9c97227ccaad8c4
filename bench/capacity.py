"""7. capacity: how many 0.5 MB/s recordings (a 4 Mbit/s camera) one `cefmp4 run` keeps up with.

Counts are tried in ascending order, each with a fresh daemon and bucket, for
``--capacity-seconds`` of writing; the first count that fails ends the ladder. A count
passes when every part written in the window was uploaded (``_SETTLE`` s of grace), part
lag p95 ≤ 2 s, and the lag does not grow: once every writer runs, p95 of the parts written
in the second half of the rest of the window is at most the first half's + 0.5 s. Part
lag comes from the daemon's own ``part_uploaded`` log lines (arrival time - time the
writer wrote the part's last byte); polling ListParts for hundreds of uploads would load
the server more than the uploads.
Writers start spread over one part's time, so part boundaries do not coincide.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import media, s3util
from bench.procs import proc_cpu_s, run_measured
from bench.report import pct
from bench.scenarios import MIB, Bench, CpuSampler
from bench.seaweed import tool

RATE = 500_000  # B/s per recording: 4 Mbit/s
PART_MIB = 5  # the S3 minimum: a part every ~10 s at 0.5 MB/s (RPO of one part)
TICK = 0.5  # a recorder's write every 0.5 s
_SETTLE = 4.0  # s after the last write for the last parts to arrive (> the lag limit)
LAG_P95_MAX = 2.0
UPLOAD_CONCURRENCY = 16
GROWTH_MAX = 0.5
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Written:
    """What the writer achieved: the bench's own limit shows here, not as cefmp4's lag."""

    t0: float
    bytes: int = 0
    late_max_s: float = 0.0  # furthest a tick started behind its schedule
    tick_p95_s: float = 0.0  # time one tick's writes to every file took


def _write(
    paths: list[Any], seconds: float, stagger: float, buf: bytes, marks: dict[str, dict[int, float]]
) -> Written:
    """Append at RATE to every file, each starting ``i * stagger`` s late."""
    part = PART_MIB * MIB
    handles = [p.open("wb", buffering=0) for p in paths]
    written = [0] * len(paths)
    out = Written(time.monotonic())
    ticks: list[float] = []
    k = 0
    try:
        while True:
            k += 1
            now = time.monotonic()
            elapsed = now - out.t0
            if elapsed >= seconds:
                return out
            out.late_max_s = max(out.late_max_s, elapsed - (k - 1) * TICK)
            for i, fh in enumerate(handles):
                mine = elapsed - i * stagger
                if mine <= 0:
                    continue
                target = int(RATE * mine)
                while written[i] < target:
                    pos = written[i] % len(buf)
                    piece = buf[pos : pos + min(target - written[i], len(buf) - pos)]
                    written[i] += fh.write(piece) or 0
                done = marks.setdefault(paths[i].name, {})
                for n in range(len(done) + 1, written[i] // part + 1):
                    done[n] = time.monotonic()
            ticks.append(time.monotonic() - now)
            time.sleep(max(0.0, out.t0 + k * TICK - time.monotonic()))
    finally:
        out.bytes = sum(written)
        out.tick_p95_s = pct(ticks, 95)
        for fh in handles:
            fh.close()


def _cpu_by_command() -> dict[str, float]:
    """CPU-s of every process now, summed by command name (kernel threads included); this
    process (the writer) is "bench"."""
    out: dict[str, float] = {}
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
        except OSError:
            continue  # gone meanwhile
        name = "bench" if int(stat.parent.name) == me else head.split("(", 1)[1]
        fields = tail.split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK
    return out


class HostSampler:
    """Where the cores went while the writer ran: SeaweedFS, the machine, every command.

    CPU-s of SeaweedFS and of the whole machine every 0.25 s; every process's CPU-s once at
    ``start`` and once at ``stop`` (a process that exits in between is not counted)."""

    def __init__(self, weed_pid: int, start: float) -> None:
        self.weed_pid = weed_pid
        self.start = start
        self.samples: list[tuple[float, float, int, int]] = []  # t, weed CPU-s, busy, total
        self._by_command: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="host-cpu", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            idle = jiffies[3] + jiffies[4]  # idle + iowait
            total = sum(jiffies[:8])  # guest time is already in user
            now = time.monotonic()
            self.samples.append((now, proc_cpu_s(self.weed_pid), total - idle, total))
            if not self._by_command and now >= self.start:
                self._by_command.append((now, _cpu_by_command()))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._by_command:
            self._by_command.append((time.monotonic(), _cpu_by_command()))

    def pct(self, start: float, end: float) -> tuple[float, float]:
        """(SeaweedFS CPU % of one core, machine busy % of all cores) over the window."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 2:
            return math.nan, math.nan
        (t0, w0, b0, n0), (t1, w1, b1, n1) = inside[0], inside[-1]
        return (w1 - w0) / (t1 - t0) * 100, (b1 - b0) / max(1, n1 - n0) * 100

    def top(self, n: int = 6) -> list[tuple[str, float]]:
        """The ``n`` commands that used most CPU from ``start`` to ``stop``, % of one core."""
        if len(self._by_command) < 2:
            return []
        (t0, a), (t1, z) = self._by_command
        used = {k: (v - a.get(k, 0.0)) / (t1 - t0) * 100 for k, v in z.items()}
        return sorted(used.items(), key=lambda kv: -kv[1])[:n]


def _lags(
    daemon: Any, marks: dict[str, dict[int, float]]
) -> tuple[list[float], list[tuple[float, float]], int]:
    """(lags, (written, lag) pairs, parts never uploaded) of the parts written by ``end``."""
    uploaded: dict[tuple[str, int], float] = {}
    for t, event in list(daemon.events):
        if event.get("event") in ("part_uploaded", "part_reuploaded"):
            name = os.path.basename(str(event.get("path", "")))
            uploaded.setdefault((name, int(event.get("part_number", 0))), t)
    lags: list[float] = []
    pairs: list[tuple[float, float]] = []
    missing = 0
    for name, parts in marks.items():
        for n, written in parts.items():
            got = uploaded.get((name, n))
            if got is None:
                missing += 1
                continue
            lags.append(got - written)
            pairs.append((written, got - written))
    return lags, pairs, missing


def _target_mb_s(count: int, w: Written, end: float) -> float:
    """The writer's schedule: every file at RATE from its staggered start to ``end``."""
    window = end - w.t0
    stagger = PART_MIB * MIB / RATE / count
    return sum(max(0.0, window - i * stagger) for i in range(count)) * RATE / 1e6 / window


def caps(count: int) -> dict[str, str]:
    """The settings an operator with ``count`` cameras raises (docs/settings.md, MAX_STREAMS).

    At MAX_STREAMS' default (64) the recordings beyond it wait for room, so the ladder
    measured the cap; at UPLOAD_CONCURRENCY's (4) 100 cameras' parts queued (lag +1.3 s over
    40 s), at 16 the same 100 ran flat (p95 0.43 s). MAX_INFLIGHT_MB must hold a part per
    upload slot plus the ones hashed ahead: at its default (64 MiB = 12 parts of 5 MiB) it,
    not the 16 slots, capped the parts in flight (at 200 cameras, with SeaweedFS taking ~1 s
    a part, 12 in flight move ~60 MB/s of the 100 written; lag p95 14.2 s vs 8.6 s at 128).
    More slots did not clearly help (200 at 32: p95 4.4 s, parts 1.8 s each; 150 at 19:
    4.4 s): SeaweedFS, not the slots, was then the limit.
    """
    return {"MAX_STREAMS": str(max(64, count)), "UPLOAD_CONCURRENCY": str(UPLOAD_CONCURRENCY),
            "MAX_INFLIGHT_MB": str((UPLOAD_CONCURRENCY + 2) * PART_MIB)}


def one_count(b: Bench, run: int, count: int) -> dict[str, float]:
    bucket = b.bucket("capacity")
    name = f"capacity-{run}-{count}"
    env = b.cefmp4_env(
        bucket, name, CHUNK_SIZE_MB=str(PART_MIB),
        # Never idle during the window: a recorder writes every TICK.
        STREAM_TIMEOUT_SECONDS="30", LOG_LEVEL="INFO",
        **caps(count),
    )
    daemon = b.daemon(env, name)
    watch_dir = b.work / f"watch-{name}"
    marks: dict[str, dict[int, float]] = {}
    try:
        daemon.wait_event("ready", 60)
        paths = [watch_dir / f"cam-{i:04d}.mp4" for i in range(count)]
        sampler = CpuSampler(daemon)
        stagger = PART_MIB * MIB / RATE / count  # spread boundaries over one part's time
        host = HostSampler(b.seaweed.pid, time.monotonic() + stagger * (count - 1))
        buf = media.base_clip(b.media_dir).read_bytes()
        w = _write(paths, b.capacity_seconds, stagger, buf, marks)
        t0 = w.t0
        end = time.monotonic()
        time.sleep(_SETTLE)  # parts written just before the end get their chance
        sampler.stop()
        host.stop()
        all_growing = t0 + stagger * (count - 1)
        cpu = sampler.pct(all_growing, end)
        weed_cpu, host_busy = host.pct(all_growing, end)
        rss = daemon.hwm_mib()
    finally:
        daemon.stop()
        shutil.rmtree(watch_dir, ignore_errors=True)
        s3util.delete_prefix(b.s3, bucket)
    lags, pairs, missing = _lags(daemon, marks)
    # Growth is judged once every recording runs: the first part's time of ramp-up (fewer
    # writers) in the first half made a short window look like growth.
    mid = (all_growing + end) / 2
    first = [lag for t, lag in pairs if all_growing <= t < mid]
    second = [lag for t, lag in pairs if t >= mid]
    growth = pct(second, 95) - pct(first, 95) if first and second else math.nan
    p95 = pct(lags, 95)
    ok = bool(lags) and missing == 0 and p95 <= LAG_P95_MAX and not growth > GROWTH_MAX
    res = {
        "count": float(count), "ok": float(ok), "lag_p50_s": pct(lags, 50), "lag_p95_s": p95,
        "lag_max_s": max(lags or [math.nan]), "lag_growth_s": growth,
        "parts": float(len(lags)), "parts_missing": float(missing),
        "cpu_pct": cpu, "cpu_pct_per_stream": cpu / count, "rss_mib": rss,
        # Where the cores went, and whether the writer itself kept the rate.
        "weed_cpu_pct": weed_cpu, "host_busy_pct": host_busy,
        "writer_mb_s": w.bytes / 1e6 / (end - t0),
        "writer_target_mb_s": _target_mb_s(count, w, end),
        "writer_late_max_s": w.late_max_s, "writer_tick_p95_s": w.tick_p95_s,
    }
    print(f"  capacity run {run + 1} x{count}: {'ok' if ok else 'FAIL'} lag p95 {p95:.2f} s "
          f"growth {growth:+.2f} s, {len(lags)} parts, {missing} missing, cpu {cpu:.0f} %, "
          f"rss {rss:.0f} MiB; writer {res['writer_mb_s']:.1f} of "
          f"{res['writer_target_mb_s']:.1f} MB/s "
          f"(late max {w.late_max_s:.2f} s, tick p95 {w.tick_p95_s:.2f} s); SeaweedFS cpu "
          f"{weed_cpu:.0f} %, machine busy {host_busy:.0f} % of {os.cpu_count()} cores")
    print("    cpu by command (% of a core): "
          + ", ".join(f"{name} {used:.0f}" for name, used in host.top()))
    return res


_CEILING_FILES = 16  # one per s5cmd worker
_CEILING_FILE_MIB = 40  # 8 parts each: 640 MiB in all, several seconds of full load


def server_ceiling(b: Bench) -> dict[str, float]:
    """What SeaweedFS alone ingests here as 5 MiB parts from the fastest client we have.

    s5cmd, 16 workers (the ladder's upload slots at 100 cameras), one part in flight per
    file: the MB/s, SeaweedFS's CPU-s per 100 MB, and the cameras at RATE that rate is. On a
    small box the S3 server beside cefmp4 sets the ladder's top, and this says where.
    """
    src = b.work / "ceiling"
    src.mkdir(exist_ok=True)
    block = os.urandom(MIB)
    for i in range(_CEILING_FILES):
        with (src / f"f{i:02d}.bin").open("wb") as fh:
            for k in range(_CEILING_FILE_MIB):
                fh.write(bytes([i, k]) + block[2:])  # no two parts alike
    bucket = b.bucket("ceiling")
    size = _CEILING_FILES * _CEILING_FILE_MIB * MIB
    try:
        weed0 = proc_cpu_s(b.seaweed.pid)
        res = run_measured([
            tool("s5cmd"), "--endpoint-url", b.seaweed.endpoint_url,
            "--numworkers", str(_CEILING_FILES), "cp", "--part-size", str(PART_MIB),
            "--concurrency", "1", f"{src}/*", f"s3://{bucket}/",
        ], b.peer_env(), b.cwd())
        weed = proc_cpu_s(b.seaweed.pid) - weed0
    finally:
        shutil.rmtree(src, ignore_errors=True)
        s3util.delete_prefix(b.s3, bucket)
    if res.code != 0:
        raise RuntimeError(f"s5cmd cp failed ({res.code}): {res.output.strip()[-300:]}")
    mb_s = size / 1e6 / res.wall_s
    print(f"  SeaweedFS alone (s5cmd, 16 x 5 MiB parts in flight): {mb_s:.0f} MB/s = "
          f"{mb_s * 1e6 / RATE:.0f} cameras' worth; SeaweedFS {weed / (size / 1e8):.2f} CPU-s "
          f"per 100 MB, s5cmd {res.cpu_s / (size / 1e8):.2f}")
    return {"mb_s": mb_s, "cameras": mb_s * 1e6 / RATE, "weed_cpu_s_per_100mb": weed / (size / 1e8),
            "client_cpu_s_per_100mb": res.cpu_s / (size / 1e8)}


def capacity(b: Bench, run: int) -> dict[str, dict[str, float]]:
    """The largest passing count of the ladder and the figures at that count."""
    best: dict[str, float] | None = None
    failed: dict[str, float] = {}
    for count in b.capacity_counts:
        res = one_count(b, run, count)
        if not res["ok"]:
            failed = res
            break
        best = res
    out = dict(best) if best else {"count": 0.0}
    out["first_failing_count"] = failed.get("count", math.nan)
    # After the ladder: its 640 MiB (and their deletion) must not load the server under it.
    ceiling = server_ceiling(b)
    # The failing count's figures too: how far it missed, and who had the cores.
    return {"cefmp4": out, "first failing": failed, "seaweed+s5cmd": ceiling}
