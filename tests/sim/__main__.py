"""``python -m tests.sim SEED...`` replays seeds; ``python -m tests.sim --seeds N [--from S]``
runs N of them and prints a summary (exit 1 if any failed)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter

from tests.sim.runner import run_seed

PARTY_STATS = ("salvage_runs", "salvaged", "aborted_empty", "tail_parts", "replaced",
               "party_errors", "host_lost")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim")
    parser.add_argument("seed", nargs="*", type=int)
    parser.add_argument("--seeds", type=int, default=0, help="run this many seeds")
    parser.add_argument("--from", dest="first", type=int, default=0, help="first seed")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--log-lines", type=int, default=60, help="log events to show")
    parser.add_argument("--racing", action="store_true",
                        help="the other party's age limits shorter than the owner's quiet "
                             "spells (issue #25; see schedule.RACING_OLDER_THAN)")
    args = parser.parse_args(argv)
    seeds = list(args.seed) + list(range(args.first, args.first + args.seeds))
    failed: list[int] = []
    party: Counter[str] = Counter()  # the other party's work (issue #25), summed
    began = time.perf_counter()
    for seed in seeds:
        result = run_seed(seed, log_lines=args.log_lines, racing=args.racing)
        if not result.ok or args.verbose or len(seeds) == 1:
            print(result.report(verbose=args.verbose), flush=True)
        if not result.ok:
            failed.append(seed)
        party.update({k: result.stats.get(k, 0) for k in PARTY_STATS})
        done = len(failed) + (seeds.index(seed) + 1 - len(failed))
        if done % 100 == 0:
            print(f"... {done} schedules, {len(failed)} failed, "
                  f"{time.perf_counter() - began:.0f} s", flush=True)
    elapsed = time.perf_counter() - began
    print(f"{len(seeds) - len(failed)}/{len(seeds)} schedules clean in {elapsed:.1f} s; "
          f"failed seeds: {failed}")
    print("other party: " + ", ".join(f"{k} {party[k]}" for k in PARTY_STATS))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
