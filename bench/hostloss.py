"""The host-loss drill (issue 25, SPEC §2.19/§2.20): how much of a recording is lost when
the recorder's host dies, with and without RPO_SECONDS.

For each kill moment: a fresh `cefmp4 run` (its own watch dir and embedded store) follows a
fragmented MP4 written at a steady rate; at the moment, the writer and cefmp4 die at once
(SIGKILL), the file and the store are deleted (the host's disk), and `cefmp4 salvage
--older-than 0` from a fresh directory makes an object of what S3 holds. Lost = bytes the
writer had written - bytes of the salvaged object (checked to be a prefix of the file).

    .venv/bin/python -m bench.hostloss [--moments 10] [--rates 0.5,2] [--rpo 2] [--seed 1]

Prints one row per (rate, RPO): p50 and max of the bytes lost and of the seconds of
recording they are, and the extra requests and bytes that RPO cost (segments PUT).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.app import make_settings
from tests.support.media import GrowingWriter, make_mp4
from tests.support.proc import Daemon, run_cli, settings_env
from tests.support.seaweed import SeaweedS3

MIB = 1 << 20


def drill(root: Path, s3: SeaweedS3, source: Path, *, bucket: str, rate: float,
          rpo: float | None, kill_at: float) -> dict[str, Any]:
    host = root / "host"
    host.mkdir()
    overrides: dict[str, Any] = {"stream_timeout_seconds": 60, "chunk_size_mb": 10}
    if rpo:
        overrides["rpo_seconds"] = rpo
    settings = make_settings(tmp_path=host, s3=s3, bucket=bucket, **overrides)
    daemon = Daemon(settings_env(settings), host / "run.log")
    daemon.start()
    writer = GrowingWriter(source, settings.watch_dir / "rec.mp4", rate=rate)
    writer.start()
    time.sleep(kill_at)
    writer.stop()
    daemon.kill()
    written = writer.bytes_written
    client = s3.boto_client()
    segments = len(client.list_objects_v2(Bucket=bucket, Prefix="streams/.cefmp4/tail/")
                   .get("Contents", []))
    shutil.rmtree(host)
    fresh = make_settings(tmp_path=root, s3=s3, bucket=bucket)
    out = run_cli(["salvage", "--older-than", "0", "--json"], settings_env(fresh))
    rows = json.loads(out.stdout or "[]")
    salvaged = sum(r["bytes"] for r in rows if r["done"])
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])
            if o["Key"].endswith(".mp4")]
    if keys:
        body = client.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
        if body != source.read_bytes()[: len(body)]:
            raise AssertionError("the salvaged object is not a prefix of the recording")
    return {"written": written, "salvaged": salvaged, "lost": written - salvaged,
            "segments": segments}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.hostloss", description=__doc__)
    parser.add_argument("--moments", type=int, default=10)
    parser.add_argument("--rates", default="0.5,2", help="MB/s (10**6 bytes), comma-separated")
    parser.add_argument("--rpo", type=float, default=2.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--longest", type=float, default=20.0, help="latest kill moment, s")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    moments = [round(rng.uniform(2.0, args.longest), 2) for _ in range(args.moments)]
    rates = [float(r) * 1e6 for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="cefmp4-hostloss-") as tmp:
        root = Path(tmp)
        source = make_mp4(root / "src.mp4", seconds=max(60, args.longest * 5),
                          kind="fragmented", mbytes=max(rates) * (args.longest + 5) / 1e6)
        s3 = SeaweedS3(root / "weed")
        s3.start()
        try:
            print(f"kill moments (s): {moments}", file=sys.stderr)
            print("| rate | RPO_SECONDS | lost p50 | lost max | lost p50 (s) | lost max (s) "
                  "| segments per minute |")
            print("|---|---|---|---|---|---|---|")
            for rate in rates:
                for rpo in (None, args.rpo):
                    results = []
                    for n, at in enumerate(moments):
                        run = root / f"run-{int(rate)}-{rpo}-{n}"
                        run.mkdir()
                        bucket = f"hl-{int(rate) // 1000}-{int((rpo or 0) * 10)}-{n}"
                        s3.boto_client().create_bucket(Bucket=bucket)
                        results.append(drill(run, s3, source, bucket=bucket, rate=rate,
                                             rpo=rpo, kill_at=at) | {"at": at})
                    lost = [r["lost"] for r in results]
                    per_min = statistics.mean(r["segments"] / r["at"] * 60 for r in results)
                    print(f"| {rate / 1e6:g} MB/s | {rpo or 'off'} "
                          f"| {statistics.median(lost) / MIB:.2f} MiB | {max(lost) / MIB:.2f} MiB "
                          f"| {statistics.median(lost) / rate:.1f} | {max(lost) / rate:.1f} "
                          f"| {per_min:.0f} |", flush=True)
        finally:
            s3.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
