"""A small SVG writer: scales, axes, lines, bars, bands and labels as text, no dependencies.

Why our own: the pictures are a few lines, bars and bands (``inspect --html``'s report, the
benchmark's charts); a plotting library would be a large runtime dependency for that. Every
function is pure and returns a string. Every piece of text goes through ``esc`` (escaped
for XML and HTML, characters XML cannot hold replaced), so a label that came from an
uploaded file (an origin's package name) cannot leave its element, in a standalone ``.svg``
file or inlined in a page.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

FONT = "DejaVu Sans, Liberation Sans, Arial, Helvetica, sans-serif"
INK = "#222"
MUTED = "#666"
GRID = "#e3e3e3"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")

Point = tuple[float, float]
Tick = tuple[float, str]


def esc(value: object) -> str:
    """Text safe inside an element or a quoted attribute, in SVG (XML) and in HTML."""
    return html.escape(_NOT_XML.sub("\ufffd", str(value)), quote=True)


def num(v: float) -> str:
    """A coordinate: at most one decimal, no trailing zero."""
    text = f"{v:.1f}"
    return text[:-2] if text.endswith(".0") else text


@dataclass(frozen=True, slots=True)
class Scale:
    """Data ``lo..hi`` onto pixels ``a..b`` (``b < a`` for a y axis), linear or log10."""

    lo: float
    hi: float
    a: float
    b: float
    log: bool = False

    def __call__(self, v: float) -> float:
        lo, hi, v = ((math.log10(x) for x in (self.lo, self.hi, max(v, 1e-12)))
                     if self.log else (self.lo, self.hi, v))
        span = hi - lo or 1.0
        return self.a + (v - lo) / span * (self.b - self.a)


@dataclass(frozen=True, slots=True)
class Plot:
    """A plot area inside a picture of ``width`` x ``height``: margins and the two scales."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    x: Scale
    y: Scale


def plot(width: int, height: int, x: tuple[float, float], y: tuple[float, float], *,
         margins: tuple[int, int, int, int] = (56, 30, 20, 42), x_log: bool = False,
         y_log: bool = False) -> Plot:
    """The plot area for data ranges ``x`` and ``y``; ``margins``: left, top, right, bottom."""
    left, top, right, bottom = margins
    x_scale = Scale(x[0], x[1], left, width - right, x_log)
    y_scale = Scale(y[0], y[1], height - bottom, top, y_log)
    return Plot(width, height, left, top, width - right, height - bottom, x_scale, y_scale)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round values from ``lo`` to ``hi``: steps of 1, 2, 2.5 or 5 times a power of ten."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    count = int((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 10) for i in range(count)]


