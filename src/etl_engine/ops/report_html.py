"""``etl-engine inspect --html``: one self-contained page about one file, data drawn inline.

What is drawn is the record type's ``Chart`` (``domain/records/spec.py``: each type's file
declares one, or none for no drawing); this module knows the chart *kinds* and names no
record type, so a new type gets its drawing from its own file. The records drawn are those
validation kept (the same records the statistics used; where the statistics chose one data
origin per day or night, only that origin's). The kinds:

- ``glucose`` (blood glucose): the trace over the local day(s), on the consensus range
  bands of ``docs/clinical.md`` (very low < 54, low 54-69, in range 70-180, high 181-250,
  very high > 250 mg/dL); meter readings as dots, a CGM as a line broken where readings are
  more than two sampling intervals apart (the episodes' continuity rule);
- ``samples`` (heart rate): the samples over time, broken at the chart's gap;
- ``readings`` (heart-rate variability): instant readings over time, a line broken at the
  chart's gap;
- ``hypnogram`` (sleep): a hypnogram per session (awake, REM, light, deep; out of bed,
  unstaged sleep and unknown when present);
- ``hourly_bars`` (steps, active calories): per hour, each record in the hour it started,
  where the records are at most an hour long; a file of longer records (daily totals) shows
  the statistics' daily totals instead.

The narrative, the quality report, the checks, the warnings and the training record stand
beside the drawing. Pure functions: the page is a string. Every value that came from the
file or the environment is escaped (``svg.esc``), and the page allows no script, no
request and no style from outside (a Content-Security-Policy of its own).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from etl_engine.domain import registry
from etl_engine.domain.model import ValidationReport
from etl_engine.domain.records.spec import Chart
from etl_engine.domain.stats.common import local_date, offset_ms
from etl_engine.ops import svg
from etl_engine.ops.inspection import tree_lines
from etl_engine.ops.svg import Point, esc

W, H = 760, 300
HOUR_MS = 3_600_000
MAX_POINTS = 4000
MAX_SESSIONS = 8
GLUCOSE_BANDS = (  # (low, high, label, colour, opacity): docs/clinical.md, mg/dL
    (0.0, 54.0, "very low < 54", "#b71c1c", 0.22),
    (54.0, 70.0, "low 54-69", "#ef5350", 0.16),
    (70.0, 180.0, "in range 70-180", "#43a047", 0.14),
    (180.0, 250.0, "high 181-250", "#fbc02d", 0.20),
    (250.0, 10_000.0, "very high > 250", "#ef6c00", 0.20),
)
STAGE_ROWS = ("OUT_OF_BED", "AWAKE", "UNKNOWN", "REM", "SLEEPING", "LIGHT", "DEEP")
ALWAYS_ROWS = frozenset({"AWAKE", "REM", "LIGHT", "DEEP"})
STAGE_STYLE = {"OUT_OF_BED": ("out of bed", "#a93226"), "AWAKE": ("awake", "#e4572e"),
               "UNKNOWN": ("unknown", "#9e9e9e"), "REM": ("REM", "#8e6cc0"),
               "SLEEPING": ("asleep (unstaged)", "#5b8bd0"), "LIGHT": ("light", "#6fa8dc"),
               "DEEP": ("deep", "#1f3b73")}


# --- which records: the statistics' own choice of origin ------------------------------------
def _origin_filter(stats: dict[str, Any], utc_days: bool = False
                   ) -> Callable[[int, int, str], bool]:
    """keep(epoch ms, offset ms, origin): the origin the statistics chose for that local
    day (``origin_by_day``); everything when they name none."""
    by_day = stats.get("origin_by_day")
    if not isinstance(by_day, dict) or not by_day:
        return lambda t, off, origin: True

    def keep(t: int, off: int, origin: str) -> bool:
        day = local_date(t, 0 if utc_days else off).isoformat()
        chosen = by_day.get(day)
        return chosen is None or chosen == origin

    return keep


def _night_origins(stats: dict[str, Any]) -> set[str] | None:
    """The origins the statistics chose for their nights (``nights_detail``), if any."""
    nights = stats.get("nights_detail")
    if not isinstance(nights, list):
        return None
    return {str(n.get("origin")) for n in nights if isinstance(n, dict) and n.get("origin")}


def _x_range(points: list[Point]) -> tuple[float, float]:
    """The time axis of a series: at least an hour, 2 % spare at each end (a point on
    the frame would be half hidden)."""
    x0, x1 = points[0][0], max(points[-1][0], points[0][0] + HOUR_MS)
    pad = (x1 - x0) * 0.02
    return x0 - pad, x1 + pad


# --- glucose -----------------------------------------------------------------------------------
def glucose_points(cols: Any, stats: dict[str, Any]) -> list[Point]:
    """(local wall-clock ms, mg/dL) of the kept readings of the chosen origins, in order."""
    keep = _origin_filter(stats, utc_days=stats.get("day_basis") == "utc")
    names = cols.origins.names
    pts = [(float(t + off), v) for t, v, off, o in
           zip(cols.times, cols.values, cols.offsets, cols.origin_ids, strict=True)
           if keep(t, off, names[o])]
    pts.sort()
    return pts


def glucose_svg(points: list[Point], interval_min: float | None, *, title: str = "Blood glucose",
                unit: str = "mg/dL", color: str = "#1b4f72") -> str:
    """The trace on the range bands; dots when the readings are intermittent."""
    values = [v for _, v in points]
    lo, hi = min(30.0, min(values) - 10), max(300.0, max(values) + 10)
    x0, x1 = _x_range(points)
    p = svg.plot(W, H, (x0, x1), (lo, hi), margins=(56, 16, 118, 40))
    body = []
    for b_lo, b_hi, label, band, alpha in GLUCOSE_BANDS:
        y_top, y_bottom = p.y(min(b_hi, hi)), p.y(max(b_lo, lo))
        if y_bottom <= y_top:
            continue
        body.append(svg.rect(p.left, y_top, p.right - p.left, y_bottom - y_top, band,
                             opacity=alpha))
        body.append(svg.text(p.right + 6, (y_top + y_bottom) / 2 + 4, label, size=10,
                             color=svg.MUTED))
    body.append(svg.axes(p, svg.time_ticks(x0, x1),
                         svg.numeric_ticks(svg.nice_ticks(lo, hi, 6)), y_title=unit))
    shown = svg.thin(points, MAX_POINTS)
    if interval_min is None:
        body.append(svg.dots(p, shown, color=color, r=3))
    else:
        for run in svg.runs(shown, 2 * interval_min * 60_000):
            body.append(svg.polyline(p, run, color=color, width=1.6) if len(run) > 1
                        else svg.dots(p, run, color=color, r=1.6))
    return svg.document(W, H, body, title=title, standalone=False)


# --- series: samples (heart rate) and readings -------------------------------------------------
def heart_rate_points(cols: Any, stats: dict[str, Any]) -> list[Point]:
    """(local wall-clock ms, value) of the kept samples of a ``Samples`` store (heart rate)
    of the chosen origins, in order."""
    keep = _origin_filter(stats)
    names = cols.origins.names
    pts: list[Point] = []
    for i, start in enumerate(cols.starts):
        off = cols.offsets[i]
        if not keep(start, off, names[cols.origin_ids[i]]):
            continue
        a, b = cols.first[i], cols.first[i + 1]
        pts.extend((float(t + off), v) for t, v in
                   zip(cols.sample_times[a:b], cols.bpms[a:b], strict=True))
    pts.sort()
    return pts


def reading_points(kept: ValidationReport, stats: dict[str, Any],
                   value_field: str) -> list[Point]:
    """(local wall-clock ms, value) of the kept instant readings, in order: from the type's
    ``Readings`` store, else the records' ``value_field``; of the origins the statistics
    chose for their nights, else for each day."""
    nights = _night_origins(stats)
    keep = (_origin_filter(stats) if nights is None
            else lambda t, off, origin: origin in nights)
    cols = kept.columns
    if cols is not None:
        names = cols.origins.names
        pts = [(float(t + off), v) for t, v, off, o in
               zip(cols.times, cols.values, cols.offsets, cols.origin_ids, strict=True)
               if keep(t, off, names[o])]
    else:
        pts = []
        for r in kept.valid_records:
            t, off = r["timeEpochMillis"], offset_ms(r.get("zoneOffsetId"))
            if keep(t, off, str((r.get("metadata") or {}).get("dataOriginPackageName"))):
                pts.append((float(t + off), float(r[value_field])))
    pts.sort()
    return pts


def series_svg(points: list[Point], *, title: str, unit: str, color: str,
               max_gap_ms: float, dots: bool = False) -> str:
    """A value over time: a line broken at gaps of more than ``max_gap_ms``."""
    values = [v for _, v in points]
    ticks, lo, hi = svg.nice_domain(min(values) - 5, max(values) + 5, 6)
    x0, x1 = _x_range(points)
    p = svg.plot(W, H, (x0, x1), (lo, hi), margins=(56, 16, 24, 40))
    body = [svg.axes(p, svg.time_ticks(x0, x1), svg.numeric_ticks(ticks), y_title=unit)]
    shown = svg.thin(points, MAX_POINTS)
    for run in svg.runs(shown, max_gap_ms):
        body.append(svg.polyline(p, run, color=color, width=1.3) if len(run) > 1
                    else svg.dots(p, run, color=color, r=1.8))
    if dots:
        body.append(svg.dots(p, shown, color=color, r=3))
    return svg.document(W, H, body, title=title, standalone=False)


# --- sleep ---------------------------------------------------------------------------------------
def sleep_sessions(records: list[dict[str, Any]], stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The kept sessions of the nights' chosen origins, in time order."""
    origins = _night_origins(stats)
    out = [r for r in records if origins is None
           or str((r.get("metadata") or {}).get("dataOriginPackageName")) in origins]
    return sorted(out, key=lambda r: r["startTimeEpochMillis"])


