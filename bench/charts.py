"""The benchmark figures as SVG charts for the docs (docs/charts/*.svg).

    .venv/bin/python -m bench.charts                  # the published figures -> docs/charts/
    .venv/bin/python -m bench.charts --uplink-json bench/results/uplink-N.json   # a new run
    .venv/bin/python -m bench.charts --out DIR        # somewhere else (the tests do)

The numbers are the published ones (docs/benchmarks.md, docs/bench-suite.md), kept here
because bench/results/ is not committed. ``--uplink-json`` charts the accuracy and lag of a
``python -m bench.uplink`` result file instead. bench.uplink stores one ratio per window,
not the rate second by second, so the rate chart shows each run's 60 s average and fullest
10 s against the limit, not a time series.

Hand-written SVG (no plotting library): a few shapes and text, the same bytes on every run,
so tests/unit/test_docs.py can check that the committed charts are up to date.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "charts"

FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"
INK, GRID, GOOD, BAD, ACCENT, MUTED = "#222", "#ddd", "#2e7d32", "#c62828", "#1565c0", "#777"


@dataclass(frozen=True)
class Accuracy:
    limit_mib_s: float
    streams: int
    achieved: float  # bytes in the 60 s window / (limit x 60 s)
    fullest_10s: float  # the fullest 10 s / (limit x 10 s)


@dataclass(frozen=True)
class Lag:
    part_p50: float
    part_p95: float
    part_max: float
    rec_p50: float
    rec_p95: float
    goal_p95: float


# bench.uplink, 2026-12-07 (docs/uplink.md, "Measured").
UPLINK_ACCURACY = (
    Accuracy(1, 1, 1.001, 1.005), Accuracy(1, 20, 0.996, 1.015),
    Accuracy(4, 1, 1.001, 1.005), Accuracy(4, 20, 0.999, 1.015),
    Accuracy(16, 1, 1.001, 1.009), Accuracy(16, 20, 0.992, 1.006),
)
UPLINK_LAG = Lag(2.65, 2.71, 2.73, 13.1, 22.6, 23.0)

# The capacity ladder: recordings at 0.5 MB/s -> part lag p95 (s). Quiet box: 2026-12-01
# 20:00-21:10 UTC (docs/benchmarks.md); loaded box: 2026-12-01 17:04-17:17 UTC, load
# average 2.6-4.4 (docs/bench-suite.md, scenario 7).
CAPACITY_QUIET = ((100, 0.44), (150, 0.63), (200, 8.4))
CAPACITY_LOADED = ((100, 3.18), (150, 9.44), (200, 16.17), (250, 18.74))
CAPACITY_PASS_P95 = 2.0

# The host-loss drill, 2026-12-07: (rate, RPO_SECONDS) -> seconds of recording lost, p50
# and max (docs/benchmarks.md).
HOSTLOSS = (
    ("0.5 MB/s", "off", 10.5, 17.2), ("0.5 MB/s", "2", 0.7, 1.6),
    ("2 MB/s", "off", 2.9, 5.3), ("2 MB/s", "2", 0.5, 1.7),
)


def _n(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")


def _text(x: float, y: float, s: str, *, size: int = 12, anchor: str = "start",
          fill: str = INK, weight: str = "normal") -> str:
    return (f"<text x='{_n(x)}' y='{_n(y)}' font-size='{size}' text-anchor='{anchor}' "
            f"fill='{fill}' font-weight='{weight}'>{escape(s)}</text>")


def _line(x1: float, y1: float, x2: float, y2: float, *, stroke: str = INK,
          width: float = 1, dash: str = "") -> str:
    dashed = f" stroke-dasharray='{dash}'" if dash else ""
    return (f"<line x1='{_n(x1)}' y1='{_n(y1)}' x2='{_n(x2)}' y2='{_n(y2)}' "
            f"stroke='{stroke}' stroke-width='{_n(width)}'{dashed}/>")


def _rect(x: float, y: float, w: float, h: float, *, fill: str, opacity: float = 1) -> str:
    faded = f" fill-opacity='{opacity}'" if opacity != 1 else ""
    return f"<rect x='{_n(x)}' y='{_n(y)}' width='{_n(w)}' height='{_n(h)}' fill='{fill}'{faded}/>"


def _circle(x: float, y: float, r: float, *, fill: str, stroke: str = "none") -> str:
    return (f"<circle cx='{_n(x)}' cy='{_n(y)}' r='{_n(r)}' fill='{fill}' stroke='{stroke}' "
            f"stroke-width='1.5'/>")


def _svg(width: int, height: int, title: str, body: Iterable[str]) -> str:
    head = (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
            f"viewBox='0 0 {width} {height}' {FONT} role='img'>")
    return "\n".join([
        head, f"<title>{escape(title)}</title>",
        _rect(0, 0, width, height, fill="#fff"), *body, "</svg>",
    ]) + "\n"


def _legend(x: float, y: float, items: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for i, (marker, label) in enumerate(items):
        out += [marker.format(x=_n(x), y=_n(y + 16 * i)), _text(x + 12, y + 16 * i + 4, label)]
    return out


def uplink_accuracy(rows: Sequence[Accuracy], source: str) -> str:
    """Each run's bytes against the limit: the 60 s average and the fullest 10 s."""
    width, left, right, top, row_h = 640, 150, 30, 66, 26
    height = top + row_h * len(rows) + 70
    lo, hi = 0.94, 1.04

    def sx(v: float) -> float:
        return left + (v - lo) / (hi - lo) * (width - left - right)

    bottom = top + row_h * len(rows)
    body = [
        _text(left, 20, "UPLOAD_BWLIMIT: bytes sent against the limit", size=14, weight="bold"),
        _text(left, 38, f"{source}; ratio to the limit (1 = exactly the limit)", fill=MUTED),
        _rect(sx(0.95), top - 6, sx(1.02) - sx(0.95), bottom - top + 6, fill=GOOD, opacity=0.08),
    ]
    for i in range(11):
        v = lo + i * (hi - lo) / 10
        body += [_line(sx(v), top - 6, sx(v), bottom, stroke=GRID),
                 _text(sx(v), bottom + 16, f"{v:.2f}", size=10, anchor="middle", fill=MUTED)]
    body.append(_line(sx(1.0), top - 10, sx(1.0), bottom + 4, stroke=INK, width=1.5))
    body.append(_text(sx(1.0) + 4, top - 12, "the limit", size=10))
    for i, row in enumerate(rows):
        y = top + row_h * i + row_h / 2
        label = f"{_n(row.limit_mib_s)} MiB/s, {row.streams} stream" + "s" * (row.streams > 1)
        body += [_text(left - 10, y + 4, label, anchor="end"),
                 _circle(sx(row.achieved), y, 5, fill=ACCENT),
                 _circle(sx(row.fullest_10s), y, 5, fill="#fff", stroke=BAD)]
    body += _legend(left, bottom + 36, [
        ("<circle cx='{x}' cy='{y}' r='5' fill='" + ACCENT + "'/>", "average over 60 s"),
        ("<circle cx='{x}' cy='{y}' r='5' fill='#fff' stroke='" + BAD + "' stroke-width='1.5'/>",
         "fullest 10 s of the 60"),
    ])
    body.append(_text(width - right, bottom + 40, "shaded: the goal, 0.95-1.02", size=10,
                      anchor="end", fill=MUTED))
    return _svg(width, height, "UPLOAD_BWLIMIT accuracy", body)


