"""Inline SVG charts for the HTML reports, with the standard library only.

A report has to open offline on any machine and be produced on a device that has no plotting
library, so every chart is an ``<svg>`` string: no scripts, no fonts or images fetched.

Every function takes plain numbers and returns an ``<svg>`` element with ``width``, ``height`` and
a ``viewBox`` (so CSS can scale it). Inputs may be empty, hold a single value or constant values, or
contain ``None``/NaN: the chart then says "no data" or centres the value instead of dividing by zero.
All text goes through :func:`xml.sax.saxutils.escape`, and user text never lands in an attribute.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
MARKER_COLORS = ("#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf")
FRONT_COLOR = "#d62728"
FONT = "system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"
CHAR_W = 6.2  # average glyph width at font-size 11, to size label columns without measuring text
MAX_LINE_POINTS = 1200  # per series; above this, min/max decimation keeps the spikes and the file small


# ---------------------------------------------------------------- numbers


def as_number(v: Any) -> float | None:
    """``v`` as a finite float, or None (None, NaN, inf, bools and strings are not data)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


_num = as_number


def _finite(values: Sequence[Any] | None) -> list[float]:
    return [f for f in (_num(v) for v in (values or [])) if f is not None]


def _nice(x: float, round_: bool) -> float:
    """1, 2 or 5 times a power of ten near ``x`` (Heckbert's "nice numbers")."""
    exp = math.floor(math.log10(x))
    f = x / 10 ** exp
    if round_:
        nf = 1 if f < 1.5 else 2 if f < 3 else 5 if f < 7 else 10
    else:
        nf = 1 if f <= 1 else 2 if f <= 2 else 5 if f <= 5 else 10
    return nf * 10 ** exp


def nice_ticks(lo: float, hi: float, n: int = 5, *, integer: bool = False) -> list[float]:
    """Round-numbered ticks whose first and last enclose [lo, hi]; always at least two distinct ticks.

    A constant range is widened (by 10% of the value, or by 1 around zero) so that one value or
    identical values still get an axis; ``integer`` keeps the step at 1 or more (counts).
    """
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi)) or hi == lo:
        pad = abs(lo) * 0.1 if lo else 1.0
        lo, hi = (max(lo - pad, 0.0) if integer and lo >= 0 else lo - pad), hi + pad
    step = _nice((hi - lo) / max(n - 1, 1), True)
    if integer:
        step = max(step, 1.0)
    start, end = math.floor(lo / step) * step, math.ceil(hi / step) * step
    count = max(1, int(round((end - start) / step)))
    digits = max(0, -math.floor(math.log10(step))) + 2
    return [round(start + i * step, digits) + 0.0 for i in range(count + 1)]  # + 0.0: no "-0"


def format_tick(v: float, step: float, span: float | None = None) -> str:
    """A tick label with as many decimals as the step needs.

    An axis reaching ``span`` (its largest absolute tick) of 10 000 or more is labelled in k/M/G,
    the same unit on every tick, so labels stay short and comparable.
    """
    if v == 0:
        return "0"
    scale, suffix = 1.0, ""
    for s, name in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if max(abs(v), step, span or 0.0) >= 10 * s:
            scale, suffix = s, name
            break
    st = step / scale
    decimals = max(0, -math.floor(math.log10(st) + 1e-9)) if st < 1 else 0
    return f"{v / scale:.{decimals}f}{suffix}"