def hypnogram_svg(session: dict[str, Any], title: str = "Sleep stages") -> str:
    """One session's stages as a hypnogram: a row per stage, time across (local)."""
    off = offset_ms(session.get("startZoneOffsetId"))
    s0, s1 = session["startTimeEpochMillis"] + off, session["endTimeEpochMillis"] + off
    stages = sorted(session.get("stages") or [], key=lambda st: st["startTimeEpochMillis"])
    present = {str(st.get("stage")) for st in stages}
    rows = [r for r in STAGE_ROWS if r in ALWAYS_ROWS or r in present]
    height = 54 + 24 * len(rows)
    p = svg.plot(W, height, (s0, max(s1, s0 + 10 * 60_000)), (len(rows), 0),
                 margins=(118, 12, 24, 34))
    row_h = (p.bottom - p.top) / len(rows)
    body = [svg.axes(p, svg.time_ticks(s0, s1), [], grid=True)]
    for i, r in enumerate(rows):
        label, color = STAGE_STYLE[r]
        body.append(svg.text(p.left - 8, p.top + (i + 0.5) * row_h + 4, label, size=10,
                             anchor="end", color=color))
    if not stages:
        body.append(svg.rect(p.x(s0), p.top + 2, p.x(s1) - p.x(s0), p.bottom - p.top - 4,
                             "#5b8bd0", opacity=0.35, title="in bed, no stages recorded"))
    prev: tuple[float, float] | None = None
    for st in stages:
        row = rows.index(str(st.get("stage"))) if str(st.get("stage")) in rows else 0
        a, b = p.x(st["startTimeEpochMillis"] + off), p.x(st["endTimeEpochMillis"] + off)
        y = p.top + row * row_h
        label, color = STAGE_STYLE.get(str(st.get("stage")), ("unknown", "#9e9e9e"))
        body.append(svg.rect(a, y + 3, max(b - a, 0.8), row_h - 6, color, title=label))
        if prev is not None and abs(prev[0] - a) < 2:
            body.append(svg.line(a, prev[1], a, y + row_h / 2, color="#888", width=0.8))
        prev = (b, y + row_h / 2)
    return svg.document(W, height, body, title=title, standalone=False)