def uplink_lag(lag: Lag) -> str:
    """Lag percentiles of a live recording while a backlog drains under the limit."""
    width, left, right, top, bar_h = 640, 150, 40, 78, 18
    rows = [("part lag p50", lag.part_p50), ("part lag p95", lag.part_p95),
            ("part lag max", lag.part_max), ("recording lag p50", lag.rec_p50),
            ("recording lag p95", lag.rec_p95)]
    hi = max(25.0, lag.goal_p95 * 1.1)
    bottom = top + (bar_h + 10) * len(rows)
    height = bottom + 62

    def sx(v: float) -> float:
        return left + v / hi * (width - left - right)

    body = [
        _text(left, 20, "Live first: a live recording's lag under the limit", size=14,
              weight="bold"),
        _text(left, 38, "4 Mbit/s recording, 2 GiB backlog, UPLOAD_BWLIMIT=4M, 512 s; seconds",
              fill=MUTED),
    ]
    for t in range(0, int(hi) + 1, 5):
        body += [_line(sx(t), top - 6, sx(t), bottom, stroke=GRID),
                 _text(sx(t), bottom + 16, f"{t} s", size=10, anchor="middle", fill=MUTED)]
    for i, (label, value) in enumerate(rows):
        y = top + (bar_h + 10) * i
        colour = ACCENT if label.startswith("part") else GOOD
        body += [_text(left - 10, y + bar_h - 4, label, anchor="end"),
                 _rect(left, y, sx(value) - left, bar_h, fill=colour),
                 _text(sx(value) + 6, y + bar_h - 4, f"{value:g} s", size=11)]
    body.append(_line(sx(lag.goal_p95), top - 10, sx(lag.goal_p95), bottom, stroke=BAD,
                      width=1.5, dash="5,3"))
    body.append(_text(sx(lag.goal_p95) - 4, top - 14,
                      f"goal: recording lag p95 <= {lag.goal_p95:.1f} s (a part's fill + 2 s)",
                      size=10, anchor="end", fill=BAD))
    body.append(_text(left, bottom + 36, "part lag: a part's last byte written -> uploaded",
                      size=10, fill=MUTED))
    body.append(_text(left, bottom + 50, "recording lag: age of the oldest byte not yet in S3",
                      size=10, fill=MUTED))
    return _svg(width, height, "Live recording lag under UPLOAD_BWLIMIT", body)


