"""Per-site delivery rates over a simulation's virtual time: a CSV table and an SVG plot.

`rate_series` buckets each site's delivery times (seconds from the start) into
intervals and gives deliveries per minute in each; `rates_csv` and `rates_svg`
render the same series. The SVG is written by hand (polylines on a grid, axes
labelled), so it needs no plotting library and opens in any browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")


def rate_series(
    delivered_at: Mapping[str, Sequence[float]], simulated_s: float, interval_s: float
) -> tuple[list[float], dict[str, list[float]]]:
    """Interval starts (seconds) and, per site, deliveries per minute in each interval."""
    buckets = max(1, math.ceil(simulated_s / interval_s))
    starts = [i * interval_s for i in range(buckets)]
    series = {}
    for site, times in delivered_at.items():
        counts = [0] * buckets
        for t in times:
            counts[min(int(t // interval_s), buckets - 1)] += 1
        series[site] = [n * 60.0 / interval_s for n in counts]
    return starts, series


def rates_csv(starts: Sequence[float], series: Mapping[str, Sequence[float]]) -> str:
    sites = sorted(series)
    lines = [",".join(["minute", *sites])]
    for i, start in enumerate(starts):
        lines.append(",".join([f"{start / 60:g}", *(f"{series[s][i]:g}" for s in sites)]))
    return "\n".join(lines) + "\n"


def rates_svg(starts: Sequence[float], series: Mapping[str, Sequence[float]], interval_s: float,
              *, title: str = "deliveries per minute, by site") -> str:
    width, height, left, right, top, bottom = 800, 420, 60, 20, 40, 110
    plot_w, plot_h = width - left - right, height - top - bottom
    end_min = (starts[-1] + interval_s) / 60 if starts else 1.0
    peak = max((v for values in series.values() for v in values), default=0.0)
    y_max = _nice(peak)

    def x(minute: float) -> float:
        return left + plot_w * minute / end_min

    def y(rate: float) -> float:
        return top + plot_h * (1 - rate / y_max)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for k in range(5):
        rate = y_max * k / 4
        out.append(f'<line x1="{left}" y1="{y(rate):.1f}" x2="{width - right}" y2="{y(rate):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(rate) + 4:.1f}" text-anchor="end">{rate:g}</text>')
    for k in range(6):
        minute = end_min * k / 5
        out.append(f'<text x="{x(minute):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{_clock(minute)}</text>')
    out.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h + 34}" text-anchor="middle">simulated time</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="black"/>')
    out.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>')
    for n, site in enumerate(sorted(series)):
        colour = COLOURS[n % len(COLOURS)]
        points = []
        for start, rate in zip(starts, series[site]):
            points.append(f"{x(start / 60):.1f},{y(rate):.1f}")
            points.append(f"{x((start + interval_s) / 60):.1f},{y(rate):.1f}")
        out.append(f'<polyline class="site" data-site="{escape(site)}" fill="none" stroke="{colour}" '
                   f'stroke-width="1.5" points="{" ".join(points)}"/>')
        ly = top + plot_h + 52 + 16 * (n % 3)
        lx = left + 250 * (n // 3)
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="12" height="3" fill="{colour}"/>')
        out.append(f'<text x="{lx + 18}" y="{ly - 4}">{escape(site[:36])}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _nice(peak: float) -> float:
    """A round upper bound for the rate axis."""
    if peak <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(peak))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= peak)


def _clock(minute: float) -> str:
    h, m = divmod(int(round(minute)), 60)
    return f"{h}h{m:02d}" if h else f"{m}m"
