"""Small inline-SVG plots for the HTML reports (no plotting library): line plots and bar charts.

Every plot is an ``<svg class="np-plot">`` whose attributes record its mapping from data to pixels, so a reader
(or a test) can turn the drawn coordinates back into data: ``data-box`` = "left top right bottom" of the plot
area in SVG units, ``data-x`` / ``data-y`` = "min max" of the axes, ``data-log-y`` = "1" for a log10 y axis.
Each series is a ``<path class="np-series" data-name=...>``; its ``data-values`` holds the plotted [x, y] pairs
(for the hover read-out of ``report.js``).
"""
from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field

WIDTH, HEIGHT = 440, 250
MARGIN = (58, 30, 14, 38)  # left, top, right, bottom
PALETTE = ("#2f6fdf", "#e0712c", "#3a9d5d", "#c43d6b", "#7b5cc4", "#8c8c1e", "#2aa0a8", "#8a6240")


@dataclass
class Series:
    """One line: ``x`` and ``y`` values (NaN/None gaps are skipped), drawn with markers when ``markers``."""

    name: str
    x: list[float]
    y: list[float]
    colour: str | None = None
    markers: bool = False
    dashed: bool = False
    points: list[tuple[float, float]] = field(init=False)

    def __post_init__(self):
        self.points = [(float(a), float(b)) for a, b in zip(self.x, self.y)
                       if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(s * mag for s in (1, 2, 2.5, 5, 10) if s * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + k * step, 12) for k in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e5 or abs(value) < 1e-3:
        return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{value:.6g}"


def _range(values: list[float], log: bool, include_zero: bool) -> tuple[float, float]:
    lo, hi = min(values), max(values)
    if log:
        return math.log10(lo), math.log10(hi) if hi > lo else math.log10(lo) + 1
    if include_zero:
        lo = min(lo, 0.0)
    if hi == lo:
        hi, lo = hi + (abs(hi) or 1) * 0.5, lo - (abs(lo) or 1) * 0.5
    pad = 0.05 * (hi - lo)
    return (lo if include_zero and lo == 0 else lo - pad), hi + pad


def line_plot(series: list[Series], title: str, x_label: str = "step", y_label: str = "", log_y: bool | None = None,
              include_zero: bool = False, hlines: list[tuple[str, float, str]] = (), y_limits=None) -> str:
    """An SVG line plot. ``log_y=None`` picks a log10 axis when every value is positive and they span more than
    a factor of 20. ``hlines``: (name, y, colour) horizontal reference lines. ``y_limits``: fixed (lo, hi)."""
    series = [s for s in series if s.points]
    for k, s in enumerate(series):
        s.colour = s.colour or PALETTE[k % len(PALETTE)]
    ys = [y for s in series for _, y in s.points] + [y for _, y, _ in hlines]
    xs = [x for s in series for x, _ in s.points]
    if not ys:
        return (f'<svg class="np-plot np-empty" viewBox="0 0 {WIDTH} 60" width="{WIDTH}" height="60">'
                f'<text x="8" y="20" class="np-title">{html.escape(title)}</text>'
                f'<text x="8" y="44" class="np-note">nothing logged yet</text></svg>')
    if log_y is None:
        log_y = min(ys) > 0 and max(ys) / min(ys) > 20
    if log_y and min(ys) <= 0:
        raise ValueError(f"plot {title!r}: a log axis needs positive values")
    left, top, right, bottom = MARGIN[0], MARGIN[1], WIDTH - MARGIN[2], HEIGHT - MARGIN[3]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    y0, y1 = (math.log10(y_limits[0]), math.log10(y_limits[1])) if (y_limits and log_y) else (
        y_limits or _range(ys, log_y, include_zero))

    def px(x):
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y):
        v = math.log10(y) if log_y else y
        return bottom - (v - y0) / (y1 - y0) * (bottom - top)

    out = [(f'<svg class="np-plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'data-box="{left} {top} {right} {bottom}" data-x="{x0:.9g} {x1:.9g}" data-y="{y0:.9g} {y1:.9g}" '
            f'data-log-y="{int(log_y)}" role="img" aria-label="{html.escape(title)}">'),
           f'<text x="{left}" y="16" class="np-title">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" class="np-frame"/>']
    if log_y:
        decades = range(math.floor(y0), math.ceil(y1) + 1)
        y_ticks = [10.0 ** d * m for d in decades for m in ((1, 2, 5) if y1 - y0 < 3 else (1,))]
        y_ticks = [t for t in y_ticks if y0 - 1e-9 <= math.log10(t) <= y1 + 1e-9]
    else:
        y_ticks = [t for t in nice_ticks(y0, y1) if y0 - 1e-9 <= t <= y1 + 1e-9]
    for t in y_ticks:
        y = py(t)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="np-grid"/>'
                   f'<text x="{left - 5}" y="{y + 3.5:.1f}" class="np-tick" text-anchor="end">{_label(t)}</text>')
    for t in nice_ticks(x0, x1):
        if x0 - 1e-9 <= t <= x1 + 1e-9:
            x = px(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{bottom}" class="np-grid"/>'
                       f'<text x="{x:.1f}" y="{bottom + 14}" class="np-tick" text-anchor="middle">{_label(t)}</text>')
    out.append(f'<text x="{(left + right) / 2}" y="{HEIGHT - 6}" class="np-axis" text-anchor="middle">'
               f'{html.escape(x_label)}</text>')
    if y_label:
        out.append(f'<text transform="translate(13 {(top + bottom) / 2}) rotate(-90)" class="np-axis" '
                   f'text-anchor="middle">{html.escape(y_label)}</text>')
    for name, value, colour in hlines:
        y = py(value)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.2f}" y2="{y:.2f}" stroke="{colour}" class="np-hline" '
                   f'data-name="{html.escape(name)}" data-value="{value:.9g}"/>')
    for s in series:
        d = " ".join(f"{'M' if k == 0 else 'L'}{px(x):.2f},{py(y):.2f}" for k, (x, y) in enumerate(s.points))
        values = html.escape(json.dumps([[x, float(f"{y:.6g}")] for x, y in s.points], separators=(",", ":")))
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        out.append(f'<path class="np-series" data-name="{html.escape(s.name)}" d="{d}" stroke="{s.colour}"{dash} '
                   f'data-values="{values}"/>')
        if s.markers:
            out.extend(f'<circle cx="{px(x):.2f}" cy="{py(y):.2f}" r="2.6" fill="{s.colour}"><title>'
                       f'{html.escape(s.name)}: {y:.4g} at {x:g}</title></circle>' for x, y in s.points)
    legend = [(s.name, s.colour, s.dashed) for s in series] + [(n, c, True) for n, _, c in hlines]
    if len(legend) > 1 or hlines:
        x = right
        for name, colour, dashed in reversed(legend):
            width = 7 * len(name) + 24
            x -= width
            dash = ' stroke-dasharray="4 2"' if dashed else ""
            out.append(f'<line x1="{x:.0f}" x2="{x + 16:.0f}" y1="{top - 8}" y2="{top - 8}" stroke="{colour}" '
                       f'stroke-width="2"{dash}/><text x="{x + 20:.0f}" y="{top - 4}" class="np-legend">'
                       f'{html.escape(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(labels: list[str], values: list[float], title: str, y_label: str = "", y_limits=(0.0, 1.0),
              colour: str = PALETTE[0]) -> str:
    """An SVG bar chart, one bar per label in the given order; bars carry ``data-label`` and ``data-value``."""
    left, top, right, bottom = MARGIN[0], MARGIN[1], WIDTH - MARGIN[2], HEIGHT - MARGIN[3]
    y0, y1 = y_limits
    n = max(len(values), 1)
    slot = (right - left) / n
    out = [(f'<svg class="np-plot np-bars" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
            f'data-box="{left} {top} {right} {bottom}" data-y="{y0:.9g} {y1:.9g}" data-log-y="0" role="img" '
            f'aria-label="{html.escape(title)}">'),
           f'<text x="{left}" y="16" class="np-title">{html.escape(title)}</text>',
           f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" class="np-frame"/>']
    for t in nice_ticks(y0, y1):
        y = bottom - (t - y0) / (y1 - y0) * (bottom - top)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="np-grid"/>'
                   f'<text x="{left - 5}" y="{y + 3.5:.1f}" class="np-tick" text-anchor="end">{_label(t)}</text>')
    if y_label:
        out.append(f'<text transform="translate(13 {(top + bottom) / 2}) rotate(-90)" class="np-axis" '
                   f'text-anchor="middle">{html.escape(y_label)}</text>')
    for k, (label, value) in enumerate(zip(labels, values)):
        h = (min(max(value, y0), y1) - y0) / (y1 - y0) * (bottom - top)
        x = left + k * slot + 0.12 * slot
        out.append(f'<rect class="np-bar" x="{x:.2f}" y="{bottom - h:.2f}" width="{0.76 * slot:.2f}" height="{h:.2f}" '
                   f'fill="{colour}" data-label="{html.escape(label)}" data-value="{value:.9g}"><title>'
                   f'{html.escape(label)}: {value:.4f}</title></rect>')
        if k % max(1, math.ceil(n / 10)) == 0:  # at most about 10 labels
            out.append(f'<text x="{x + 0.38 * slot:.1f}" y="{bottom + 13}" class="np-tick" text-anchor="middle">'
                       f'{html.escape(label[:6])}</text>')
    out.append("</svg>")
    return "".join(out)