# --- hourly bars (steps, active calories) --------------------------------------------------------
def hourly_totals(cols: Any, stats: dict[str, Any]) -> tuple[dict[int, float], int]:
    """(local hour start ms -> total of the records that started in it, records longer
    than an hour left out) over the kept records of each day's chosen origin."""
    keep = _origin_filter(stats)
    names = cols.origins.names
    bins: dict[int, float] = {}
    long = 0
    for s, e, v, off, o in zip(cols.starts, cols.ends, cols.values, cols.offsets,
                               cols.origin_ids, strict=True):
        if not keep(s, off, names[o]):
            continue
        if e - s > HOUR_MS + 60_000:
            long += 1
            continue
        hour = (s + off) // HOUR_MS * HOUR_MS
        bins[hour] = bins.get(hour, 0.0) + v
    return bins, long


def bars_svg(bins: dict[int, float], *, step_ms: int, unit: str, color: str,
             title: str) -> str:
    """Bars of totals per ``step_ms`` (an hour, a day) over local time."""
    x0, x1 = min(bins), max(bins) + step_ms
    ticks, _, top = svg.nice_domain(0, max(max(bins.values()), 1.0) * 1.03, 5)
    p = svg.plot(W, H, (x0, x1), (0, top), margins=(62, 16, 24, 40))
    body = [svg.axes(p, svg.time_ticks(x0, x1), svg.numeric_ticks(ticks), y_title=unit)]
    width = p.x(x0 + step_ms) - p.x(x0)
    for start, value in sorted(bins.items()):
        when = datetime.fromtimestamp(start / 1000, UTC)
        body.append(svg.rect(p.x(start) + width * 0.1, p.y(value), width * 0.8,
                             p.bottom - p.y(value), color,
                             title=f"{when:%b %d %H:%M} {value:,.0f} {unit}"))
    return svg.document(W, H, body, title=title, standalone=False)


