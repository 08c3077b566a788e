"""Charts as inline SVG: a duration histogram, a time series, and ranges (pure; no I/O).

Each function returns a `Chart`: one ``<svg>`` element as text, sized by its viewBox so that it
scales to the page's width. Every chart carries a ``<title>`` and a ``<desc>`` (its text
alternative, which the page also shows as a caption) and labels its axes with their units.
Colours come from the page's CSS classes (``bar``, ``line``, ``mean``, ``cap``, ``gap``,
``mark``, ``axis``, ``grid``), so that the same chart reads in light and dark mode and printed.
Every text that came from the database (a type, an account, a job id) is escaped here.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from recorder.output import human_duration

WIDTH, HEIGHT = 900, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 12, 48  # margins: room for tick labels and axis titles
# Steps a time axis may tick at, in seconds: the first that leaves at most MAX_TICKS ticks.
TIME_STEPS = (
    60, 300, 900, 1800, 3600, 7200, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 91 * 86400, 182 * 86400, 365 * 86400,
)  # fmt: skip
MAX_TICKS = 8


@dataclass(frozen=True, slots=True)
class Bin:
    """A histogram bin: durations in ``[lo, hi)`` seconds (``hi`` None: and above)."""

    lo: float
    hi: float | None
    count: int


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket of a time series: ``[lo, hi)`` in epoch seconds, and its value."""

    lo: float
    hi: float
    value: float


@dataclass(frozen=True, slots=True)
class Series:
    """A named line or set of bars over time; `style` is a CSS class (``bar``, ``line``…)."""

    name: str
    points: Sequence[Point]
    style: str = "bar"


@dataclass(frozen=True, slots=True)
class Range:
    """One row of a range chart: a label, and a value known within ``[lo, hi]``."""

    label: str
    lo: float
    best: float
    hi: float


@dataclass(frozen=True, slots=True)
class Chart:
    """An ``<svg>`` element, its title, and its text alternative (also its ``<desc>``)."""

    svg: str
    title: str
    desc: str


def _svg(title: str, desc: str, body: list[str], height: int = HEIGHT) -> Chart:
    ident = f"c{zlib.crc32(f'{title}|{desc}'.encode()):08x}"  # stable: same page, same bytes
    svg = (
        f'<svg viewBox="0 0 {WIDTH} {height}" role="img" aria-labelledby="{ident}t {ident}d"'
        f' xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{ident}t">{escape(title)}</title><desc id="{ident}d">{escape(desc)}</desc>'
        + "".join(body)
        + "</svg>"
    )
    return Chart(svg, title, desc)


def nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (1 for 0 or less)."""
    if value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value * (1 - 1e-12):
            return float(step * power)
    return 10.0 * power  # not reached


def _y_axis(top: float, label: str, height: int = HEIGHT) -> list[str]:
    """Four grid lines from 0 to `top`, their values, and the axis title."""
    plot_h = height - TOP - BOTTOM
    parts = []
    for i in range(5):
        value = top * i / 4
        y = height - BOTTOM - plot_h * i / 4
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>'
        )
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_number(value)}</text>"
        )
    mid = TOP + plot_h / 2
    parts.append(
        f'<text class="axis-title" transform="translate(14 {mid:.1f}) rotate(-90)"'
        f' text-anchor="middle">{escape(label)}</text>'
    )
    return parts


def _number(value: float) -> str:
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _x_title(label: str, height: int = HEIGHT) -> str:
    x = LEFT + (WIDTH - LEFT - RIGHT) / 2
    return (
        f'<text class="axis-title" x="{x:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{escape(label)}</text>"
    )


def histogram(bins: Sequence[Bin], title: str, *, p50: float | None, p95: float | None) -> Chart:
    """Durations' histogram: one bar per bin, bins of equal width on a 1-2-5 (logarithmic)
    scale of seconds, from the first bin with a job to the last; p50 and p95 marked."""
    shown = _trimmed(bins)
    if not shown:
        return _svg(title, "No finished job in this window.", [_empty()])
    top = nice_ceiling(max(b.count for b in shown))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    width = plot_w / len(shown)
    body = _y_axis(top, "finished jobs")
    for i, b in enumerate(shown):
        h = plot_h * b.count / top
        x = LEFT + i * width
        tip = f"{_span(b)}: {b.count:,} job(s)"
        body.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{HEIGHT - BOTTOM - h:.1f}"'
            f' width="{width - 2:.1f}" height="{h:.1f}"><title>{escape(tip)}</title></rect>'
        )
        body.append(
            f'<text class="tick" x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">'
            f"{escape(_edge(b.lo))}</text>"
        )
    for name, value in (("p50", p50), ("p95", p95)):
        if value is None:
            continue
        x = LEFT + width * _position(shown, value)
        body.append(
            f'<line class="mark" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>'
            f'<text class="mark-label" x="{x + 3:.1f}" y="{TOP + (22 if name == "p95" else 10)}">'
            f"{name} {escape(human_duration(value))}</text>"
        )
    body.append(_x_title("duration (seconds, 1-2-5 bins: a logarithmic scale)"))
    counts = ", ".join(f"{_span(b)}: {b.count:,}" for b in shown)
    marks = "; ".join(
        f"{name} {human_duration(value)}" for name, value in (("p50", p50), ("p95", p95)) if value
    )
    return _svg(title, f"Finished jobs by duration: {counts}. {marks}.", body)


def _trimmed(bins: Sequence[Bin]) -> list[Bin]:
    filled = [i for i, b in enumerate(bins) if b.count]
    return list(bins[filled[0] : filled[-1] + 1]) if filled else []


def _edge(seconds: float) -> str:
    return human_duration(seconds) if seconds else "0s"


def _span(b: Bin) -> str:
    return f"{_edge(b.lo)}..{human_duration(b.hi)}" if b.hi is not None else f"{_edge(b.lo)}+"


def _position(bins: Sequence[Bin], value: float) -> float:
    """Where `value` falls on the histogram's axis, in bins from the left (log inside a bin)."""
    for i, b in enumerate(bins):
        if b.hi is None or value < b.hi:
            if value <= b.lo:
                return float(i)
            if b.hi is None:
                return i + 0.5
            lo = max(b.lo, b.hi / 10, 1e-3)
            share = (math.log(max(value, lo)) - math.log(lo)) / (math.log(b.hi) - math.log(lo))
            return i + min(1.0, max(0.0, share))
    return float(len(bins))


