"""8. large-tree: `cefmp4 run` over ``--tree-files`` completed files, for SQLite and Redis.

Set-up (once per invocation): that many small files in a watch dir (1,000 per folder),
and a COMPLETED stream for each written straight into each checkpoint store through the
CheckpointStore API (what a long-running deployment accumulates), so nothing is uploaded.
Per run and store: spawn → `ready`; S3 requests (counting proxy) from spawn to ready + 0.5 s;
CPU % over ``--tree-idle-seconds`` from ready + 1 s; then the first periodic rescan
(``RESCAN_INTERVAL_SECONDS`` = idle window + 3 s): its CPU burst, found by sampling the
daemon's CPU every 0.1 s, gives its time and CPU-s; requests over idle + rescan; VmHWM.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from bench.procs import Daemon
from bench.scenarios import PREFIX, Bench, counting_proxy
from bench.seaweed import tool

KINDS = ("sqlite", "redis")
_RESCAN_AFTER = 3.0  # s after the idle window


class RedisProc:
    """A private redis-server (no persistence) on a free port."""

    def __init__(self, data_dir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(data_dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _make_files(watch: Path, count: int) -> list[Path]:
    paths = []
    blob = b"\x00\x00\x00\x18ftypisom" + b"\x00" * 52  # 64 bytes; never opened by cefmp4
    for i in range(count):
        folder = watch / f"cam-{i // 1000:03d}"
        if i % 1000 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"rec-{i:06d}.mp4"
        path.write_bytes(blob)
        paths.append(path)
    return paths


async def _populate(store: Any, paths: list[Path], watch: Path, bucket: str) -> None:
    """A COMPLETED stream per file, as `cefmp4 run` would have left it."""
    from cefmp4.checkpoint import StreamRecord, StreamState
    from cefmp4.core.keys import new_stream_id, object_key

    now = time.time()

    stats = {p: p.stat() for p in paths}

    async def put(path: Path) -> None:
        st = stats[path]
        rel = path.relative_to(watch).as_posix()
        sid = new_stream_id()
        await store.put_stream(StreamRecord(
            stream_id=sid, path=str(path), rel_path=rel, device=st.st_dev, inode=st.st_ino,
            bucket=bucket, key=object_key(PREFIX, sid, rel), part_size=10 << 20,
            max_parts=10_000, state=StreamState.COMPLETED, started_at=now - 60,
            last_activity_at=now - 30, upload_id=None, status="complete", completed_at=now - 30,
            final_size=st.st_size, final_mtime_ns=st.st_mtime_ns, sha256="0" * 64,
        ))

    for i in range(0, len(paths), 32):
        await asyncio.gather(*(put(p) for p in paths[i : i + 32]))


def setup(b: Bench) -> dict[str, Any]:
    """Files once, then each store filled; returns what the runs need."""
    from cefmp4.checkpoint.redis import open_redis_store
    from cefmp4.checkpoint.sqlite import open_sqlite_store

    started = time.monotonic()
    bucket = b.bucket("tree")
    watch = b.work / "watch-tree"
    paths = _make_files(watch, b.tree_files)
    made = time.monotonic()
    redis = RedisProc(b.work / "redis-tree")
    state = b.work / "state-tree"

    async def fill() -> None:
        async with open_sqlite_store(state) as sqlite_store:
            await _populate(sqlite_store, paths, watch, bucket)
        async with open_redis_store(redis.url, "cefmp4:") as redis_store:
            await _populate(redis_store, paths, watch, bucket)

    asyncio.run(fill())
    print(f"  large-tree setup: {len(paths)} files in {made - started:.0f} s, both stores "
          f"filled in {time.monotonic() - made:.0f} s")
    return {"bucket": bucket, "watch": watch, "state": state, "redis": redis}


class _Sampler:
    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.daemon.cpu_s()))
            self._stop.wait(0.1)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _busy(samples: list[tuple[float, float]], idle_rate: float) -> list[tuple[float, float]]:
    """(time, CPU-s) of each sampling step clearly above the idle rate."""
    return [
        (t1, c1 - c0) for (t0, c0), (t1, c1) in itertools.pairwise(samples)
        if (c1 - c0) > max(0.02, 3 * idle_rate * (t1 - t0))
    ]


def _burst(
    samples: list[tuple[float, float]], start: float, idle_rate: float
) -> tuple[float, float]:
    """(seconds, CPU-s above idle) of the first contiguous CPU burst after ``start``.

    Steps at most 0.3 s apart belong to one burst; Redis mode's periodic lease work shows
    as separate short bursts, so only the first run after the rescan is due counts."""
    busy = _busy([s for s in samples if s[0] >= start], idle_rate)
    if not busy:
        return math.nan, math.nan
    run = [busy[0]]
    for step in busy[1:]:
        if step[0] - run[-1][0] > 0.3:
            break
        run.append(step)
    first, last = run[0][0] - 0.1, run[-1][0]
    cpu = sum(d for _, d in run) - idle_rate * (last - first)
    return last - first, max(0.0, cpu)


def _wait_quiet(sampler: _Sampler, after: float, idle_rate: float, deadline: float) -> None:
    """Until ``after`` has passed and the last second was idle (or ``deadline``)."""
    while time.monotonic() < deadline:
        now = time.monotonic()
        recent = [s for s in sampler.samples if s[0] >= now - 1.0]
        if now > after and len(recent) >= 5 and not _busy(recent, idle_rate):
            return
        time.sleep(0.2)


def large_tree(b: Bench, run: int, prepared: dict[str, Any]) -> dict[str, dict[str, float]]:
    proxy = counting_proxy(b)
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        extra = {
            "RESCAN_INTERVAL_SECONDS": str(b.tree_idle_seconds + _RESCAN_AFTER),
            "WATCH_DIR": str(prepared["watch"]),
        }
        if kind == "redis":
            extra["REDIS_URL"] = prepared["redis"].url
        else:
            extra["STATE_DIR"] = str(prepared["state"])
        env = b.cefmp4_env(prepared["bucket"], f"tree-{kind}", endpoint=proxy.endpoint_url,
                           **extra)
        daemon = b.daemon(env, f"tree-{kind}-{run}")
        try:
            t_ready = daemon.wait_event("ready", 600)
            sampler = _Sampler(daemon)
            ready_s = t_ready - daemon.started
            startup = proxy.since(daemon.started, t_ready + 0.5)
            time.sleep(1.0)
            cpu0, t0 = daemon.cpu_s(), time.monotonic()
            time.sleep(b.tree_idle_seconds)
            idle_rate = (daemon.cpu_s() - cpu0) / (time.monotonic() - t0)
            # The rescan is due RESCAN_INTERVAL_SECONDS after ready; give it 60 s to finish.
            due = t_ready + b.tree_idle_seconds + _RESCAN_AFTER
            _wait_quiet(sampler, due + 1.5, idle_rate, due + 60)
            sampler.stop()
            rescan_s, rescan_cpu = _burst(sampler.samples, t0 + b.tree_idle_seconds, idle_rate)
            later = proxy.since(t0)
            rss = daemon.hwm_mib()
            started_streams = daemon.count("stream_started") + daemon.count("stream_resumed")
        finally:
            daemon.stop()
        out[kind] = {
            "ready_s": ready_s, "startup_requests": float(len(startup)),
            "idle_cpu_pct": idle_rate * 100, "rescan_s": rescan_s, "rescan_cpu_s": rescan_cpu,
            "requests_after_ready": float(len(later)), "rss_mib": rss,
            "streams_started": float(started_streams),
        }
        r = out[kind]
        print(f"  large-tree run {run + 1} {kind}: ready {ready_s:.2f} s, start-up requests "
              f"{len(startup)}, idle cpu {r['idle_cpu_pct']:.2f} %, rescan {rescan_s:.2f} s / "
              f"{rescan_cpu:.2f} CPU-s, rss {rss:.0f} MiB, streams started {started_streams}")
    return out


def cleanup(prepared: dict[str, Any]) -> None:
    prepared["redis"].stop()
    shutil.rmtree(prepared["watch"], ignore_errors=True)