def _daily(stats: dict[str, Any], key: str) -> dict[int, float]:
    daily = stats.get(key)
    if not isinstance(daily, dict):
        return {}
    return {int(datetime.fromisoformat(d).replace(tzinfo=UTC).timestamp() * 1000): float(v)
            for d, v in daily.items() if isinstance(v, int | float)}


# --- the panels of a record type ---------------------------------------------------------------
def period(first_ms: float, last_ms: float) -> str:
    """The local dates a drawing spans (its times are local wall-clock ms)."""
    a = datetime.fromtimestamp(first_ms / 1000, UTC)
    b = datetime.fromtimestamp(last_ms / 1000, UTC)
    if a.date() == b.date():
        return f"{a:%a %b} {a.day}, {a.year}"
    if a.year == b.year:
        return f"{a:%b} {a.day} to {b:%b} {b.day}, {b.year}"
    return f"{a:%b} {a.day}, {a.year} to {b:%b} {b.day}, {b.year}"


Panel = tuple[str, str, str]  # (heading, caption, svg or "" when there is only a note)
Drawing = Callable[[Chart, ValidationReport, dict[str, Any]], list[Panel]]


def _glucose_panels(chart: Chart, kept: ValidationReport, stats: dict[str, Any]
                    ) -> list[Panel]:
    pts = glucose_points(kept.columns, stats)
    if not pts:
        return []
    found = stats.get("sufficiency")
    suff: dict[str, Any] = found if isinstance(found, dict) else {}
    interval = suff.get("sampling_interval_minutes")
    continuous = suff.get("sampling") == "continuous" and isinstance(interval, int | float)
    basis = "UTC" if stats.get("day_basis") == "utc" else "local time"
    how = ("a line, broken where readings are more than two sampling intervals apart"
           if continuous else "each reading a dot (intermittent readings)" if suff
           else "each reading a dot")
    caption = f"{len(pts):,} readings ({basis}) on the consensus ranges; {how}"
    return [(f"{chart.heading}, {period(pts[0][0], pts[-1][0])}", caption,
             glucose_svg(pts, float(interval) if continuous and interval else None,
                         title=chart.drawing_title, unit=chart.unit, color=chart.color))]


def _series_panel(chart: Chart, pts: list[Point]) -> list[Panel]:
    """A value over time, with the chart's words, colour and gap."""
    if not pts:
        return []
    return [(f"{chart.heading}, {period(pts[0][0], pts[-1][0])}",
             chart.caption.format(count=f"{len(pts):,}"),
             series_svg(pts, title=chart.drawing_title, unit=chart.unit, color=chart.color,
                        max_gap_ms=chart.gap_minutes * 60_000, dots=chart.dots))]


def _samples_panels(chart: Chart, kept: ValidationReport, stats: dict[str, Any]
                    ) -> list[Panel]:
    return _series_panel(chart, heart_rate_points(kept.columns, stats))


def _readings_panels(chart: Chart, kept: ValidationReport, stats: dict[str, Any]
                     ) -> list[Panel]:
    return _series_panel(chart, reading_points(kept, stats, chart.value_field))


def _hypnogram_panels(chart: Chart, kept: ValidationReport, stats: dict[str, Any]
                      ) -> list[Panel]:
    sessions = sleep_sessions(kept.valid_records, stats)
    out: list[Panel] = []
    for s in sessions[-MAX_SESSIONS:]:
        off = offset_ms(s.get("startZoneOffsetId"))
        start = datetime.fromtimestamp((s["startTimeEpochMillis"] + off) / 1000, UTC)
        end = datetime.fromtimestamp((s["endTimeEpochMillis"] + off) / 1000, UTC)
        n = len(s.get("stages") or [])
        out.append((f"{chart.heading} {start:%a %b %d %H:%M} to {end:%H:%M}",
                    f"{n} stages (local time)" if n else "no stages recorded",
                    hypnogram_svg(s, title=chart.drawing_title)))
    if len(sessions) > MAX_SESSIONS:
        out.insert(0, (chart.heading, f"the last {MAX_SESSIONS} of {len(sessions)} sessions",
                       ""))
    return out