def timeline(
    series: Sequence[Series],
    title: str,
    *,
    since: float,
    until: float,
    y_label: str,
    gaps: Sequence[tuple[float, float]] = (),
    level: tuple[str, float] | None = None,
) -> Chart:
    """Series over the window ``[since, until)`` (epoch seconds): bars or lines, the gaps in
    polling shaded, and an optional labelled level (an account's maxJobs)."""
    if until <= since:
        return _svg(title, "The window is empty.", [_empty()])
    values = [p.value for s in series for p in s.points]
    top = nice_ceiling(max([*values, level[1] if level else 0.0, 0.0]))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: float) -> float:
        return LEFT + plot_w * (min(max(t, since), until) - since) / (until - since)

    def y(v: float) -> float:
        return HEIGHT - BOTTOM - plot_h * v / top

    body = [
        f'<rect class="gap" x="{x(lo):.1f}" y="{TOP}" width="{max(x(hi) - x(lo), 1.0):.1f}"'
        f' height="{plot_h}"><title>{escape(_gap_text(lo, hi))}</title></rect>'
        for lo, hi in gaps
        if hi > since and lo < until
    ]
    body += _y_axis(top, y_label)
    body += _time_ticks(since, until, x)
    for s in series:
        if s.style == "bar":
            for p in s.points:
                if p.value > 0:
                    body.append(
                        f'<rect class="bar" x="{x(p.lo):.1f}" y="{y(p.value):.1f}"'
                        f' width="{max(x(p.hi) - x(p.lo) - 0.5, 0.5):.1f}"'
                        f' height="{HEIGHT - BOTTOM - y(p.value):.1f}"/>'
                    )
        else:  # a step line: each bucket's value held across the bucket
            path = "".join(
                f"{'M' if i == 0 else 'L'}{x(p.lo):.1f} {y(p.value):.1f}H{x(p.hi):.1f}"
                for i, p in enumerate(s.points)
            )
            if path:
                body.append(f'<path class="{escape(s.style)}" d="{path}"/>')
    if level is not None:
        name, value = level
        body.append(
            f'<line class="cap" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}"'
            f' y2="{y(value):.1f}"/><text class="mark-label" x="{WIDTH - RIGHT - 4}"'
            f' y="{y(value) - 4:.1f}" text-anchor="end">{escape(name)} {_number(value)}</text>'
        )
    body.append(_x_title("time (UTC)"))
    body.append(_legend(series))
    return _svg(title, _describe(series, gaps, since, until, level), body)


def _gap_text(lo: float, hi: float) -> str:
    return f"no successful poll {_stamp(lo)} .. {_stamp(hi)} ({human_duration(hi - lo)})"


