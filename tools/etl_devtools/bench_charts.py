"""The benchmark's figures as SVG charts: what ``docs/performance.md`` shows.

    etl-engine bench --charts docs/img                 (a run, then its charts)
    etl-engine bench --charts-from FIGURES.json --charts docs/img   (charts only)

Drawn from the JSON a run writes (``--json``), with the package's small SVG writer
(``etl_engine.ops.svg``): no plotting library. Four charts:

- ``bench-throughput.svg``: messages/s per fleet setting, against the storage ceiling for
  the same number of client processes;
- ``bench-cpu.svg``: worker CPU per message (the worker process and its decode children)
  against the decode floor and three times the floor (the target);
- ``bench-latency.svg``: publish -> settled at about half the saturation rate, p50/p95/p99;
- ``bench-growth.svg``: peak memory against file size for the large files, the worker's
  CPU stages against the decode floor of the same file (only when the run had them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from etl_engine.ops import svg

WIDTH, HEIGHT = 760, 380
MAX_SLOT = 220
BLUE, ORANGE, GREEN, RED, GREY = "#3b6ea5", "#e08a2e", "#4a9a5b", "#c0392b", "#8a8a8a"
KIND_COLORS = {"cgm": BLUE, "heart_rate": RED, "steps": GREEN}
DECODE_MODES = {"0": "no decode child", "1": "default routing", "1c": "every file in a child"}


def setting_label(r: dict[str, Any]) -> tuple[str, str]:
    """Two short lines naming a fleet setting: workers, and where files decode."""
    workers = r["workers"]
    mode = str(r["decode_mode"])
    where = DECODE_MODES.get(mode, f"{mode[:-1]} children, every file" if mode.endswith("c")
                             else f"{mode} decode children")
    return f"{workers} worker{'s' if workers != 1 else ''}", where


def _subtitle(report: dict[str, Any]) -> str:
    m = report.get("machine", {})
    commit = f", commit {m['commit']}" if m.get("commit") else ""
    return (f"{report.get('started', '')[:16].replace('T', ' ')} UTC, {m.get('cpus', '?')} "
            f"CPUs ({m.get('cpu', '?')}){commit}")


def _frame(title: str, report: dict[str, Any]) -> list[str]:
    return [svg.text(16, 22, title, size=14, weight="bold"),
            svg.text(16, 40, _subtitle(report), size=10, color=svg.MUTED)]


def _bar_slots(p: svg.Plot, n: int) -> list[tuple[float, float]]:
    """(left, width) of ``n`` evenly spaced category slots across the plot area, each at
    most ``MAX_SLOT`` wide (a single setting is not one wall of colour)."""
    slot = (p.right - p.left) / max(1, n)
    width = min(slot, MAX_SLOT)
    return [(p.left + i * slot + (slot - width) / 2, width) for i in range(n)]


def _category_labels(p: svg.Plot, slots: Sequence[tuple[float, float]],
                     labels: Sequence[tuple[str, str]]) -> list[str]:
    out = []
    for (x, w), (a, b) in zip(slots, labels, strict=True):
        out.append(svg.text(x + w / 2, p.bottom + 16, a, anchor="middle"))
        out.append(svg.text(x + w / 2, p.bottom + 30, b, size=10, anchor="middle",
                            color=svg.MUTED))
    return out


def _y_axis(p: svg.Plot, top: float, title: str) -> str:
    return svg.axes(p, [], svg.numeric_ticks(svg.nice_ticks(0, top)), y_title=title)


def throughput_chart(report: dict[str, Any]) -> str:
    """Messages/s per setting, each with the storage ceiling for its worker count."""
    fleet = report["fleet"]
    ceiling = {c["processes"]: c["pairs_per_s"] for c in report.get("storage_ceiling", [])}
    top = max([r["throughput_msg_s"] for r in fleet] + list(ceiling.values())) * 1.15
    p = svg.plot(WIDTH, HEIGHT, (0, 1), (0, top), margins=(64, 70, 24, 56))
    body = [*_frame("Throughput per fleet setting", report), _y_axis(p, top, "messages / s")]
    slots = _bar_slots(p, len(fleet))
    for (x, w), r in zip(slots, fleet, strict=True):
        v = r["throughput_msg_s"]
        y = p.y(v)
        body.append(svg.rect(x + w * 0.25, y, w * 0.5, p.bottom - y, BLUE,
                             title=f"{v:.1f} msg/s"))
        body.append(svg.text(x + w / 2, y - 5, f"{v:.1f}", anchor="middle", weight="bold",
                             halo=True))
        c = ceiling.get(r["workers"])
        if c:
            body.append(svg.line(x + w * 0.12, p.y(c), x + w * 0.88, p.y(c), color=ORANGE,
                                 width=2, dash="6 4"))
            body.append(svg.text(x + w * 0.88, p.y(c) - 4, f"ceiling {c:.0f}", size=10,
                                 anchor="end", color=ORANGE, halo=True))
    body += _category_labels(p, slots, [setting_label(r) for r in fleet])
    body.append(svg.legend(p.left, 60, [("messages/s, first publish to last settle", BLUE,
                                         "box"),
                                        ("storage ceiling: GET+PUT/s, same client processes",
                                         ORANGE, "dash")]))
    return svg.document(WIDTH, HEIGHT, body, title="Throughput per fleet setting")


def cpu_chart(report: dict[str, Any]) -> str:
    """Worker CPU per message (main + decode children) against the decode floor."""
    fleet = report["fleet"]
    floor = report["decode_floor"]["floor_ms_per_file"]
    top = max([r["cpu_ms_per_msg"] for r in fleet] + [3 * floor]) * 1.15
    p = svg.plot(WIDTH, HEIGHT, (0, 1), (0, top), margins=(64, 70, 118, 56))
    body = _frame("Worker CPU per message against the decode floor", report)
    body.append(_y_axis(p, top, "CPU ms / message"))
    slots = _bar_slots(p, len(fleet))
    for (x, w), r in zip(slots, fleet, strict=True):
        main, kids = r["cpu_ms_per_msg_main"], r["cpu_ms_per_msg_children"]
        y_main = p.y(main)
        body.append(svg.rect(x + w * 0.25, y_main, w * 0.5, p.bottom - y_main, BLUE,
                             title=f"worker process {main:.2f} ms"))
        if kids > 0:
            y_all = p.y(main + kids)
            body.append(svg.rect(x + w * 0.25, y_all, w * 0.5, y_main - y_all, GREEN,
                                 title=f"decode children {kids:.2f} ms"))
        body.append(svg.text(x + w / 2, p.y(main + kids) - 5, f"{main + kids:.2f}",
                             anchor="middle", weight="bold", halo=True))
    for value, label, dash in ((floor, ("decode floor", f"{floor:.2f} ms/file"), ""),
                               (3 * floor, ("target: 3 x floor", f"{3 * floor:.2f} ms"),
                                "6 4")):
        body.append(svg.line(p.left, p.y(value), p.right, p.y(value), color=RED, width=1.5,
                             dash=dash))
        body.append(svg.text(p.right + 6, p.y(value) - 2, label[0], size=10, color=RED))
        body.append(svg.text(p.right + 6, p.y(value) + 10, label[1], size=10, color=RED))
    body += _category_labels(p, slots, [setting_label(r) for r in fleet])
    body.append(svg.legend(p.left, 60, [("worker process", BLUE, "box"),
                                        ("decode children", GREEN, "box"),
                                        ("fastavro.reader alone (the floor)", RED, "line")]))
    return svg.document(WIDTH, HEIGHT, body, title="Worker CPU per message")


def latency_chart(report: dict[str, Any]) -> str:
    """p50/p95/p99 publish -> settled at about half the saturation rate, per setting."""
    fleet = report["fleet"]
    keys = (("p50", BLUE), ("p95", ORANGE), ("p99", RED))
    values = [r["paced_latency_ms"].get(k) or 0.0 for r in fleet for k, _ in keys]
    top = max([*values, 1.0]) * 1.15
    p = svg.plot(WIDTH, HEIGHT, (0, 1), (0, top), margins=(64, 70, 24, 56))
    body = _frame("Latency, publish to settled, at about half the saturation rate", report)
    body.append(_y_axis(p, top, "milliseconds"))
    slots = _bar_slots(p, len(fleet))
    for (x, w), r in zip(slots, fleet, strict=True):
        bw = w * 0.7 / len(keys)
        for i, (k, color) in enumerate(keys):
            v = r["paced_latency_ms"].get(k) or 0.0
            bx = x + w * 0.15 + i * bw
            body.append(svg.rect(bx + 1, p.y(v), bw - 2, p.bottom - p.y(v), color,
                                 title=f"{k} {v:.1f} ms"))
            body.append(svg.text(bx + bw / 2, p.y(v) - 4, f"{v:,.0f}", size=10,
                                 anchor="middle", halo=True))
    labels = [(a, f"{b}, {r['paced_rate_msg_s']:.0f} msg/s")
              for r, (a, b) in zip(fleet, (setting_label(r) for r in fleet), strict=True)]
    body += _category_labels(p, slots, labels)
    body.append(svg.legend(p.left, 60, [(k, c, "box") for k, c in keys]))
    return svg.document(WIDTH, HEIGHT, body, title="Latency percentiles")


def _growth_series(report: dict[str, Any]) -> dict[str, dict[str, list[tuple[float, float, int]]]]:
    """kind -> {"full": [(file MB, peak MB, items)], "floor": [...]}, rows without errors."""
    out: dict[str, dict[str, list[tuple[float, float, int]]]] = {}
    for g in report.get("growth", []):
        for mode in ("full", "floor"):
            r = g[mode]
            if "hwm_mb" in r:
                out.setdefault(g["file"], {"full": [], "floor": []})[mode].append(
                    (r["file_mb"], r["hwm_mb"], g["items"]))
    return out


def growth_chart(report: dict[str, Any]) -> str:
    """Peak RSS against file size (log), the CPU stages and the decode floor per file kind."""
    series = _growth_series(report)
    pts = [pt for kind in series.values() for rows in kind.values() for pt in rows]
    x_lo = min(p[0] for p in pts) / 1.5
    x_hi = max(p[0] for p in pts) * 1.5
    top = max(p[1] for p in pts) * 1.15
    p = svg.plot(WIDTH, HEIGHT, (x_lo, x_hi), (0, top), margins=(64, 84, 24, 46), x_log=True)
    body = _frame("Peak memory against file size (one file per fresh process)", report)
    body.append(svg.axes(p, svg.numeric_ticks(svg.log_ticks(x_lo, x_hi)),
                         svg.numeric_ticks(svg.nice_ticks(0, top)),
                         x_title="file size, MB (log scale)", y_title="peak RSS, MB"))
    legend = []
    units = {g["file"]: g["unit"] for g in report.get("growth", [])}
    for kind, rows in series.items():
        color = KIND_COLORS.get(kind, GREY)
        full = [(a, b) for a, b, _ in rows["full"]]
        body.append(svg.polyline(p, full, color=color, width=2))
        body.append(svg.dots(p, full, color=color, r=3.5))
        if full:
            body.append(svg.text(p.x(full[-1][0]) - 7, p.y(full[-1][1]) - 7,
                                 f"{full[-1][1]:.0f} MB", size=10, anchor="end", color=color,
                                 halo=True))
        body.append(svg.polyline(p, [(a, b) for a, b, _ in rows["floor"]], color=color,
                                 width=1.5, dash="5 4"))
        sizes = " / ".join(f"{items:,}" for _, _, items in rows["full"])
        legend.append((f"{kind}: {sizes} {units.get(kind, '')}", color, "line"))
    legend.append(("dashed: the decode floor of the same file", GREY, "dash"))
    body.append(svg.legend(p.left, 58, legend, max_x=p.right))
    return svg.document(WIDTH, HEIGHT, body, title="Peak memory against file size")


def render(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the charts the report has figures for into ``out_dir``; their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {"bench-throughput.svg": throughput_chart, "bench-cpu.svg": cpu_chart,
              "bench-latency.svg": latency_chart}
    if not report.get("fleet"):
        charts = {}
    if _growth_series(report):
        charts["bench-growth.svg"] = growth_chart
    written = []
    for name, draw in charts.items():
        path = out_dir / name
        path.write_text(draw(report), encoding="utf-8")
        written.append(path)
    return written


def render_file(figures: Path, out_dir: Path) -> list[Path]:
    """The charts of a figures file written by ``etl-engine bench --json``."""
    return render(json.loads(figures.read_text()), out_dir)
