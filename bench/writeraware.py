"""10. writer-aware: a real recorder (ffmpeg at real time) into `cefmp4 run`, twice per run.

Recorder exit → the stream's ``.metadata.json`` listed in S3, once with
``COMPLETE_ON_CLOSE_SECONDS`` (the close of the last writer completes the stream) and once
with the idle timeout alone. The two modes alternate within every run, each with a fresh
daemon, bucket and watch dir, so both see the same machine load.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from bench import s3util
from bench.report import pct
from bench.scenarios import PREFIX, Bench

CLOSE_S = 2.0  # COMPLETE_ON_CLOSE_SECONDS of the writer-aware mode
LONG_TIMEOUT_S = 30.0  # its STREAM_TIMEOUT_SECONDS: the idle rule never fires first
IDLE_TIMEOUT_S = 3.0  # STREAM_TIMEOUT_SECONDS of the idle-only mode
MODES = {
    "on-close": {"COMPLETE_ON_CLOSE_SECONDS": f"{CLOSE_S:g}",
                 "STREAM_TIMEOUT_SECONDS": f"{LONG_TIMEOUT_S:g}"},
    "idle-only": {"COMPLETE_ON_CLOSE_SECONDS": "",
                  "STREAM_TIMEOUT_SECONDS": f"{IDLE_TIMEOUT_S:g}"},
}
EXPECTED_BY = {"on-close": "writer_closed", "idle-only": "idle_timeout"}
KINDS = ("regular", "faststart", "fragmented", "mkv")
_MOVFLAGS = {"faststart": "+faststart", "fragmented": "+frag_keyframe+empty_moov"}


def recorder_args(kind: str, seconds: float, dest: Path) -> list[str]:
    """ffmpeg encoding a test pattern at real time (``-re``): a camera's pace and bitrate."""
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg not found on PATH (apt-get install ffmpeg)")
    args = [
        ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-re",
        "-f", "lavfi", "-i", "testsrc2=size=960x540:rate=25", "-t", f"{seconds:g}",
        "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "4M", "-g", "50",
        "-pix_fmt", "yuv420p",
    ]
    if kind in _MOVFLAGS:
        args += ["-movflags", _MOVFLAGS[kind]]
    return [*args, str(dest)]


def _one(b: Bench, run: int, mode: str, kind: str, seconds: float) -> dict[str, float]:
    bucket = b.bucket("writer")
    name = f"writer-{mode}-{run}"
    suffix = ".mkv" if kind == "mkv" else ".mp4"
    env = b.cefmp4_env(bucket, name, WATCH_EXTENSIONS=".mp4,.mkv", **MODES[mode])
    dest = b.work / f"watch-{name}" / f"rec-{run}{suffix}"
    recorder = recorder_args(kind, seconds, dest)  # no daemon is started without a recorder
    daemon = b.daemon(env, name)
    try:
        daemon.wait_event("ready", 60)
        rec = subprocess.run(
            recorder, capture_output=True, text=True, check=False, timeout=seconds * 10 + 60
        )
        t_exit = time.monotonic()
        if rec.returncode != 0:
            raise RuntimeError(f"recorder failed (exit {rec.returncode}): {rec.stderr[-1500:]}")
        meta_suffix = f"/{dest.name}.metadata.json"
        seen = s3util.wait_for_keys(
            b.s3, bucket, PREFIX, {meta_suffix}, timeout=LONG_TIMEOUT_S * 2 + 30
        )
        t_meta = seen.get(meta_suffix, float("nan"))
        t_log = daemon.wait_event("metadata_written", 10) if seen else float("nan")
    finally:
        daemon.stop()
    completed_by, objects, sha_ok = "?", 0, False
    if seen:
        (meta_key,) = s3util.keys_ending(b.s3, bucket, PREFIX, meta_suffix)
        doc = json.loads(b.s3.get_object(Bucket=bucket, Key=meta_key)["Body"].read())
        completed_by = str(doc.get("completed_by"))
        media_keys = [k for k in s3util.keys_ending(b.s3, bucket, PREFIX, "")
                      if not k.endswith(".metadata.json")]
        objects = len(media_keys)
        key = meta_key.removesuffix(".metadata.json")
        sha_ok = s3util.sha256_of_object(b.s3, bucket, key) == b.sha256(dest)
    s3util.delete_prefix(b.s3, bucket)
    shutil.rmtree(dest.parent, ignore_errors=True)
    res = {
        "exit_to_meta_s": t_meta - t_exit, "exit_to_log_s": t_log - t_exit,
        "expected_completed_by": float(completed_by == EXPECTED_BY[mode]),
        "objects": float(objects), "sha256_ok": float(sha_ok),
    }
    after = [f"{e.get('event')} +{t - t_exit:.2f}" for t, e in daemon.events
             if t >= t_exit and e.get("event") != "raw"]
    print(f"  writer-aware run {run + 1} {mode}: recorder exit → metadata in S3 "
          f"{res['exit_to_meta_s']:.2f} s (log {res['exit_to_log_s']:.2f} s), completed_by "
          f"{completed_by}, {objects} object(s), sha256 ok={sha_ok}\n"
          f"    daemon after the exit: {', '.join(after[:12])}")
    return res


