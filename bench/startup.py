"""6. startup: `cefmp4 --help`, `cefmp4 check`, and the first part byte of `cefmp4 upload`.

"First byte moving" is taken server-side: the counting proxy stamps the arrival of each
request line with the same monotonic clock the bench spawned the child with, so
spawn → first UploadPart request is what a user waits before any media byte is on the
network. The peers (s5cmd, aws) get the same measurement through the same proxy.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from bench import media, s3util
from bench.procs import run_measured
from bench.scenarios import PART_MIB, Bench, counting_proxy, op_name
from bench.seaweed import tool

FILE_MIB = 2 * PART_MIB  # two parts: the first goes up while the second is read
_STACK = "import aiobotocore.session, aiohttp, botocore.client"


def _first(requests: list[tuple[float, str, str]], op: str) -> float:
    return min((t for t, m, target in requests if op_name(m, target) == op), default=float("nan"))


def _timed(b: Bench, name: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    proxy = counting_proxy(b)
    started = time.monotonic()
    res = run_measured(args, env, b.cwd())
    if res.code != 0:
        print(f"  ! {name} failed (exit {res.code}): {res.output[-1500:]}")
    seen = proxy.since(started, started + res.wall_s + 1)
    return {
        "first_request_s": min((t for t, _m, _t in seen), default=float("nan")) - started,
        "first_part_s": _first(seen, "UploadPart") - started,
        "wall_s": res.wall_s, "cpu_s": res.cpu_s, "ok": float(res.code == 0),
    }


def startup(b: Bench, run: int) -> dict[str, dict[str, float]]:
    path = media.sized_file(b.media_dir, FILE_MIB)
    bucket = b.bucket("startup")
    proxy = counting_proxy(b)
    out: dict[str, dict[str, float]] = {}

    help_res = run_measured([tool("cefmp4"), "--help"], b.base_env(), b.cwd())
    # The floor: an empty interpreter, and one that only imports the S3 client stack.
    python = str(Path(tool("cefmp4")).parent / "python")
    bare = run_measured([python, "-c", "pass"], b.base_env(), b.cwd())
    stack = run_measured([python, "-c", _STACK], b.base_env(), b.cwd())
    name = f"startup-{run}-{uuid.uuid4().hex[:6]}"
    env = b.cefmp4_env(bucket, name, endpoint=proxy.endpoint_url)
    check = run_measured([tool("cefmp4"), "check"], env, b.cwd())
    upload = _timed(b, "cefmp4 upload", [tool("cefmp4"), "upload", str(path)], env)
    out["floor"] = {"python_s": bare.wall_s, "s3_stack_import_s": stack.wall_s}
    out["cefmp4"] = {"help_s": help_res.wall_s, "check_s": check.wall_s,
                     "check_ok": float(check.code == 0), **upload}

    peer_env = b.peer_env()
    s5 = [tool("s5cmd"), "--endpoint-url", proxy.endpoint_url, "cp", "--part-size",
          str(PART_MIB), "--concurrency", "4", str(path), f"s3://{bucket}/s5cmd/{path.name}"]
    out["s5cmd"] = _timed(b, "s5cmd", s5, peer_env)
    aws = [b.aws, "--endpoint-url", proxy.endpoint_url, "s3", "cp", "--only-show-errors",
           str(path), f"s3://{bucket}/aws/{path.name}"]
    out["aws"] = _timed(b, "aws", aws, peer_env)
    s3util.delete_prefix(b.s3, bucket)
    c = out["cefmp4"]
    print(f"  startup run {run + 1}: --help {c['help_s']:.2f} s, check {c['check_s']:.2f} s, "
          f"upload first request {c['first_request_s']:.3f} s / first part "
          f"{c['first_part_s']:.3f} s; s5cmd {out['s5cmd']['first_part_s']:.3f} s, "
          f"aws {out['aws']['first_part_s']:.3f} s")
    return out