def capacity_ladder(quiet: Sequence[tuple[int, float]], loaded: Sequence[tuple[int, float]],
                    pass_p95: float) -> str:
    """Part lag p95 as recordings are added, on a quiet and on a loaded 2-core box."""
    width, height, left, right, top, bottom = 640, 360, 60, 150, 58, 300
    counts = sorted({c for c, _ in (*quiet, *loaded)})
    lo_c, hi_c = counts[0] - 25, counts[-1] + 25
    hi = 20.0

    def sx(c: float) -> float:
        return left + (c - lo_c) / (hi_c - lo_c) * (width - left - right)

    def sy(v: float) -> float:
        return bottom - min(v, hi) / hi * (bottom - top)

    body = [
        _text(left, 20, "Capacity ladder: part lag p95 by recordings", size=14, weight="bold"),
        _text(left, 38, "0.5 MB/s each, SeaweedFS on the same 2 cores, 60 s per count",
              fill=MUTED),
        _rect(left, sy(pass_p95), width - left - right, bottom - sy(pass_p95), fill=GOOD,
              opacity=0.08),
    ]
    for tick in range(0, int(hi) + 1, 5):
        body += [_line(left, sy(tick), width - right, sy(tick), stroke=GRID),
                 _text(left - 8, sy(tick) + 4, f"{tick} s", size=10, anchor="end", fill=MUTED)]
    for c in counts:
        body.append(_text(sx(c), bottom + 16, str(c), size=10, anchor="middle", fill=MUTED))
    body.append(_text((left + width - right) / 2, bottom + 34, "recordings at once",
                      anchor="middle", fill=MUTED))
    body.append(_line(left, sy(pass_p95), width - right, sy(pass_p95), stroke=GOOD, dash="5,3"))
    body.append(_text(width - right + 6, sy(pass_p95) + 4, f"pass: p95 <= {_n(pass_p95)} s",
                      size=10, fill=GOOD))
    for points, colour, label in ((quiet, ACCENT, "quiet box"), (loaded, MUTED, "loaded box")):
        path = " ".join(f"{_n(sx(c))},{_n(sy(v))}" for c, v in points)
        body.append(f"<polyline points='{path}' fill='none' stroke='{colour}' stroke-width='2'/>")
        for c, v in points:
            body += [_circle(sx(c), sy(v), 4, fill=colour),
                     _text(sx(c) + 6, sy(v) - 6, f"{v:.2f} s", size=10, fill=colour)]
        last = points[-1][1]
        body.append(_text(width - right + 6, sy(last) + 16, label, size=11, fill=colour))
    return _svg(width, height, "Capacity ladder", body)


