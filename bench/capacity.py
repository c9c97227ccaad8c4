"""7. capacity: how many 0.5 MB/s recordings (a 4 Mbit/s camera) one `cefmp4 run` keeps up with.

Counts are tried in ascending order, each with a fresh daemon and bucket, for
``--capacity-seconds`` of writing; the first count that fails ends the ladder. A count
passes when every part written in the window was uploaded (``_SETTLE`` s of grace), part
lag p95 ≤ 2 s, and the lag does not grow: p95 of the parts written in the second half of
the window is at most the first half's + 0.5 s. Part lag comes from the daemon's own
``part_uploaded`` log lines (arrival time - time the writer wrote the part's last byte);
polling ListParts for hundreds of uploads would load the server more than the uploads.
Writers start spread over one part's time, so part boundaries do not coincide.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from typing import Any

from bench import media, s3util
from bench.report import pct
from bench.scenarios import MIB, Bench, CpuSampler

RATE = 500_000  # B/s per recording: 4 Mbit/s
PART_MIB = 5  # the S3 minimum: a part every ~10 s at 0.5 MB/s (RPO of one part)
TICK = 0.5  # a recorder's write every 0.5 s
_SETTLE = 4.0  # s after the last write for the last parts to arrive (> the lag limit)
LAG_P95_MAX = 2.0
UPLOAD_CONCURRENCY = 16
GROWTH_MAX = 0.5


def _write(
    paths: list[Any], seconds: float, stagger: float, buf: bytes, marks: dict[str, dict[int, float]]
) -> float:
    """Append at RATE to every file, each starting ``i * stagger`` s late; returns t0."""
    part = PART_MIB * MIB
    handles = [p.open("wb", buffering=0) for p in paths]
    written = [0] * len(paths)
    t0 = time.monotonic()
    k = 0
    try:
        while True:
            k += 1
            now = time.monotonic()
            elapsed = now - t0
            if elapsed >= seconds:
                return t0
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
            time.sleep(max(0.0, t0 + k * TICK - time.monotonic()))
    finally:
        for fh in handles:
            fh.close()


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


def one_count(b: Bench, run: int, count: int) -> dict[str, float]:
    bucket = b.bucket("capacity")
    name = f"capacity-{run}-{count}"
    env = b.cefmp4_env(
        bucket, name, CHUNK_SIZE_MB=str(PART_MIB),
        # Never idle during the window: a recorder writes every TICK.
        STREAM_TIMEOUT_SECONDS="30", LOG_LEVEL="INFO",
        # An operator with this many cameras raises both caps. At MAX_STREAMS' default (64)
        # the recordings beyond it wait for room, so the ladder measured the cap; at
        # UPLOAD_CONCURRENCY's (4) 100 cameras' parts queued (lag +1.3 s over 40 s, 17 % CPU),
        # at 16 the same 100 ran flat (p95 0.43 s).
        MAX_STREAMS=str(max(64, count)), UPLOAD_CONCURRENCY=str(UPLOAD_CONCURRENCY),
    )
    daemon = b.daemon(env, name)
    watch_dir = b.work / f"watch-{name}"
    marks: dict[str, dict[int, float]] = {}
    try:
        daemon.wait_event("ready", 60)
        paths = [watch_dir / f"cam-{i:04d}.mp4" for i in range(count)]
        sampler = CpuSampler(daemon)
        stagger = PART_MIB * MIB / RATE / count  # spread boundaries over one part's time
        buf = media.base_clip(b.media_dir).read_bytes()
        t0 = _write(paths, b.capacity_seconds, stagger, buf, marks)
        end = time.monotonic()
        time.sleep(_SETTLE)  # parts written just before the end get their chance
        sampler.stop()
        all_growing = t0 + stagger * (count - 1)
        cpu = sampler.pct(all_growing, end)
        rss = daemon.hwm_mib()
    finally:
        daemon.stop()
        shutil.rmtree(watch_dir, ignore_errors=True)
        s3util.delete_prefix(b.s3, bucket)
    lags, pairs, missing = _lags(daemon, marks)
    mid = (t0 + end) / 2
    first = [lag for t, lag in pairs if t < mid]
    second = [lag for t, lag in pairs if t >= mid]
    growth = pct(second, 95) - pct(first, 95) if first and second else math.nan
    p95 = pct(lags, 95)
    ok = bool(lags) and missing == 0 and p95 <= LAG_P95_MAX and not growth > GROWTH_MAX
    res = {
        "count": float(count), "ok": float(ok), "lag_p50_s": pct(lags, 50), "lag_p95_s": p95,
        "lag_max_s": max(lags or [math.nan]), "lag_growth_s": growth,
        "parts": float(len(lags)), "parts_missing": float(missing),
        "cpu_pct": cpu, "cpu_pct_per_stream": cpu / count, "rss_mib": rss,
    }
    print(f"  capacity run {run + 1} x{count}: {'ok' if ok else 'FAIL'} lag p95 {p95:.2f} s "
          f"growth {growth:+.2f} s, {len(lags)} parts, {missing} missing, cpu {cpu:.0f} %, "
          f"rss {rss:.0f} MiB")
    return res


def capacity(b: Bench, run: int) -> dict[str, dict[str, float]]:
    """The largest passing count of the ladder and the figures at that count."""
    best: dict[str, float] | None = None
    first_fail = math.nan
    for count in b.capacity_counts:
        res = one_count(b, run, count)
        if not res["ok"]:
            first_fail = float(count)
            break
        best = res
    out = dict(best) if best else {"count": 0.0}
    out["first_failing_count"] = first_fail
    return {"cefmp4": out}
