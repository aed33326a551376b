"""The pictures, rendered as a person sees them: headless Chromium turns the benchmark's
SVG charts and ``inspect --html`` reports into PNGs, and the PNGs are checked for what
they must show (bars, bands, lines, stages in their colours), not only for existing.

Chromium is Debian's ``chromium`` package (``.ci/run`` installs it). Under ``CI=true`` a
missing Chromium fails these tests; elsewhere they are skipped. ``ETL_RENDER_DIR=DIR``
keeps the PNGs there for a person to look at (default: the test's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from etl_devtools import bench_charts
from etl_engine.ops import inspection as inspect_file
from etl_engine.ops import report_html
from etl_engine.ops.sample_files import bundled_samples
from etl_engine.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCS_IMG = ROOT / "docs" / "img"
SAMPLES = bundled_samples()
WHEN = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
RGB = tuple[int, int, int]


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing: .ci/run installs it (Debian package chromium)")
    pytest.skip("chromium is not installed (Debian package chromium)")


@pytest.fixture(scope="module")
def render_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    chosen = os.environ.get("ETL_RENDER_DIR")
    out = Path(chosen) if chosen else tmp_path_factory.mktemp("render")
    out.mkdir(parents=True, exist_ok=True)
    return out


def screenshot(source: Path, png: Path, width: int, height: int) -> None:
    """``source`` (an .svg or .html file) as Chromium draws it, into ``png``."""
    chromium = _chromium()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        done = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--screenshot={png}",
             f"--window-size={width},{height}", source.resolve().as_uri()],
            capture_output=True, text=True, timeout=120, check=False)
    assert png.exists(), f"chromium wrote no screenshot: {done.stderr[-2000:]}"


# --- a small PNG reader: Chromium writes 8-bit RGB(A), non-interlaced ---------------------------
def _chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        yield data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _unfilter(raw: bytes, width: int, height: int, bpp: int) -> list[bytearray]:
    rows, prev, stride, pos = [], bytearray(width * bpp), width * bpp, 0
    for _ in range(height):
        kind, line = raw[pos], bytearray(raw[pos + 1:pos + 1 + stride])
        pos += 1 + stride
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + (0, a, b, (a + b) // 2, _paeth(a, b, c))[kind]) & 0xFF
        rows.append(line)
        prev = line
    return rows


def pixels(png: Path) -> tuple[int, int, list[RGB]]:
    """(width, height, every pixel's RGB) of a PNG."""
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks = list(_chunks(data))
    width, height, depth, color = struct.unpack(">IIBB", chunks[0][1][:10])
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    rows = _unfilter(raw, width, height, bpp)
    return width, height, [(r[i], r[i + 1], r[i + 2]) for r in rows
                           for i in range(0, len(r), bpp)]


def count_near(px: list[RGB], hex_color: str, tolerance: int = 24) -> int:
    want = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return sum(1 for p in px if all(abs(p[k] - want[k]) <= tolerance for k in range(3)))


def _shows(png: Path, colors: dict[str, int]) -> None:
    """The picture is not blank and each colour covers at least its number of pixels."""
    _, _, px = pixels(png)
    assert len(set(px)) > 20, f"{png.name}: looks blank"
    for color, least in colors.items():
        found = count_near(px, color)
        assert found >= least, f"{png.name}: {color} on {found} pixels (< {least})"


# --- the benchmark's charts -----------------------------------------------------------------------
def test_the_committed_charts_are_drawn_from_the_committed_figures(tmp_path: Path) -> None:
    drawn = bench_charts.render_file(DOCS_IMG / "bench-figures.json", tmp_path)
    assert [p.name for p in drawn] == ["bench-throughput.svg", "bench-cpu.svg",
                                       "bench-latency.svg", "bench-growth.svg"]
    for path in drawn:
        committed = DOCS_IMG / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed} is not current: etl-engine bench --charts-from "
            "docs/img/bench-figures.json --charts docs/img")


@pytest.mark.parametrize(("name", "colors"), [
    ("bench-throughput", {bench_charts.BLUE: 4000, bench_charts.ORANGE: 60}),
    ("bench-cpu", {bench_charts.BLUE: 4000, bench_charts.GREEN: 2000, bench_charts.RED: 400}),
    ("bench-latency", {bench_charts.BLUE: 300, bench_charts.ORANGE: 2000,
                       bench_charts.RED: 2000}),
    ("bench-growth", {bench_charts.BLUE: 150, bench_charts.RED: 150, bench_charts.GREEN: 150}),
])
def test_a_chart_renders(name: str, colors: dict[str, int], render_dir: Path) -> None:
    png = render_dir / f"{name}.png"
    screenshot(DOCS_IMG / f"{name}.svg", png, bench_charts.WIDTH, bench_charts.HEIGHT)
    width, height, _ = pixels(png)
    assert (width, height) == (bench_charts.WIDTH, bench_charts.HEIGHT)
    _shows(png, colors)


# --- inspect --html ------------------------------------------------------------------------------
REPORTS = [  # sample, colours a person must see: the data, in the chart's colours
    ("BloodGlucoseRecord/cgm_day1.avro", {"#1b4f72": 300, "#e3f2e5": 500}),  # trace, badge
    ("HeartRateRecord/hr_watch_day1.avro", {"#c0392b": 400}),
    ("SleepSessionRecord/sleep_watch.avro", {"#1f3b73": 1500, "#8e6cc0": 1500,
                                             "#6fa8dc": 1500, "#e4572e": 100}),
    ("StepsRecord/steps_watch.avro", {"#4a9a5b": 2000}),
]


def render_report(sample: str, render_dir: Path) -> Path:
    """``inspect --html`` of a bundled sample, as Chromium shows it at 1280 x 1000."""
    settings = load_settings(env="development")
    path = SAMPLES / sample
    src = inspect_file.Source(name=path.name, data=path.read_bytes())
    doc = inspect_file.inspect_source(src, settings, WHEN)
    page = render_dir / f"inspect-{path.stem}.html"
    inspect_file.write_html(src, doc, settings, page, WHEN)
    png = page.with_suffix(".png")
    screenshot(page, png, 1280, 1000)
    return png


@pytest.mark.parametrize(("sample", "colors"), REPORTS, ids=lambda v: str(v).split("/")[0])
def test_a_report_renders(sample: str, colors: dict[str, int], render_dir: Path) -> None:
    _shows(render_report(sample, render_dir), colors)


def test_the_glucose_report_shows_every_consensus_band(render_dir: Path) -> None:
    """The bands are drawn translucent over white: each one's blend is on the page."""
    png = render_dir / "inspect-cgm_day1.png"
    if not png.exists():  # run alone: render it here
        render_report(REPORTS[0][0], render_dir)
    _, _, px = pixels(png)
    for _, _, label, color, alpha in report_html.GLUCOSE_BANDS:
        c = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
        blend = "#" + "".join(f"{round(255 * (1 - alpha) + v * alpha):02x}" for v in c)
        assert count_near(px, blend, 6) > 500, label