def _hourly_bars_panels(chart: Chart, kept: ValidationReport, stats: dict[str, Any]
                        ) -> list[Panel]:
    name, unit, color = chart.heading, chart.unit, chart.color
    bins, long = hourly_totals(kept.columns, stats)
    if bins:
        note = (f"; {long:,} records longer than an hour are not in the bars" if long else "")
        return [(f"{name} per hour, {period(min(bins), max(bins))}",
                 f"each record in the local hour it started{note}",
                 bars_svg(bins, step_ms=HOUR_MS, unit=unit, color=color,
                          title=f"{name} per hour"))]
    daily = _daily(stats, chart.daily_key)
    if not daily:
        return []
    return [(f"{name} per day, {period(min(daily), max(daily))}",
             "the records are daily totals: no hourly breakdown; the statistics' daily "
             "totals", bars_svg(daily, step_ms=24 * HOUR_MS, unit=unit, color=color,
                                title=f"{name} per day"))]


DRAWINGS: dict[str, Drawing] = {
    "glucose": _glucose_panels, "samples": _samples_panels, "readings": _readings_panels,
    "hypnogram": _hypnogram_panels, "hourly_bars": _hourly_bars_panels,
}
"""Chart kind (``records.spec.CHART_KINDS``) -> its drawing."""


def panels(kept: ValidationReport | None, stats: dict[str, Any]) -> list[Panel]:
    """The drawings for the kept records of a file: its type's chart (none for a type
    without one, or unknown)."""
    if kept is None or not kept.kept:
        return []
    spec = registry.find(kept.record_type)
    if spec is None or spec.chart is None:
        return []
    return DRAWINGS[spec.chart.kind](spec.chart, kept, stats)


# --- the page ----------------------------------------------------------------------------------
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
STYLE = """
body{font-family:"DejaVu Sans","Liberation Sans",Arial,sans-serif;color:#222;margin:0;
background:#f6f7f9}
header{background:#fff;border-bottom:1px solid #ddd;padding:14px 24px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:15px;margin:18px 0 6px}
h3{font-size:14px;margin:0 0 6px}
.sub{color:#666;font-size:12px;margin:0}
.verdict{display:inline-block;padding:3px 10px;border-radius:4px;font-weight:bold;
font-size:13px;margin-top:6px}
.processed{background:#e3f2e5;color:#1e6b2e}.quarantined,.not_run{background:#fde7e4;
color:#a12b1c}
.grid{display:grid;grid-template-columns:784px minmax(320px,1fr);gap:20px;padding:20px 24px;
align-items:start}
figure{background:#fff;border:1px solid #ddd;border-radius:6px;margin:0 0 16px;padding:10px}
figure svg{display:block;max-width:100%;height:auto}
figcaption{color:#666;font-size:12px;margin-top:4px}
aside{background:#fff;border:1px solid #ddd;border-radius:6px;padding:4px 16px 14px;
font-size:14px}
.q{font-style:italic;color:#444}.a{line-height:1.45}
table{border-collapse:collapse;font-size:13px;width:100%}
td{padding:3px 6px;border-bottom:1px solid #eee;vertical-align:top;overflow-wrap:anywhere}
td:first-child{color:#666;white-space:nowrap;width:40%}
.note{color:#666;font-size:13px;background:#fff;border:1px dashed #ccc;padding:12px;
border-radius:6px;margin:0 0 16px}
details{margin:0 24px 12px;background:#fff;border:1px solid #ddd;border-radius:6px;
padding:8px 12px}
summary{cursor:pointer;font-weight:bold;font-size:14px}
pre{font-size:12px;white-space:pre-wrap;word-break:break-word}
"""


def _rows(pairs: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>"
                               for k, v in pairs) + "</table>"


def _verdict(doc: dict[str, Any]) -> str:
    o = doc["outcome"]
    if o["kind"] == "processed":
        text = f"Would be processed: {o['category']}, {o['period_date']}"
    elif o["kind"] == "quarantined":
        text = f"Would be quarantined: {o['reason']} (stage {o['stage']})"
    else:
        text = f"Not run: {o['reason']}"
    return f'<p class="verdict {esc(o["kind"])}">{esc(text)}</p>'