def format_value(v: float) -> str:
    """A data value for a label: four significant digits, thousands separated."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def truncate(s: str, n: int) -> str:
    """``s`` cut to ``n`` characters keeping both ends: op names differ at the end, paths at the start."""
    s = str(s)
    if len(s) <= n:
        return s
    if n <= 3:
        return s[:n]
    head = max(1, (n - 1) // 3)
    return s[:head] + "…" + s[-(n - 1 - head):]


def _t(s: Any) -> str:
    """Text-node escaping (labels never go into attributes, so quotes need no escaping)."""
    return escape(str(s))


# ---------------------------------------------------------------- frame


@dataclass
class _Frame:
    """The plot area of a chart and the mapping from data to pixels."""

    width: int
    height: int
    xt: list[float]
    yt: list[float]
    left: float = 64
    right: float = 20
    top: float = 40
    bottom: float = 46

    @property
    def pw(self) -> float:
        return self.width - self.left - self.right

    @property
    def ph(self) -> float:
        return self.height - self.top - self.bottom

    def px(self, x: float) -> float:
        return self.left + (x - self.xt[0]) / (self.xt[-1] - self.xt[0]) * self.pw

    def py(self, y: float) -> float:
        return self.top + self.ph - (y - self.yt[0]) / (self.yt[-1] - self.yt[0]) * self.ph


def _open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="{FONT}" font-size="11" role="img">',
            f"<title>{_t(title)}</title>",
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
            f'<text x="{width / 2:.1f}" y="20" text-anchor="middle" font-size="14" font-weight="600" '
            f'fill="#222">{_t(title)}</text>']


def _close(parts: list[str]) -> str:
    return "\n".join([*parts, "</svg>"])


def empty_svg(title: str, message: str = "no data", *, width: int = 640, height: int = 120) -> str:
    """A placeholder chart that says why there is nothing to plot."""
    parts = _open(width, height, title)
    parts.append(f'<text x="{width / 2:.1f}" y="{height / 2 + 14:.1f}" text-anchor="middle" fill="#777">'
                 f"{_t(message)}</text>")
    return _close(parts)


def _axes(f: _Frame, x_label: str, y_label: str, *, y_grid: bool = True, x_grid: bool = False) -> list[str]:
    """Frame, grid, tick labels and axis titles."""
    out = []
    xstep, ystep = f.xt[1] - f.xt[0], f.yt[1] - f.yt[0]
    xspan, yspan = max(abs(f.xt[0]), abs(f.xt[-1])), max(abs(f.yt[0]), abs(f.yt[-1]))
    for y in f.yt:
        yy = f.py(y)
        if y_grid:
            out.append(f'<line x1="{f.left:.1f}" y1="{yy:.1f}" x2="{f.left + f.pw:.1f}" y2="{yy:.1f}" '
                       f'stroke="#e6e6e6"/>')
        out.append(f'<text x="{f.left - 6:.1f}" y="{yy + 4:.1f}" text-anchor="end" fill="#444">'
                   f"{_t(format_tick(y, ystep, yspan))}</text>")
    for x in f.xt:
        xx = f.px(x)
        if x_grid:
            out.append(f'<line x1="{xx:.1f}" y1="{f.top:.1f}" x2="{xx:.1f}" y2="{f.top + f.ph:.1f}" '
                       f'stroke="#e6e6e6"/>')
        out.append(f'<line x1="{xx:.1f}" y1="{f.top + f.ph:.1f}" x2="{xx:.1f}" y2="{f.top + f.ph + 4:.1f}" '
                   f'stroke="#555"/>')
        out.append(f'<text x="{xx:.1f}" y="{f.top + f.ph + 16:.1f}" text-anchor="middle" fill="#444">'
                   f"{_t(format_tick(x, xstep, xspan))}</text>")
    out.append(f'<rect x="{f.left:.1f}" y="{f.top:.1f}" width="{f.pw:.1f}" height="{f.ph:.1f}" fill="none" '
               f'stroke="#555"/>')
    out.append(f'<text x="{f.left + f.pw / 2:.1f}" y="{f.height - 8:.1f}" text-anchor="middle" fill="#222">'
               f"{_t(x_label)}</text>")
    if y_label:
        cy = f.top + f.ph / 2
        out.append(f'<text x="14" y="{cy:.1f}" transform="rotate(-90 14 {cy:.1f})" text-anchor="middle" '
                   f'fill="#222">{_t(y_label)}</text>')
    return out


def _legend(names: Sequence[tuple[str, str, bool]], x: float, y: float, max_x: float,
            max_chars: int = 28) -> list[str]:
    """One row of (name, colour, dashed) swatches under the title; names cut so the row fits."""
    out, cx = [], x
    for name, color, dashed in names:
        label = truncate(name, max_chars)
        w = 22 + len(label) * CHAR_W + 14
        if cx + w > max_x and cx > x:
            break
        dash = ' stroke-dasharray="5 3"' if dashed else ""
        out.append(f'<line x1="{cx:.1f}" y1="{y - 4:.1f}" x2="{cx + 18:.1f}" y2="{y - 4:.1f}" stroke="{color}" '
                   f'stroke-width="2.5"{dash}/>')
        out.append(f'<text x="{cx + 22:.1f}" y="{y:.1f}" fill="#333">{_t(label)}</text>')
        cx += w
    return out


# ---------------------------------------------------------------- histogram


def _bin(data: list[float], bins: int, xt: list[float]) -> tuple[list[int], list[float]]:
    """Counts and edges of ``bins`` equal bins over the data; one centred bin for constant data."""
    lo, hi = min(data), max(data)
    if hi == lo:
        half = (xt[-1] - xt[0]) / max(bins, 1) / 2
        return [len(data)], [lo - half, lo + half]
    bins = max(1, int(bins))
    w = (hi - lo) / bins
    counts = [0] * bins
    for v in data:
        counts[min(int((v - lo) / w), bins - 1)] += 1
    return counts, [lo + i * w for i in range(bins + 1)]


def histogram_svg(values: Sequence[float], *, bins: int = 30, title: str, x_label: str,
                  markers: Mapping[str, float] | None = None, y_label: str = "samples",
                  width: int = 640, height: int = 300) -> str:
    """Distribution of ``values`` with labelled vertical lines at ``markers`` (median, p99...).

    The shape shows what a mean hides: a second mode (a slower code path), a long tail (throttling).
    """
    data = _finite(values)
    if not data:
        return empty_svg(title, "no samples", width=width)
    marks = {k: v for k, v in ((k, _num(v)) for k, v in (markers or {}).items()) if v is not None}
    xt = nice_ticks(min([*data, *marks.values()]), max([*data, *marks.values()]), 6)
    counts, edges = _bin(data, bins, xt)
    f = _Frame(width, height, xt, nice_ticks(0, max(counts), 5, integer=True))
    parts = _open(width, height, title)
    parts += _axes(f, x_label, y_label)
    for i, c in enumerate(counts):
        if c:
            x0, x1 = f.px(edges[i]), f.px(edges[i + 1])
            y = f.py(c)
            parts.append(f'<rect x="{x0:.2f}" y="{y:.2f}" width="{max(x1 - x0 - 0.6, 0.8):.2f}" '
                         f'height="{f.py(0) - y:.2f}" fill="#1f77b4" fill-opacity="0.85">'
                         f"<title>{_t(format_value(edges[i]))} to {_t(format_value(edges[i + 1]))}: {c}</title>"
                         "</rect>")
    parts += _vlines(f, marks)
    return _close(parts)


def _vlines(f: _Frame, marks: Mapping[str, float]) -> list[str]:
    """Dashed vertical marker lines, labels staggered so close markers (median, p90) stay readable."""
    out = []
    for i, (name, v) in enumerate(marks.items()):
        x, color = f.px(v), MARKER_COLORS[i % len(MARKER_COLORS)]
        out.append(f'<line x1="{x:.1f}" y1="{f.top:.1f}" x2="{x:.1f}" y2="{f.top + f.ph:.1f}" stroke="{color}" '
                   f'stroke-width="1.5" stroke-dasharray="5 3"/>')
        anchor, dx = ("end", -4) if x > f.left + f.pw * 0.75 else ("start", 4)
        out.append(f'<text x="{x + dx:.1f}" y="{f.top + 12 + 13 * i:.1f}" text-anchor="{anchor}" fill="{color}">'
                   f"{_t(name)} {_t(format_value(v))}</text>")
    return out


# ---------------------------------------------------------------- lines


def _segments(xs: Sequence[Any], ys: Sequence[Any]) -> list[list[tuple[float, float]]]:
    """Runs of consecutive finite points; a None/NaN y breaks the line (used to split phases)."""
    segs: list[list[tuple[float, float]]] = [[]]
    for x, y in zip(xs, ys):
        fx, fy = _num(x), _num(y)
        if fx is None or fy is None:
            if segs[-1]:
                segs.append([])
            continue
        segs[-1].append((fx, fy))
    return [s for s in segs if s]


def _decimate(seg: list[tuple[float, float]], limit: int = MAX_LINE_POINTS) -> list[tuple[float, float]]:
    """At most about ``limit`` points: the min and max of each bucket, in order, so spikes survive."""
    if len(seg) <= limit:
        return seg
    size = math.ceil(len(seg) / (limit // 2))
    out = []
    for i in range(0, len(seg), size):
        chunk = seg[i:i + size]
        lo, hi = min(chunk, key=lambda p: p[1]), max(chunk, key=lambda p: p[1])
        out += sorted({lo, hi}, key=chunk.index)
    return out


def line_svg(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str, x_label: str,
             y_label: str, hlines: Mapping[str, float] | None = None, y_from_zero: bool = False,
             width: int = 640, height: int = 300) -> str:
    """Named (x, y) series with a legend and labelled dashed horizontal lines (an idle power level).

    A None y value leaves a gap, so one quantity can be drawn as several series by phase.
    """
    segs = {name: _segments(*xy) for name, xy in series.items()}
    lines = {k: v for k, v in ((k, _num(v)) for k, v in (hlines or {}).items()) if v is not None}
    xs = [p[0] for ss in segs.values() for s in ss for p in s]
    ys = [p[1] for ss in segs.values() for s in ss for p in s] + list(lines.values())
    if not xs:
        return empty_svg(title, "no data", width=width)
    ylo = min(0.0, min(ys)) if y_from_zero else min(ys)
    f = _Frame(width, height, nice_ticks(min(xs), max(xs), 7), nice_ticks(ylo, max(ys), 5), top=48)
    parts = _open(width, height, title)
    parts += _axes(f, x_label, y_label)
    legend = []
    for i, (name, ss) in enumerate(segs.items()):
        color = PALETTE[i % len(PALETTE)]
        legend.append((name, color, False))
        for s in ss:
            parts.append(_polyline(f, _decimate(s), color))
    for j, (name, v) in enumerate(lines.items()):
        color = MARKER_COLORS[j % len(MARKER_COLORS)]
        legend.append((f"{name} {format_value(v)}", color, True))
        y = f.py(v)
        parts.append(f'<line x1="{f.left:.1f}" y1="{y:.1f}" x2="{f.left + f.pw:.1f}" y2="{y:.1f}" stroke="{color}" '
                     f'stroke-width="1.5" stroke-dasharray="5 3"/>')
    parts += _legend(legend, f.left, 38, width - f.right)
    return _close(parts)


def _polyline(f: _Frame, seg: list[tuple[float, float]], color: str) -> str:
    if len(seg) == 1:
        x, y = seg[0]
        return f'<circle cx="{f.px(x):.1f}" cy="{f.py(y):.1f}" r="3" fill="{color}"/>'
    pts = " ".join(f"{f.px(x):.1f},{f.py(y):.1f}" for x, y in seg)
    return (f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.4" '
            f'stroke-linejoin="round"/>')


# ---------------------------------------------------------------- horizontal bars


def hbar_svg(labels: Sequence[str], values: Sequence[float], *, title: str, x_label: str,
             width: int = 640, bar_height: int = 18, max_label_chars: int = 34) -> str:
    """One bar per label, longest label column first, values printed at the bar ends.

    Labels (op names, model names) are cut in the middle to ``max_label_chars``; the full label is
    the bar's tooltip. Rows whose value is missing are skipped.
    """
    rows = [(str(lab), v) for lab, v in zip(labels, (_num(v) for v in values)) if v is not None]
    if not rows:
        return empty_svg(title, "no data", width=width)
    shown = [truncate(lab, max_label_chars) for lab, _ in rows]
    left = 12 + max(len(s) for s in shown) * CHAR_W
    height = int(40 + len(rows) * bar_height * 1.3 + 46)
    vals = [v for _, v in rows]
    f = _Frame(width, height, nice_ticks(min(0.0, min(vals)), max(0.0, max(vals)), 6), [0.0, float(len(rows))],
               left=left, right=56)
    parts = _open(width, height, title)
    parts += _hbar_axes(f, x_label)
    zero = f.px(0.0)
    for i, ((lab, v), short) in enumerate(zip(rows, shown)):
        yc = f.top + (i + 0.5) * f.ph / len(rows)
        x0, x1 = sorted((zero, f.px(v)))
        parts.append(f'<rect x="{x0:.1f}" y="{yc - bar_height / 2:.1f}" width="{max(x1 - x0, 0.5):.1f}" '
                     f'height="{bar_height}" fill="{PALETTE[0]}"><title>{_t(lab)}: {_t(format_value(v))}</title>'
                     "</rect>")
        parts.append(f'<text x="{f.left - 6:.1f}" y="{yc + 4:.1f}" text-anchor="end" fill="#222">{_t(short)}</text>')
        parts.append(f'<text x="{x1 + 4:.1f}" y="{yc + 4:.1f}" fill="#444">{_t(format_value(v))}</text>')
    return _close(parts)


def _hbar_axes(f: _Frame, x_label: str) -> list[str]:
    out = []
    step, span = f.xt[1] - f.xt[0], max(abs(f.xt[0]), abs(f.xt[-1]))
    for x in f.xt:
        xx = f.px(x)
        out.append(f'<line x1="{xx:.1f}" y1="{f.top:.1f}" x2="{xx:.1f}" y2="{f.top + f.ph:.1f}" stroke="#e6e6e6"/>')
        out.append(f'<text x="{xx:.1f}" y="{f.top + f.ph + 16:.1f}" text-anchor="middle" fill="#444">'
                   f"{_t(format_tick(x, step, span))}</text>")
    zero = f.px(0.0)
    out.append(f'<line x1="{zero:.1f}" y1="{f.top:.1f}" x2="{zero:.1f}" y2="{f.top + f.ph:.1f}" stroke="#555"/>')
    out.append(f'<text x="{f.left + f.pw / 2:.1f}" y="{f.height - 8:.1f}" text-anchor="middle" fill="#222">'
               f"{_t(x_label)}</text>")
    return out


# ---------------------------------------------------------------- scatter / Pareto


def pareto_front(points: Sequence[Mapping[str, Any]], minimize_y: bool = False) -> list[Mapping[str, Any]]:
    """The points no other point beats: lower-or-equal x and better-or-equal y, one of them strictly.

    x is always minimized (latency, size); y is maximized (accuracy) unless ``minimize_y`` (energy).
    Returns the front's point objects (the same dicts, extra keys kept) sorted by x; identical
    points are all kept. Points without a finite x and y are ignored.
    """
    sign = 1.0 if minimize_y else -1.0  # sign * y is the key to minimize
    valid = [p for p in points if _num(p.get("x")) is not None and _num(p.get("y")) is not None]
    ordered = sorted(valid, key=lambda p: (float(p["x"]), sign * float(p["y"])))
    front: list[Mapping[str, Any]] = []
    best = math.inf
    for p in ordered:
        key = sign * float(p["y"])
        if key < best or (front and key == best and float(p["x"]) == float(front[-1]["x"])
                          and float(p["y"]) == float(front[-1]["y"])):
            front.append(p)
            best = min(best, key)
    return front


def _padded_ticks(vals: list[float], n: int) -> list[float]:
    """Ticks with 4% room each side, so points and their labels do not sit on the frame."""
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.04
    return nice_ticks(lo - pad, hi + pad, n)


def scatter_svg(points: Sequence[Mapping[str, Any]], *, title: str, x_label: str, y_label: str,
                pareto: bool = True, minimize_y: bool = False, width: int = 640, height: int = 380) -> str:
    """Labelled points (``{"x", "y", "label"}``); with ``pareto``, the front highlighted and joined by a step line.

    The step line is the best y reachable for a given x budget: moving right along it only pays
    off where it steps up (or down, with ``minimize_y``).
    """
    pts = [p for p in points if _num(p.get("x")) is not None and _num(p.get("y")) is not None]
    if not pts:
        return empty_svg(title, "no points with both values", width=width)
    f = _Frame(width, height, _padded_ticks([float(p["x"]) for p in pts], 6),
               _padded_ticks([float(p["y"]) for p in pts], 5), top=48)
    parts = _open(width, height, title)
    parts += _axes(f, x_label, y_label, x_grid=True)
    front = pareto_front(pts, minimize_y) if pareto else []
    on_front = {id(p) for p in front}
    if front:
        better = "lower" if minimize_y else "higher"
        parts += _legend([(f"Pareto front (lower x, {better} y is better)", FRONT_COLOR, True)], f.left, 38,
                         width - f.right, max_chars=60)
        parts.append(_step_path(f, front))
    for p in sorted(pts, key=lambda p: id(p) in on_front):  # front drawn last, on top
        parts += _point(f, p, id(p) in on_front)
    return _close(parts)


def _step_path(f: _Frame, front: Sequence[Mapping[str, Any]]) -> str:
    """Staircase through the front: right at the current y, then up/down to the next point."""
    xy = [(f.px(float(p["x"])), f.py(float(p["y"]))) for p in front]
    d = [f"M{xy[0][0]:.1f},{xy[0][1]:.1f}"]
    for (_, y0), (x1, y1) in zip(xy, xy[1:]):
        d.append(f"L{x1:.1f},{y0:.1f} L{x1:.1f},{y1:.1f}")
    d.append(f"L{f.left + f.pw:.1f},{xy[-1][1]:.1f}")
    return (f'<path d="{" ".join(d)}" fill="none" stroke="{FRONT_COLOR}" stroke-width="1.5" '
            f'stroke-dasharray="5 3"/>')


def _point(f: _Frame, p: Mapping[str, Any], front: bool) -> list[str]:
    x, y = f.px(float(p["x"])), f.py(float(p["y"]))
    label = str(p.get("label", ""))
    fill, r = (FRONT_COLOR, 5.5) if front else (PALETTE[0], 4.0)
    tip = f"{label}: x={format_value(float(p['x']))}, y={format_value(float(p['y']))}"
    anchor, dx = ("end", -8) if x > f.left + f.pw * 0.7 else ("start", 8)
    weight = ' font-weight="600"' if front else ""
    return [f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{fill}" stroke="#fff" stroke-width="1">'
            f"<title>{_t(tip)}</title></circle>",
            f'<text x="{x + dx:.1f}" y="{y - 6:.1f}" text-anchor="{anchor}" fill="#222"{weight}>'
            f"{_t(truncate(label, 26))}</text>"]
