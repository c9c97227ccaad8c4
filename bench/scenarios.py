"""Scenarios 1-5 (6-10 have modules of their own). Each returns raw per-run values."""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import media, s3util
from bench.procs import Daemon, run_measured
from bench.proxy import CountingProxy
from bench.report import pct
from bench.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, tool

MIB = 1024 * 1024
PART_MIB = 10
CONCURRENCY = 4
INFLIGHT_MIB = 64
PREFIX = "streams/"


@dataclass
class Bench:
    work: Path
    seaweed: Seaweed
    size_mb: int
    runs: int
    timeout: float
    live_seconds: float
    idle_seconds: float
    idle_files: int
    aws: str
    media_dir: Path
    many_sync: bool = False
    capacity_seconds: float = 40
    capacity_counts: tuple[int, ...] = (50, 100, 150, 200, 250, 300)
    tree_files: int = 100_000
    tree_idle_seconds: float = 20
    writer_seconds: float = 10
    writer_kind: str = "regular"
    s3: Any = None
    proxy: CountingProxy | None = None
    _sha: dict[Path, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.s3 = s3util.client(self.seaweed.endpoint_url)

    # -- environment --------------------------------------------------------------------

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["PATH"] = f"{Path(tool('cefmp4')).parent}:{env.get('PATH', '')}"
        return env

    def cefmp4_env(
        self, bucket: str, name: str, endpoint: str | None = None, **extra: str
    ) -> dict[str, str]:
        env = self.base_env()
        env.update({
            "S3_ENDPOINT_URL": endpoint or self.seaweed.endpoint_url,
            "S3_ACCESS_KEY_ID": ACCESS_KEY,
            "S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "S3_REGION_NAME": "us-east-1",
            "S3_BUCKET_NAME": bucket,
            "S3_KEY_PREFIX": PREFIX,
            "STATE_DIR": str(self.work / f"state-{name}"),
            "WATCH_DIR": str(self.work / f"watch-{name}"),
            "CHUNK_SIZE_MB": str(PART_MIB),
            "UPLOAD_CONCURRENCY": str(CONCURRENCY),
            "MAX_INFLIGHT_MB": str(INFLIGHT_MIB),
            "STREAM_TIMEOUT_SECONDS": str(self.timeout),
            "PROM_PORT": "0",
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
        })
        env.update(extra)
        (self.work / f"watch-{name}").mkdir(parents=True, exist_ok=True)
        return env

    def peer_env(self) -> dict[str, str]:
        env = self.base_env()
        config = self.work / "aws-config"
        config.write_text(
            "[default]\nregion = us-east-1\ns3 =\n"
            f"  multipart_chunksize = {PART_MIB}MB\n  multipart_threshold = {PART_MIB}MB\n"
            f"  max_concurrent_requests = {CONCURRENCY}\n  addressing_style = path\n"
        )
        env.update({
            "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(config),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.work / "no-credentials"),
        })
        return env

    def bucket(self, scenario: str) -> str:
        name = f"bench-{scenario}-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=name)
        # SeaweedFS allocates a new bucket's volumes on its first write (0.2 s here, every
        # time): made now, so it is not charged to whichever tool happens to write first.
        self.s3.put_object(Bucket=name, Key="bench-warm-up", Body=b"")
        self.s3.delete_object(Bucket=name, Key="bench-warm-up")
        return name

    def sha256(self, path: Path) -> str:
        if path not in self._sha:
            sha = hashlib.sha256()
            with path.open("rb") as f:
                for block in iter(lambda: f.read(8 << 20), b""):
                    sha.update(block)
            self._sha[path] = sha.hexdigest()
        return self._sha[path]

    def daemon(self, env: dict[str, str], name: str) -> Daemon:
        cwd = self.work / f"cwd-{name}"  # no stray .env is read from the repository
        cwd.mkdir(exist_ok=True)
        return Daemon(tool("cefmp4"), env, cwd, self.work / f"cefmp4-{name}.log")

    def cwd(self) -> Path:
        path = self.work / "cwd"
        path.mkdir(exist_ok=True)
        return path

    # -- the peers ------------------------------------------------------------------------

    def s5cmd_cp(self, path: Path, bucket: str, key: str) -> Any:
        args = [
            tool("s5cmd"), "--endpoint-url", self.seaweed.endpoint_url, "cp",
            "--part-size", str(PART_MIB), "--concurrency", str(CONCURRENCY),
            str(path), f"s3://{bucket}/{key}",
        ]
        return run_measured(args, self.peer_env(), self.cwd())

    def aws_cp(self, path: Path, bucket: str, key: str) -> Any:
        args = [
            self.aws, "--endpoint-url", self.seaweed.endpoint_url, "s3", "cp",
            "--only-show-errors", str(path), f"s3://{bucket}/{key}",
        ]
        return run_measured(args, self.peer_env(), self.cwd())

    def cefmp4_upload(self, path: Path, bucket: str, name: str) -> tuple[Any, str | None]:
        env = self.cefmp4_env(bucket, name)
        result = run_measured([tool("cefmp4"), "upload", str(path)], env, self.cwd())
        key = None
        for line in result.output.splitlines():
            if line.startswith("ok ") and f"s3://{bucket}/" in line:
                key = line.split(f"s3://{bucket}/", 1)[1].split(" (", 1)[0]
        return result, key


def rotated(tools: tuple[str, ...], run: int) -> tuple[str, ...]:
    """The tools in a different order each run: page cache and server state left by one
    tool favour or cost the next, so no tool is always first or always last."""
    k = run % len(tools)
    return tools[k:] + tools[:k]


# --- 1. catch-up -------------------------------------------------------------------------


def catchup(b: Bench, run: int) -> dict[str, dict[str, float]]:
    path = media.sized_file(b.media_dir, b.size_mb)
    want = b.sha256(path)
    bucket = b.bucket("catchup")
    out: dict[str, dict[str, float]] = {}
    for name in rotated(("cefmp4", "s5cmd", "aws"), run):  # ABC, BCA, CAB: no fixed first
        if name == "cefmp4":
            res, key = b.cefmp4_upload(path, bucket, f"catchup-{run}")
        elif name == "s5cmd":
            key = f"s5cmd/{path.name}"
            res = b.s5cmd_cp(path, bucket, key)
        else:
            key = f"aws/{path.name}"
            res = b.aws_cp(path, bucket, key)
        ok = (res.code == 0 and key is not None
              and s3util.sha256_of_object(b.s3, bucket, key) == want)
        if not ok:
            print(f"  ! {name} failed (exit {res.code}): {res.output[-2000:]}")
        out[name] = {
            "mb_s": path.stat().st_size / 1e6 / res.wall_s, "wall_s": res.wall_s,
            "cpu_s": res.cpu_s, "rss_mib": res.maxrss_mib, "sha256_ok": float(ok),
        }
        s3util.delete_prefix(b.s3, bucket)
        print(f"  catchup run {run + 1} {name}: {out[name]['mb_s']:.1f} MB/s, "
              f"cpu {res.cpu_s:.2f} s, rss {res.maxrss_mib:.0f} MiB, sha256 ok={ok}")
    return out


# --- 2. drop ---------------------------------------------------------------------------


def drop(b: Bench, run: int) -> dict[str, dict[str, float]]:
    path = media.sized_file(b.media_dir, b.size_mb)
    bucket = b.bucket("drop")
    name = f"drop-{run}"
    daemon = b.daemon(b.cefmp4_env(bucket, name), name)
    try:
        daemon.wait_event("ready", 60)
        dest = b.work / f"watch-{name}" / f"dropped-{run}.mp4"
        cpu0 = daemon.cpu_s()
        t_drop = time.monotonic()
        media.drop_into(path, dest)
        seen = s3util.wait_for_keys(
            b.s3, bucket, PREFIX, {f"/{dest.name}.metadata.json"}, timeout=600
        )
        t_meta = next(iter(seen.values()), float("nan"))
        t_log = daemon.wait_event("metadata_written", 5)
        cpu = daemon.cpu_s() - cpu0
        rss = daemon.hwm_mib()
    finally:
        daemon.stop()
    peer = b.s5cmd_cp(path, bucket, f"s5cmd/{path.name}")
    s3util.delete_prefix(b.s3, bucket)
    gib = path.stat().st_size / 2**30
    res = {
        "cefmp4": {
            "after_timeout_s": t_meta - t_drop - b.timeout,
            "log_after_timeout_s": t_log - t_drop - b.timeout,
            "cpu_s": cpu, "rss_mib": rss, "cpu_s_per_gib": cpu / gib,
        },
        "s5cmd": {"upload_s": peer.wall_s, "cpu_s_per_gib": peer.cpu_s / gib},
    }
    print(f"  drop run {run + 1}: metadata {res['cefmp4']['after_timeout_s']:.2f} s after "
          f"timeout, s5cmd {peer.wall_s:.2f} s")
    return res


# --- 3. live and 4. many ------------------------------------------------------------------


def write_paced(
    files: list[Path], rate: float, seconds: float, watch: s3util.PartWatch, *,
    tick: float, buf: bytes, stagger: float = 0.0,
) -> float:
    """Append ``buf`` (cycled) to every file at ``rate`` B/s for ``seconds``, a write per
    file every ``tick`` s like a recorder; file ``i`` is created ``i * stagger`` s after the
    first (recorders rarely start in the same instant). Returns the time of the last write.
    """
    handles: dict[int, Any] = {}
    written = [0] * len(files)
    t0 = time.monotonic()
    end = seconds + stagger * (len(files) - 1)
    k = 0
    try:
        while True:
            k += 1
            elapsed = min(k * tick, end)
            for i, path in enumerate(files):
                mine = elapsed - i * stagger
                if mine < 0:
                    continue
                fh = handles.get(i) or handles.setdefault(i, path.open("wb", buffering=0))
                target = int(rate * min(mine, seconds))
                while written[i] < target:
                    pos = written[i] % len(buf)
                    n = fh.write(buf[pos : pos + min(target - written[i], len(buf) - pos)])
                    written[i] += n or 0
                watch.mark(path.name, written[i])
            last = time.monotonic()
            if elapsed >= end:
                return last
            time.sleep(max(0.0, t0 + (k + 1) * tick - time.monotonic()))
    finally:
        for fh in handles.values():
            fh.close()


class CpuSampler:
    """CPU-s of the daemon every 0.25 s, for the CPU % of a sub-window."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cpu", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.daemon.cpu_s()))
            self._stop.wait(0.25)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def pct(self, start: float, end: float) -> float:
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] - inside[0][0] < 2:
            return math.nan
        (t0, c0), (t1, c1) = inside[0], inside[-1]
        return (c1 - c0) / (t1 - t0) * 100


def _grow(
    b: Bench, run: int, scenario: str, *, count: int, rate: float, tick: float,
    stagger: float = 0.0,
) -> dict[str, float]:
    bucket = b.bucket(scenario)
    name = f"{scenario}-{run}"
    daemon = b.daemon(b.cefmp4_env(bucket, name), name)
    try:
        daemon.wait_event("ready", 60)
        watch = s3util.PartWatch(b.s3, bucket, PREFIX, PART_MIB * MIB)
        watch.start()
        files = [b.work / f"watch-{name}" / f"{scenario}-{run}-{i:02d}.mp4" for i in range(count)]
        sampler = CpuSampler(daemon)
        cpu0, t0 = daemon.cpu_s(), time.monotonic()
        t_last = write_paced(
            files, rate, b.live_seconds, watch,
            tick=tick, buf=media.base_clip(b.media_dir).read_bytes(), stagger=stagger,
        )
        cpu_window = (daemon.cpu_s() - cpu0) / (time.monotonic() - t0) * 100
        sampler.stop()
        # Steady state: every file growing (the last has started, none has stopped yet).
        steady = sampler.pct(t0 + stagger * (count - 1), t0 + b.live_seconds)
        suffixes = {f"/{f.name}.metadata.json" for f in files}
        seen = s3util.wait_for_keys(b.s3, bucket, PREFIX, suffixes, timeout=120 + count * 10)
        watch.stop(settle=2)
        rss = daemon.hwm_mib()
    finally:
        daemon.stop()
    s3util.delete_prefix(b.s3, bucket)
    lags = watch.lags()
    meta = max(seen.values(), default=float("nan")) - t_last - b.timeout
    if len(seen) < count:
        meta = float("nan")
    return {
        "lag_p50_s": pct(lags, 50), "lag_p95_s": pct(lags, 95), "lag_max_s": max(lags or [0]),
        "parts": float(len(lags)), "parts_unlisted": float(watch.missing()),
        "meta_after_timeout_s": meta, "rss_mib": rss,
        "cpu_pct": steady if not math.isnan(steady) else cpu_window, "cpu_pct_window": cpu_window,
    }


def live(b: Bench, run: int) -> dict[str, dict[str, float]]:
    res = _grow(b, run, "live", count=1, rate=4 * MIB, tick=0.05)
    print(f"  live run {run + 1}: lag p50 {res['lag_p50_s']:.3f} p95 {res['lag_p95_s']:.3f} "
          f"max {res['lag_max_s']:.3f} s, metadata {res['meta_after_timeout_s']:.2f} s after "
          f"timeout, parts {res['parts']:.0f}")
    return {"cefmp4": res}


def many(b: Bench, run: int) -> dict[str, dict[str, float]]:
    res = _grow(
        b, run, "many", count=20, rate=1 * MIB, tick=0.1,
        # Spread the 20 part boundaries over one part's time unless --many-sync.
        stagger=0.0 if b.many_sync else PART_MIB / 20,
    )
    print(f"  many run {run + 1}: cpu {res['cpu_pct']:.1f} %, rss {res['rss_mib']:.0f} MiB, "
          f"max lag {res['lag_max_s']:.2f} s over {res['parts']:.0f} parts")
    return {"cefmp4": res}


# --- 5. idle -------------------------------------------------------------------------------


def op_name(method: str, target: str) -> str:
    path, _, query = target.partition("?")
    keys = {kv.split("=", 1)[0] for kv in query.split("&") if kv}
    on_object = path.strip("/").count("/") >= 1
    if "partNumber" in keys:
        return "UploadPart"
    if "uploadId" in keys:
        return {"GET": "ListParts", "POST": "CompleteMultipartUpload"}.get(
            method, "AbortMultipartUpload")
    if "uploads" in keys:
        return "CreateMultipartUpload" if on_object else "ListMultipartUploads"
    if not on_object:
        return {"HEAD": "HeadBucket", "PUT": "CreateBucket"}.get(method, "ListObjects")
    return {"HEAD": "HeadObject", "GET": "GetObject", "PUT": "PutObject"}.get(method, method)


def idle_setup(b: Bench) -> str:
    """Upload ``idle_files`` small files once; their streams are completed in the store."""
    bucket = b.bucket("idle")
    env = b.cefmp4_env(bucket, "idle")
    started = time.monotonic()
    paths = media.small_files(b.media_dir, Path(env["WATCH_DIR"]), b.idle_files)
    for i in range(0, len(paths), 200):
        batch = [str(p) for p in paths[i : i + 200]]
        res = run_measured([tool("cefmp4"), "upload", *batch], env, b.cwd())
        if res.code != 0:
            raise RuntimeError(f"idle setup upload failed: {res.output[-2000:]}")
    print(f"  idle setup: {len(paths)} files uploaded in {time.monotonic() - started:.0f} s")
    return bucket


def counting_proxy(b: Bench) -> CountingProxy:
    """The bench's one counting proxy in front of SeaweedFS, started on first use."""
    if b.proxy is None:
        b.proxy = CountingProxy("127.0.0.1", int(b.seaweed.endpoint_url.rsplit(":", 1)[1]))
        b.proxy.start()
    return b.proxy


def idle(b: Bench, run: int, bucket: str) -> dict[str, dict[str, float]]:
    proxy = counting_proxy(b)
    env = b.cefmp4_env(bucket, "idle", endpoint=proxy.endpoint_url)
    daemon = b.daemon(env, f"idle-{run}")
    try:
        t_ready = daemon.wait_event("ready", 120)
        ready_s = t_ready - daemon.started
        startup = proxy.since(daemon.started, t_ready + 0.5)
        cpu_start = daemon.cpu_s()
        time.sleep(1.0)
        cpu0, t0 = daemon.cpu_s(), time.monotonic()
        time.sleep(b.idle_seconds)
        cpu_pct = (daemon.cpu_s() - cpu0) / (time.monotonic() - t0) * 100
        idle_reqs = proxy.since(t0)
        rss = daemon.hwm_mib()
        started_streams = daemon.count("stream_started") + daemon.count("stream_resumed")
    finally:
        daemon.stop()
    ops = Counter(op_name(m, t) for _, m, t in startup)
    print(f"  idle run {run + 1}: ready {ready_s:.2f} s, start-up requests {len(startup)} "
          f"{dict(ops)}, idle cpu {cpu_pct:.2f} %, idle requests {len(idle_reqs)}")
    return {"cefmp4": {
        "ready_s": ready_s, "startup_cpu_s": cpu_start, "startup_requests": float(len(startup)),
        "idle_requests": float(len(idle_reqs)), "idle_cpu_pct": cpu_pct, "rss_mib": rss,
        "streams_started": float(started_streams),
        **{f"req_{op}": float(n) for op, n in ops.items()},
    }}


def cleanup(b: Bench) -> None:
    if b.proxy is not None:
        b.proxy.stop()
    for child in b.work.glob("watch-*"):
        shutil.rmtree(child, ignore_errors=True)