def _checks(doc: dict[str, Any]) -> list[tuple[str, object]]:
    pre, sch, size = doc["prescan"], doc.get("schema"), doc["size_check"]
    rows: list[tuple[str, object]] = [
        ("pre-scan", f"passed: codec {pre['codec']}, {pre['records']:,} records"
         if pre["passed"] else f"refused: {pre['reason']} {pre.get('detail') or ''}")]
    if sch:
        rows.append(("writer schema", sch["writer"] or "-"))
        rows.append(("against ours", sch["verdict"] + (f" at {sch['first_mismatch']}"
                                                       if sch["first_mismatch"] else "")))
    rows.append(("size", f"{doc['file']['size_bytes']:,} bytes, "
                 f"{'within' if size['passed'] else 'over'} {size['max_object_bytes']:,}"))
    return rows


def _quality(doc: dict[str, Any]) -> list[tuple[str, object]]:
    q = doc.get("quality")
    if not q:
        return [("quality", "not scored: the file was refused before validation")]
    rows: list[tuple[str, object]] = [("score", f"{q['quality_score']:.3f}")]
    rows += [(k, f"{v:.3f}") for k, v in q["components"].items()]
    rows.append(("records", f"{q['total_records']:,} read, {q['valid_records']:,} kept, "
                 f"{q['in_progress_records']:,} in progress"))
    rows.append(("reason codes", ", ".join(f"{k} x{n:,}" for k, n in
                                            q["issue_counts"].items()) or "none"))
    return rows


def _aside(doc: dict[str, Any]) -> str:
    record = doc.get("training_record") or {}
    meta = record.get("metadata") or {}
    parts = ["<h2>Narrative</h2>"]
    if record:
        parts.append(f'<p class="q">{esc(record.get("instruction", ""))}</p>')
        parts.append(f'<p class="a">{esc(record.get("output", ""))}</p>')
    else:
        parts.append('<p class="q">No narrative: the file would not be processed.</p>')
    parts += ["<h2>Quality</h2>", _rows(_quality(doc)), "<h2>Checks</h2>",
              _rows(_checks(doc)), "<h2>Warnings and flags</h2>",
              _rows([("warnings", ", ".join(meta.get("warnings") or []) or "none"),
                     ("flags", ", ".join(doc.get("flags") or []) or "none")])]
    return "<aside>" + "".join(parts) + "</aside>"


def _figures(found: list[Panel], doc: dict[str, Any]) -> str:
    if not found:
        why = ("the file was refused before validation" if not doc.get("quality")
               else "no drawing for this record type, or no record was kept")
        return f'<section><p class="note">Nothing to draw: {esc(why)}.</p></section>'
    out = []
    if doc["outcome"]["kind"] != "processed":
        out.append('<p class="note">Drawn from the records validation kept; the file as a '
                   'whole would not be processed, so there are no statistics.</p>')
    for heading, caption, picture in found:
        out.append(f"<figure><h3>{esc(heading)}</h3>{picture}"
                   f"<figcaption>{esc(caption)}</figcaption></figure>")
    return "<section>" + "".join(out) + "</section>"


def render(doc: dict[str, Any], kept: ValidationReport | None) -> str:
    """The whole page for an ``inspect`` document and the records validation kept."""
    record = doc.get("training_record") or {}
    stats = (record.get("metadata") or {}).get("statistics") or {}
    f = doc["file"]
    title = f"{doc.get('record_type') or 'unknown type'}: {f['name']}"
    pretty = orjson.dumps(record, option=orjson.OPT_INDENT_2).decode() if record else "none"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc('etl-engine inspect: ' + title)}</title><style>{STYLE}</style></head>",
        "<body><header>", f"<h1>{esc(title)}</h1>",
        f'<p class="sub">{f["size_bytes"]:,} bytes, sha256 {esc(f["sha256"])}</p>',
        _verdict(doc), "</header>", '<main class="grid">',
        _figures(panels(kept, stats), doc), _aside(doc), "</main>",
        "<details><summary>Statistics</summary><pre>"
        + esc("\n".join(tree_lines(stats, 0)) or "none") + "</pre></details>",
        "<details><summary>Training record</summary><pre>" + esc(pretty) + "</pre></details>",
        "</body></html>", ""])