def nice_domain(lo: float, hi: float, n: int = 5) -> tuple[list[float], float, float]:
    """Round ticks covering ``lo..hi`` and the axis range they span (the last tick at or
    above ``hi``, so the highest value never touches the frame unlabelled)."""
    ticks = nice_ticks(lo, hi, n)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else max(abs(hi - lo), 1.0)
    while ticks[0] > lo:
        ticks.insert(0, round(ticks[0] - step, 10))
    while ticks[-1] < hi:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks, ticks[0], ticks[-1]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten from ``lo`` to ``hi`` (and 2 and 5 times them when there are few)."""
    powers = [10.0 ** e for e in range(math.floor(math.log10(lo)),
                                       math.ceil(math.log10(hi)) + 1)]
    inside = [t for t in powers if lo * 0.999 <= t <= hi * 1.001]
    if len(inside) > 3:
        return inside
    return [t for t in sorted({m * p for p in powers for m in (1, 2, 5)})
            if lo * 0.999 <= t <= hi * 1.001]


def label_num(v: float) -> str:
    """A tick label: 1,000 / 2.5 / 0.1 (thousands separated, no needless decimals)."""
    if abs(v) >= 1000 or float(v).is_integer():
        return f"{v:,.0f}"
    return f"{v:,.2f}".rstrip("0").rstrip(".")


_TIME_STEPS_MIN = (5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080)


def time_ticks(lo_ms: float, hi_ms: float, max_ticks: int = 9) -> list[Tick]:
    """Ticks for a wall-clock axis (milliseconds read as local time): the time of day for
    steps under a day, with the date at midnight; the date for longer steps."""
    span_min = (hi_ms - lo_ms) / 60_000
    step_min = next((s for s in _TIME_STEPS_MIN if span_min / s <= max_ticks), 10080)
    step = step_min * 60_000
    t = math.ceil(lo_ms / step) * step
    out: list[Tick] = []
    while t <= hi_ms:
        when = datetime.fromtimestamp(t / 1000, UTC)
        if step_min >= 1440 or (when.hour == 0 and when.minute == 0):
            text = f"{when:%b} {when.day}"
        else:
            text = f"{when:%H:%M}"
        out.append((t, text))
        t += step
    return out


def text(x: float, y: float, content: object, *, size: int = 11, anchor: str = "start",
         color: str = INK, weight: str = "normal", rotate: bool = False,
         halo: bool = False) -> str:
    """One line of text at (x, y); ``rotate``: turned to read upwards (a y axis title);
    ``halo``: a white outline, so a label stays legible across a line or a bar."""
    turn = f' transform="rotate(-90 {num(x)} {num(y)})"' if rotate else ""
    bold = ' font-weight="bold"' if weight == "bold" else ""
    ring = (' stroke="#fff" stroke-width="3" stroke-linejoin="round" paint-order="stroke"'
            if halo else "")
    return (f'<text x="{num(x)}" y="{num(y)}" font-size="{size}" text-anchor="{anchor}" '
            f'fill="{color}"{bold}{turn}{ring}>{esc(content)}</text>')


def rect(x: float, y: float, w: float, h: float, fill: str, *, opacity: float = 1.0,
         title: object = None, stroke: str = "") -> str:
    """A rectangle in pixels; ``title``: its tooltip (escaped)."""
    extra = f' fill-opacity="{opacity:g}"' if opacity < 1 else ""
    if stroke:
        extra += f' stroke="{stroke}"'
    tip = f"<title>{esc(title)}</title>" if title is not None else ""
    end = f">{tip}</rect>" if tip else "/>"
    return (f'<rect x="{num(x)}" y="{num(y)}" width="{num(max(0.0, w))}" '
            f'height="{num(max(0.0, h))}" fill="{fill}"{extra}{end}')


def line(x1: float, y1: float, x2: float, y2: float, *, color: str = INK,
         width: float = 1.0, dash: str = "") -> str:
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<line x1="{num(x1)}" y1="{num(y1)}" x2="{num(x2)}" y2="{num(y2)}" '
            f'stroke="{color}" stroke-width="{width:g}"{d}/>')


def axes(p: Plot, x_ticks: Sequence[Tick], y_ticks: Sequence[Tick], *, x_title: str = "",
         y_title: str = "", grid: bool = True) -> str:
    """Frame, grid lines, tick labels and axis titles of a plot area."""
    out = []
    for value, label in y_ticks:
        y = p.y(value)
        if grid:
            out.append(line(p.left, y, p.right, y, color=GRID))
        out.append(text(p.left - 6, y + 4, label, size=10, anchor="end", color=MUTED))
    for value, label in x_ticks:
        x = p.x(value)
        if grid:
            out.append(line(x, p.top, x, p.bottom, color=GRID))
        out.append(text(x, p.bottom + 15, label, size=10, anchor="middle", color=MUTED))
    out.append(line(p.left, p.bottom, p.right, p.bottom, color=MUTED))
    out.append(line(p.left, p.top, p.left, p.bottom, color=MUTED))
    if x_title:
        out.append(text((p.left + p.right) / 2, p.height - 6, x_title, anchor="middle",
                        color=MUTED))
    if y_title:
        out.append(text(13, (p.top + p.bottom) / 2, y_title, anchor="middle", color=MUTED,
                        rotate=True))
    return "\n".join(out)


def numeric_ticks(values: Iterable[float]) -> list[Tick]:
    return [(v, label_num(v)) for v in values]


def polyline(p: Plot, points: Iterable[Point], *, color: str, width: float = 1.5,
             dash: str = "") -> str:
    """One line through ``points`` (data coordinates); empty for fewer than two."""
    coords = " ".join(f"{num(p.x(x))},{num(p.y(y))}" for x, y in points)
    if coords.count(",") < 2:
        return ""
    d = f' stroke-dasharray="{dash}"' if dash else ""
    return (f'<polyline points="{coords}" fill="none" stroke="{color}" '
            f'stroke-width="{width:g}" stroke-linejoin="round"{d}/>')


def dots(p: Plot, points: Iterable[Point], *, color: str, r: float = 2.5) -> str:
    """A small circle at each point (data coordinates)."""
    return "".join(f'<circle cx="{num(p.x(x))}" cy="{num(p.y(y))}" r="{r:g}" fill="{color}"/>'
                   for x, y in points)


def legend(x: float, y: float, items: Sequence[tuple[str, str, str]],
           max_x: float = 10_000) -> str:
    """Legend entries (label, colour, ``line``/``dash``/``box``) in a row from (x, y),
    wrapped onto a next row before ``max_x``."""
    out = []
    x0 = x
    for label, color, kind in items:
        if x > x0 and x + 18 + 5.8 * len(label) > max_x:
            x, y = x0, y + 16
        if kind == "box":
            out.append(rect(x, y - 9, 12, 10, color))
        else:
            out.append(line(x, y - 4, x + 14, y - 4, color=color, width=2,
                            dash="5 3" if kind == "dash" else ""))
        out.append(text(x + 18, y, label, size=10, color=INK))
        x += 28 + 5.8 * len(label)
    return "\n".join(out)


def document(width: int, height: int, body: Iterable[str], *, title: str,
             standalone: bool = True) -> str:
    """The ``<svg>`` element: with the XML declaration and namespace when ``standalone``
    (a ``.svg`` file), without the declaration when inlined in HTML."""
    head = '<?xml version="1.0" encoding="UTF-8"?>\n' if standalone else ""
    return (f'{head}<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
            f'font-family="{FONT}" aria-label="{esc(title)}">\n<title>{esc(title)}</title>\n'
            f'<rect width="{width}" height="{height}" fill="#fff"/>\n'
            + "\n".join(b for b in body if b) + "\n</svg>\n")


def thin(points: Sequence[Point], max_points: int) -> list[Point]:
    """At most about ``max_points`` points, keeping each bucket's lowest and highest (so
    spikes survive) in time order; ``points`` sorted by x."""
    if len(points) <= max_points:
        return list(points)
    size = math.ceil(len(points) / max(1, max_points // 2))
    out: list[Point] = []
    for i in range(0, len(points), size):
        bucket = points[i:i + size]
        lo = min(bucket, key=lambda pt: pt[1])
        hi = max(bucket, key=lambda pt: pt[1])
        out.extend(sorted({lo, hi}))
    return out


def runs(points: Sequence[Point], max_gap: float) -> list[list[Point]]:
    """``points`` (sorted by x) split where consecutive x are more than ``max_gap`` apart,
    so a line is not drawn across a gap in the data."""
    out: list[list[Point]] = []
    for pt in points:
        if out and pt[0] - out[-1][-1][0] <= max_gap:
            out[-1].append(pt)
        else:
            out.append([pt])
    return out
