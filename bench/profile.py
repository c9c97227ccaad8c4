"""py-spy of one `cefmp4 upload` (the catch-up path): where the CPU goes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

from bench import media, s3util
from bench.scenarios import Bench
from bench.seaweed import tool

_LINE = re.compile(r":\d+\)")


def _frame(raw: str) -> str:
    """'func (path/to/mod.py:12)' -> 'func (mod.py)'."""
    name, _, where = raw.partition(" (")
    return f"{name} ({Path(_LINE.sub(')', '(' + where)[1:-1]).name})" if where else name


def summarize(collapsed: Path, top: int = 15) -> str:
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        n = int(count)
        total += n
        if frames[0].startswith(("thread", "process")):
            threads["event loop" if any("run_forever" in f for f in frames) else "other"] += n
        names = [_frame(f) for f in frames if not f.startswith(("thread", "process"))]
        if names:
            own[names[-1]] += n
            for name in set(names):
                incl[name] += n
    if not total:
        return "(py-spy recorded no samples)"

    def lines(counter: Counter[str]) -> list[str]:
        return [f"  {100 * n / total:5.1f} %  {name}" for name, n in counter.most_common(top)]

    out = [f"samples: {total}; by thread: " +
           ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in threads.items())]
    out += ["top self time:", *lines(own), "top inclusive time:", *lines(incl)]
    return "\n".join(out)


def run(b: Bench, results: Path) -> str:
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return "== profile ==\npy-spy not installed: .venv/bin/pip install py-spy"
    path = media.sized_file(b.media_dir, b.size_mb)
    bucket = b.bucket("profile")
    # A fresh STATE_DIR: a completed, unchanged file would not be uploaded again.
    env = b.cefmp4_env(bucket, f"profile-{uuid.uuid4().hex[:8]}")
    results.mkdir(exist_ok=True)
    out = results / f"profile-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    args = [spy, "record", "--rate", "200", "--nonblocking", "--threads", "--format", "raw",
            "-o", str(out), "--", tool("cefmp4"), "upload", str(path)]
    started = time.monotonic()
    proc = subprocess.run(args, env=env, cwd=b.cwd(), capture_output=True, text=True, check=False)
    wall = time.monotonic() - started
    s3util.delete_prefix(b.s3, bucket)
    if proc.returncode != 0 or not out.exists():
        return f"== profile ==\npy-spy failed ({proc.returncode}): {proc.stderr[-1500:]}"
    return (f"== profile: py-spy of `cefmp4 upload` {b.size_mb} MiB ({wall:.1f} s under "
            f"py-spy), raw stacks in {out} ==\n{summarize(out)}")
