"""10. writer-aware: a real recorder (ffmpeg at real time) into `cefmp4 run`, twice per run.

Recorder exit → the stream's ``.metadata.json`` listed in S3, once with
``COMPLETE_ON_CLOSE_SECONDS`` (the close of the last writer completes the stream) and once
with the idle timeout alone. The two modes alternate within every run, each with a fresh
daemon, bucket and watch dir, so both see the same machine load.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

from bench import s3util
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