def writer_aware(
    b: Bench, run: int, kind: str = "regular", seconds: float = 10.0
) -> dict[str, dict[str, float]]:
    """One run: the recording of ``seconds`` under each mode, alternating which goes first."""
    order = list(MODES) if run % 2 == 0 else list(reversed(MODES))
    return {mode: _one(b, run, mode, kind, seconds) for mode in order}


# --- the recorder matrix (issue #26): each recorder type, default settings vs the profile ---
#
#     .venv/bin/python -m bench.writeraware [--recorders fragmented,segment,hls,moved,copied]
#                                           [--samples 10] [--runs 1]
#
# One daemon, bucket and watch dir per (recorder, settings) and run; each recorder gives
# ``--samples`` files in that run: 10 fragmented MP4 recordings started 0.5 s apart,
# ``-f segment``/``-f hls`` 1 s segments of one real-time recording, 10 finished files
# renamed or copied in 0.5 s apart. A sample: the moment the file was closed (the recorder
# exited; a segment's last write, its mtime; the rename or copy returned) to the first
# ListObjectsV2 (every 50 ms) that shows its ``.metadata.json``, both on this host's wall
# clock.

MATRIX_RECORDERS = ("fragmented", "segment", "hls", "moved", "copied")
DEFAULT_TIMEOUT_S = 30.0  # cefmp4's STREAM_TIMEOUT_SECONDS default
# Every extension the recorders write is watched in both (default: .mp4 only, and HLS's .ts
# would never be seen); apart from that, "default" is cefmp4's defaults.
SETTINGS = {
    "default": {"WATCH_EXTENSIONS": ".mp4,.ts",
                "STREAM_TIMEOUT_SECONDS": f"{DEFAULT_TIMEOUT_S:g}",
                "COMPLETE_ON_CLOSE_SECONDS": "", "HOLD_WHILE_OPEN": "false"},
    # README "Recommended profile: ffmpeg / OBS / GStreamer on the same host" (what decides
    # completion; AFTER_UPLOAD and notifications do not).
    "profile": {"WATCH_EXTENSIONS": ".mp4,.mov,.mkv,.ts",
                "STREAM_TIMEOUT_SECONDS": f"{DEFAULT_TIMEOUT_S:g}",
                "COMPLETE_ON_CLOSE_SECONDS": f"{CLOSE_S:g}", "HOLD_WHILE_OPEN": "true"},
}
_SMALL = ["-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-c:v", "libx264",
          "-preset", "ultrafast", "-b:v", "2M", "-g", "25", "-pix_fmt", "yuv420p"]