def hostloss(rows: Sequence[tuple[str, str, float, float]]) -> str:
    """Seconds of recording lost with the host, without and with RPO_SECONDS=2."""
    width, left, right, top, bar_h = 680, 210, 150, 58, 18
    hi = 20.0
    bottom = top + (bar_h + 12) * len(rows)
    height = bottom + 60

    def sx(v: float) -> float:
        return left + v / hi * (width - left - right)

    body = [
        _text(left, 20, "Host loss: recording lost, by RPO_SECONDS", size=14, weight="bold"),
        _text(left, 38, "writer and cefmp4 killed at 10 random moments, then cefmp4 salvage",
              fill=MUTED),
    ]
    for t in range(0, int(hi) + 1, 5):
        body += [_line(sx(t), top - 6, sx(t), bottom, stroke=GRID),
                 _text(sx(t), bottom + 16, f"{t} s", size=10, anchor="middle", fill=MUTED)]
    for i, (rate, rpo, p50, worst) in enumerate(rows):
        y = top + (bar_h + 12) * i
        colour = BAD if rpo == "off" else GOOD
        body += [_text(left - 10, y + bar_h - 4, f"{rate}, RPO_SECONDS={rpo}", anchor="end"),
                 _rect(left, y, sx(worst) - left, bar_h, fill=colour, opacity=0.3),
                 _rect(left, y, sx(p50) - left, bar_h, fill=colour),
                 _text(sx(worst) + 6, y + bar_h - 4, f"p50 {_n(p50)} s, max {_n(worst)} s",
                       size=11)]
    body.append(_text(left, bottom + 40, "dark: p50; light: max over the 10 moments; seconds "
                      "of recording", size=10, fill=MUTED))
    return _svg(width, height, "Host loss by RPO_SECONDS", body)


def from_uplink_result(path: Path) -> tuple[tuple[Accuracy, ...], Lag]:
    """Accuracy rows and lag of a ``python -m bench.uplink`` result (its missing parts: the
    published figures)."""
    data = json.loads(path.read_text())
    rows = tuple(
        Accuracy(r["limit_mib_s"], r["streams"], r["achieved_over_limit"],
                 r["fullest_10s_over_limit"])
        for r in data.get("accuracy", ())
    ) or UPLINK_ACCURACY
    lag = data.get("lag")
    return rows, (Lag(lag["part_lag_p50"], lag["part_lag_p95"], lag["part_lag_max"],
                      lag["rec_lag_p50"], lag["rec_lag_p95"], lag["goal_p95"])
                  if lag else UPLINK_LAG)


def charts(uplink_json: Path | None = None) -> dict[str, str]:
    """File name -> SVG text."""
    accuracy, lag = (from_uplink_result(uplink_json) if uplink_json
                     else (UPLINK_ACCURACY, UPLINK_LAG))
    source = f"bench.uplink, {uplink_json.name}" if uplink_json else "bench.uplink, 2026-12-07"
    return {
        "uplink-accuracy.svg": uplink_accuracy(accuracy, source),
        "uplink-lag.svg": uplink_lag(lag),
        "capacity-ladder.svg": capacity_ladder(CAPACITY_QUIET, CAPACITY_LOADED,
                                               CAPACITY_PASS_P95),
        "hostloss.svg": hostloss(HOSTLOSS),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.charts",
                                     description="Write the benchmark charts as SVG.")
    parser.add_argument("--out", type=Path, default=OUT, help="directory (docs/charts)")
    parser.add_argument("--uplink-json", type=Path, help="a bench.uplink result file")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, svg in charts(args.uplink_json).items():
        (args.out / name).write_text(svg, encoding="utf-8")
        print(f"charts: wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
