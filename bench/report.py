"""Statistics and the tables printed per scenario."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def med(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else math.nan


def fmt(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


@dataclass
class Row:
    metric: str
    tool: str
    values: list[float]
    ratio_to: list[float] | None = None  # the peer's values, run by run
    target: str = ""
    ok: bool | None = None

    @property
    def median(self) -> float:
        return med(self.values)

    def cells(self) -> list[str]:
        clean = [v for v in self.values if not math.isnan(v)]
        span = f"{fmt(min(clean))}-{fmt(max(clean))}" if clean else "n/a"
        ratio = ""
        if self.ratio_to:
            # Median of the per-run ratios: each run's tools ran back to back.
            ratios = [v / p for v, p in zip(self.values, self.ratio_to, strict=False) if p]
            ratio = fmt(med(ratios)) + "x" if ratios else "n/a"
        ok = {True: "PASS", False: "FAIL", None: ""}[self.ok]
        return [self.metric, self.tool, fmt(self.median), span, ratio, self.target, ok]


def table(title: str, rows: list[Row], ratio_header: str = "ratio", notes: str = "") -> str:
    header = ["metric", "tool", "median", "min-max", ratio_header, "target", ""]
    body = [r.cells() for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    out = [f"== {title} ==", line(header), line(["-" * w for w in widths])]
    out += [line(c) for c in body]
    if notes:
        out.append(notes)
    return "\n".join(out)