def _ffmpeg(*args: str) -> list[str]:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise RuntimeError("ffmpeg not found on PATH (apt-get install ffmpeg)")
    return [ffmpeg, "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args]


class MetadataPoll:
    """ListObjectsV2 every 50 ms in a thread: wall time each ``.metadata.json`` first shows."""

    def __init__(self, s3: object, bucket: str) -> None:
        self.s3, self.bucket = s3, bucket
        self.seen: dict[str, float] = {}  # the source's file name -> wall time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="metadata-poll", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            for key in s3util.keys_ending(self.s3, self.bucket, PREFIX, ".metadata.json"):
                name = key.rsplit("/", 1)[-1].removesuffix(".metadata.json")
                self.seen.setdefault(name, now)
            self._stop.wait(0.05)

    def wait(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not names <= self.seen.keys() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _record_fragmented(watch: Path, n: int) -> dict[str, float]:
    """``n`` real-time fragmented MP4 recordings of 6 s, started 0.5 s apart: each closes
    its file when it exits."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    for i in range(n):
        name = f"cam{i:02d}.mp4"
        procs[name] = subprocess.Popen(
            _ffmpeg("-re", *_SMALL, "-t", "6", "-movflags", "+frag_keyframe+empty_moov",
                    str(watch / name)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)
    closed: dict[str, float] = {}
    while len(closed) < n:
        for name, proc in procs.items():
            if name not in closed and proc.poll() is not None:
                if proc.returncode != 0:
                    raise RuntimeError(f"recorder failed (exit {proc.returncode})")
                closed[name] = time.time()
        time.sleep(0.01)
    return closed


def _record_segments(watch: Path, kind: str, n: int) -> dict[str, float]:
    """One real-time recording cut into 1 s segments (``-f segment`` .mp4 or ``-f hls`` .ts
    and its playlist): ``n`` segments; each closed at its last write."""
    seconds = str(n + 0.5)  # the last, short segment is one more sample
    if kind == "segment":
        out = ["-f", "segment", "-segment_time", "1", "-reset_timestamps", "1",
               str(watch / "seg%03d.mp4")]
    else:
        out = ["-f", "hls", "-hls_time", "1", "-hls_list_size", "0",
               "-hls_segment_filename", str(watch / "seg%03d.ts"), str(watch / "index.m3u8")]
    subprocess.run(_ffmpeg("-re", *_SMALL, "-t", seconds, *out), check=True,
                   capture_output=True, timeout=n * 3 + 60)
    return {p.name: p.stat().st_mtime for p in watch.iterdir()
            if p.suffix in (".mp4", ".ts")}


def _bring_in(watch: Path, work: Path, how: str, n: int) -> dict[str, float]:
    """``n`` finished MP4 files (4 s each) renamed in from the same file system, or copied."""
    sample = work / "finished-sample.mp4"
    if not sample.exists():
        subprocess.run(_ffmpeg(*_SMALL, "-t", "4", str(sample)), check=True,
                       capture_output=True, timeout=120)
    staging = work / f"staging-{how}"
    staging.mkdir(exist_ok=True)
    closed: dict[str, float] = {}
    for i in range(n):
        name = f"{how}{i:02d}.mp4"
        if how == "moved":
            shutil.copyfile(sample, staging / name)
            os.rename(staging / name, watch / name)
        else:
            shutil.copyfile(sample, watch / name)  # open, write, close
        closed[name] = time.time()
        time.sleep(0.5)
    return closed


def recorder_sample(b: Bench, recorder: str, settings: str, run: int,
                    samples: int) -> dict[str, object]:
    """One daemon for ``recorder`` under ``settings``: close → metadata per file."""
    bucket = b.bucket("recorders")
    name = f"rec-{recorder}-{settings}-{run}"
    env = b.cefmp4_env(bucket, name, **SETTINGS[settings])
    watch = b.work / f"watch-{name}"
    daemon = b.daemon(env, name)
    poll = None
    try:
        daemon.wait_event("ready", 60)
        poll = MetadataPoll(b.s3, bucket)
        if recorder == "fragmented":
            closed = _record_fragmented(watch, samples)
        elif recorder in ("segment", "hls"):
            closed = _record_segments(watch, recorder, samples)
        else:
            closed = _bring_in(watch, b.work, recorder, samples)
        poll.wait(set(closed), timeout=DEFAULT_TIMEOUT_S * 2 + 30)
    finally:
        if poll is not None:
            poll.stop()
        daemon.stop()
    by: dict[str, int] = {}
    for key in s3util.keys_ending(b.s3, bucket, PREFIX, ".metadata.json"):
        doc = json.loads(b.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        by[str(doc.get("completed_by"))] = by.get(str(doc.get("completed_by")), 0) + 1
    s3util.delete_prefix(b.s3, bucket)
    shutil.rmtree(watch, ignore_errors=True)
    lags = [poll.seen[n] - t for n, t in sorted(closed.items()) if n in poll.seen]
    missing = len(closed) - len(lags)
    print(f"  {recorder} {settings} run {run + 1}: {len(lags)} file(s), close → metadata "
          f"p50 {pct(lags, 50):.2f} s, max {max(lags, default=math.nan):.2f} s, "
          f"completed_by {by}, missing {missing}")
    return {"lags_s": lags, "completed_by": by, "missing": missing}


def matrix_table(results: dict[str, dict[str, list[dict[str, object]]]]) -> str:
    lines = ["| recorder | settings | samples | close → metadata p50 | max | completed_by |",
             "|---|---|---|---|---|---|"]
    for recorder, per in results.items():
        for settings, runs in per.items():
            lags = [v for r in runs for v in r["lags_s"]]  # type: ignore[attr-defined]
            by: dict[str, int] = {}
            for r in runs:
                for k, v in r["completed_by"].items():  # type: ignore[attr-defined]
                    by[k] = by.get(k, 0) + v
            missing = sum(int(r["missing"]) for r in runs)  # type: ignore[call-overload]
            note = ", ".join(f"{k} {v}" for k, v in sorted(by.items()))
            lines.append(f"| {recorder} | {settings} | {len(lags)}"
                         f"{f' ({missing} missing)' if missing else ''} | "
                         f"{pct(lags, 50):.2f} s | {max(lags, default=math.nan):.2f} s | "
                         f"{note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import tempfile

    from bench.seaweed import Seaweed

    p = argparse.ArgumentParser(prog="python -m bench.writeraware",
                                description="close → metadata per recorder type, cefmp4's "
                                            "default settings vs the recommended profile")
    p.add_argument("--recorders", default=",".join(MATRIX_RECORDERS))
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--samples", type=int, default=10, help="files per recorder and run")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--results-dir", type=Path,
                   default=Path(__file__).resolve().parent / "results")
    args = p.parse_args(argv)
    recorders = [r for r in args.recorders.split(",") if r]
    settings = [s for s in args.settings.split(",") if s]
    if set(recorders) - set(MATRIX_RECORDERS) or set(settings) - set(SETTINGS):
        p.error(f"recorders: {','.join(MATRIX_RECORDERS)}; settings: {','.join(SETTINGS)}")
    root = Path(tempfile.gettempdir()) / "cefmp4-bench"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="recorders-", dir=root))
    seaweed = Seaweed(work / "seaweed")
    seaweed.start()
    b = Bench(work=work, seaweed=seaweed, size_mb=0, runs=args.runs, timeout=DEFAULT_TIMEOUT_S,
              live_seconds=0, idle_seconds=0, idle_files=0, aws="aws", media_dir=work)
    started = time.time()
    results: dict[str, dict[str, list[dict[str, object]]]] = {}
    try:
        for run in range(args.runs):
            for recorder in recorders:
                # Alternate which settings go first, run by run: both see the same load.
                order = settings if run % 2 == 0 else list(reversed(settings))
                for s in order:
                    results.setdefault(recorder, {}).setdefault(s, []).append(
                        recorder_sample(b, recorder, s, run, args.samples))
    finally:
        seaweed.stop()
        shutil.rmtree(work, ignore_errors=True)
    table = matrix_table({r: {s: results[r][s] for s in settings if s in results[r]}
                          for r in recorders if r in results})
    print(table)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"writeraware-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "settings": SETTINGS,
        "started": started, "finished": time.time(), "loadavg": os.getloadavg(),
        "results": results, "table": table,
    }, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
