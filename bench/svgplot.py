"""A tiny dependency-free SVG line chart, for the benchmark's plots in docs/.

    from svgplot import Series, Band, line_chart
    svg = line_chart("RSS over time", "minutes", "MiB", [Series("total", [(0, 80), (1, 81)])],
                     bands=[Band("+-10%", 72, 88)], refs=[("1 GB", 1024)])
    Path("docs/plot.svg").write_text(svg)

What is drawn: a title, both axes with ~6 "nice" ticks (or the x values themselves on a log2 axis,
xlog=True, e.g. for concurrency 1, 2, 4 ... 64), one polyline with dot markers per series in its own
colour, a legend right of the plot, optional horizontal reference lines (dashed, labelled) and shaded
bands. The output is a standalone SVG 1.1 file: no external fonts, CSS or scripts, so a browser
and GitHub render it as is. `python3 bench/svgplot.py out.svg` writes a sample.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from xml.sax.saxutils import escape

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f"]


@dataclass
class Series:
    name: str
    points: list[tuple[float, float]]
    dashed: bool = False
    colour: str | None = None  # default: the next of COLOURS


@dataclass
class Band:
    """A shaded horizontal band from low to high (e.g. +-10% around a first sample)."""

    label: str
    low: float
    high: float


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering low..high (steps of 1, 2 or 5 times a power of ten)."""
    if high <= low:
        high = low + 1
    raw = (high - low) / max(1, count - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    # a value just past a tick (a sample at 3.003 minutes) does not add a tick of its own
    return [first + i * step for i in range(int(math.ceil((high - first) / step - 0.02)) + 1)]


def label(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 or value == int(value) else f"{value:.3g}"


def line_chart(
    title: str,
    xlabel: str,
    ylabel: str,
    series: list[Series],
    refs: list[tuple[str, float]] = (),
    bands: list[Band] = (),
    xlog: bool = False,
    ylog: bool = False,
    ymin: float | None = 0,
    width: int = 960,
    height: int = 450,
) -> str:
    """The SVG text of one line chart; ymin=None lets the y axis start near the data's minimum; ylog=True
    draws y on a log10 axis (ticks at 1, 2, 5 times powers of ten; values <= 0 are dropped)."""
    left, right, top, bottom = 70, 230, 40, 55  # the legend sits right of the plot
    xs = [x for s in series for x, _ in s.points] or [0, 1]
    ys = [y for s in series for _, y in s.points] + [v for _, v in refs] + [v for b in bands for v in (b.low, b.high)]
    ys = ys or [0, 1]
    low = min(ys) if ymin is None else min(ymin, min(ys))
    yticks = nice_ticks(low - (0 if ymin is not None else 0.02 * (max(ys) - low)), max(ys) * 1.05 or 1)
    fy = lambda v: v  # noqa: E731
    if ylog:
        positive = [y for y in ys if y > 0] or [1]
        lo, hi = math.floor(math.log10(min(positive))), math.ceil(math.log10(max(positive)))
        yticks = [m * 10**e for e in range(lo, hi + 1) for m in (1, 2, 5) if m * 10**e <= 10**hi]
        fy = lambda v: math.log10(max(v, 10**lo))  # noqa: E731
    if xlog:
        xticks = sorted(set(xs))
        fx = (lambda v: math.log2(max(v, 1e-9))) if min(xs) > 0 else (lambda v: v)
    else:
        xticks, fx = nice_ticks(min(xs), max(xs)), (lambda v: v)
    x0, x1 = fx(xticks[0]), fx(xticks[-1])
    y0, y1 = fy(yticks[0]), fy(yticks[-1])
    plot_w, plot_h = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (fx(x) - x0) / ((x1 - x0) or 1) * plot_w

    def py(y: float) -> float:
        return top + plot_h - (fy(y) - y0) / ((y1 - y0) or 1) * plot_h

    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{width / 2}" y="22" text-anchor="middle" font-size="16" font-weight="bold">{escape(title)}</text>',
    ]
    for band in bands:
        top_y, low_y = py(min(band.high, yticks[-1])), py(max(band.low, yticks[0]))
        out.append(
            f'<rect x="{left}" y="{top_y:.1f}" width="{plot_w}" height="{max(0.0, low_y - top_y):.1f}" '
            f'fill="#2ca02c" fill-opacity="0.12"><title>{escape(band.label)}</title></rect>'
        )
        out.append(f'<text x="{left + 6}" y="{top_y + 14:.1f}" fill="#2a7a2a">{escape(band.label)}</text>')
    for value in yticks:
        y = py(value)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{label(value)}</text>')
    for value in xticks:
        x = px(value)
        out.append(f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 5}" stroke="#000"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 18}" text-anchor="middle">{label(value)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#000"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{height - 12}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text x="16" y="{top + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 16 {top + plot_h / 2})">{escape(ylabel)}</text>'
    )
    for name, value in refs:
        y = py(value)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}" stroke="#555" stroke-dasharray="6,4"/>'
        )
        out.append(f'<text x="{left + plot_w - 4}" y="{y - 4:.1f}" text-anchor="end" fill="#555">{escape(name)}</text>')
    for i, s in enumerate(series):
        colour = s.colour or COLOURS[i % len(COLOURS)]
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(s.points))
        out.append(f'<g class="series"><title>{escape(s.name)}</title>')
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in s.points]
        out.append("</g>")
    legend_x, legend_y = left + plot_w + 20, top + 4
    out.append(
        f'<rect x="{legend_x - 8}" y="{legend_y - 4}" width="{right - 20}" height="{18 * len(series) + 6}" '
        'fill="#ffffff" fill-opacity="0.85" stroke="#999"/>'
    )
    for i, s in enumerate(series):
        colour, y = s.colour or COLOURS[i % len(COLOURS)], legend_y + 18 * i + 9
        dash = ' stroke-dasharray="5,3"' if s.dashed else ""
        line = f'x1="{legend_x}" y1="{y}" x2="{legend_x + 22}" y2="{y}"'
        out.append(f'<line {line} stroke="{colour}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{legend_x + 28}" y="{y + 4}">{escape(s.name)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    demo = [Series("p50", [(1, 2.0), (2, 2.1), (4, 2.5), (8, 4.0)]), Series("p99", [(1, 3), (2, 4), (4, 6), (8, 11)])]
    text = line_chart("sample", "concurrency", "ms", demo, refs=[("10 ms", 10)], bands=[Band("ok", 0, 5)], xlog=True)
    with open(sys.argv[1] if len(sys.argv) > 1 else "sample.svg", "w") as file:
        file.write(text)