def _stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _time_ticks(since: float, until: float, x: object) -> list[str]:
    assert callable(x)
    span = until - since
    step = next((s for s in TIME_STEPS if span / s <= MAX_TICKS), None)
    if step is None:  # decades: a tick per so many years
        step = 365 * 86400 * math.ceil(span / (365 * 86400) / MAX_TICKS)
    fmt = "%m-%d %H:%M" if step < 86400 else "%Y-%m-%d"
    first = math.ceil(since / step) * step
    parts = []
    t = first
    while t <= until:
        px = x(t)
        label = datetime.fromtimestamp(t, UTC).strftime(fmt)
        parts.append(
            f'<line class="axis" x1="{px:.1f}" x2="{px:.1f}" y1="{HEIGHT - BOTTOM}"'
            f' y2="{HEIGHT - BOTTOM + 4}"/><text class="tick" x="{px:.1f}"'
            f' y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">{label}</text>'
        )
        t += step
    parts.append(
        f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{HEIGHT - BOTTOM}"'
        f' y2="{HEIGHT - BOTTOM}"/>'
    )
    return parts


def _legend(series: Sequence[Series]) -> str:
    if len(series) < 2:
        return ""
    parts = []
    x = LEFT + 8
    for s in series:
        parts.append(
            f'<rect class="{escape(s.style)} key" x="{x}" y="{TOP + 2}" width="12" height="4"/>'
            f'<text class="tick" x="{x + 16}" y="{TOP + 8}">{escape(s.name)}</text>'
        )
        x += 24 + 7 * len(s.name)
    return "".join(parts)


def _describe(
    series: Sequence[Series],
    gaps: Sequence[tuple[float, float]],
    since: float,
    until: float,
    level: tuple[str, float] | None,
) -> str:
    parts = []
    for s in series:
        if not s.points:
            parts.append(f"{s.name}: no data")
            continue
        peak = max(s.points, key=lambda p: p.value)
        parts.append(
            f"{s.name}: {len(s.points)} buckets, highest {_number(round(peak.value, 2))}"
            f" at {_stamp(peak.lo)}"
        )
    shown = [g for g in gaps if g[1] > since and g[0] < until]
    parts.append(
        f"{len(shown)} span(s) with no successful poll shaded" if shown else "polls covered it all"
    )
    if level is not None:
        parts.append(f"{level[0]} {_number(level[1])}")
    return "; ".join(parts) + "."


def ranges(rows: Sequence[Range], title: str, *, x_label: str) -> Chart:
    """One row per item: a bar to its best value, and its range ``[lo, hi]`` drawn across."""
    if not rows:
        return _svg(title, "No finished job in this window.", [_empty()])
    row_h = 22
    height = TOP + BOTTOM + row_h * len(rows)
    top = nice_ceiling(max(r.hi for r in rows))
    left = 300  # room for the labels
    plot_w = WIDTH - left - RIGHT

    def x(v: float) -> float:
        return left + plot_w * max(v, 0.0) / top

    body = []
    for i in range(5):
        gx = left + plot_w * i / 4
        body.append(
            f'<line class="grid" x1="{gx:.1f}" x2="{gx:.1f}" y1="{TOP}" y2="{height - BOTTOM}"/>'
            f'<text class="tick" x="{gx:.1f}" y="{height - BOTTOM + 14}" text-anchor="middle">'
            f"{escape(human_duration(top * i / 4) if i else '0s')}</text>"
        )
    for i, r in enumerate(rows):
        cy = TOP + row_h * i + row_h / 2
        label = r.label if len(r.label) <= 44 else "…" + r.label[-43:]
        tip = (
            f"{r.label}: {human_duration(r.best)} ({human_duration(r.lo)}..{human_duration(r.hi)})"
        )
        body.append(
            f'<text class="tick" x="{left - 6}" y="{cy + 4:.1f}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect class="bar" x="{left}" y="{cy - 5:.1f}" width="{x(r.best) - left:.1f}"'
            f' height="10"><title>{escape(tip)}</title></rect>'
            f'<line class="range" x1="{x(r.lo):.1f}" x2="{x(r.hi):.1f}" y1="{cy:.1f}"'
            f' y2="{cy:.1f}"/><line class="range" x1="{x(r.lo):.1f}" x2="{x(r.lo):.1f}"'
            f' y1="{cy - 7:.1f}" y2="{cy + 7:.1f}"/><line class="range" x1="{x(r.hi):.1f}"'
            f' x2="{x(r.hi):.1f}" y1="{cy - 7:.1f}" y2="{cy + 7:.1f}"/>'
        )
    x_mid = left + plot_w / 2
    body.append(
        f'<text class="axis-title" x="{x_mid:.1f}" y="{height - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    desc = "; ".join(
        f"{r.label}: {human_duration(r.best)}, between {human_duration(r.lo)} and "
        f"{human_duration(r.hi)}"
        for r in rows
    )
    return _svg(title, desc + ".", body, height)


def _empty() -> str:
    return (
        f'<text class="tick" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">'
        "nothing to draw in this window</text>"
    )
