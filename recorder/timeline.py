"""Time series for the HTML report: `recorder stats`' hour or day buckets, binned to the page.

The figures are the stats' own (grouped by ``hour`` or ``day`` besides the report's key), so
the page and the CLI never disagree. A long window has more buckets than a chart has pixels:
`merge` joins runs of consecutive buckets into at most `MAX_POINTS` bins. A bin's finished jobs
are the sum of its buckets' (each job counted in the one bucket its end falls in, ``[lo, hi)``:
none is lost or counted twice at a bin's edge), its peak concurrency the largest of theirs, and
its mean concurrency their time-weighted mean. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

HOUR, DAY = 3600, 86400
MAX_POINTS = 360  # bins per chart: about two pixels each at the page's width


@dataclass(frozen=True, slots=True)
class Bucket:
    """The figures of ``[lo, hi)`` (epoch seconds) for one group."""

    lo: float
    hi: float
    finished: int = 0
    peak: int = 0
    mean: float = 0.0  # mean concurrency over [lo, hi)

    @property
    def per_hour(self) -> float:
        """Finished jobs per hour of the bucket."""
        hours = (self.hi - self.lo) / HOUR
        return self.finished / hours if hours > 0 else 0.0


def bucket_key(since: float, until: float) -> str:
    """The stats time key to read the window with: ``hour`` if it has at most MAX_POINTS
    hours, else ``day``."""
    return "hour" if (until - since) / HOUR <= MAX_POINTS else "day"


def grid(since: float, until: float, size: int) -> list[tuple[float, float]]:
    """The window's buckets: UTC-aligned `size` seconds, the first and last clipped to it."""
    if until <= since:
        return []
    spans = []
    lo = math.floor(since / size) * size
    while lo < until:
        spans.append((max(lo, since), min(lo + size, until)))
        lo += size
    return spans


def fill(spans: Sequence[tuple[float, float]], found: Iterable[Bucket]) -> list[Bucket]:
    """A bucket for every span of the grid: those `found` (by their start), zeros elsewhere."""
    by_lo = {b.lo: b for b in found}
    return [by_lo.get(lo, Bucket(lo, hi)) for lo, hi in spans]


def merge(buckets: Sequence[Bucket], max_points: int = MAX_POINTS) -> list[Bucket]:
    """Join runs of consecutive buckets so that at most `max_points` remain."""
    if len(buckets) <= max_points:
        return list(buckets)
    size = math.ceil(len(buckets) / max_points)
    merged = []
    for start in range(0, len(buckets), size):
        run = buckets[start : start + size]
        length = sum(b.hi - b.lo for b in run)
        merged.append(
            Bucket(
                run[0].lo,
                run[-1].hi,
                sum(b.finished for b in run),
                max(b.peak for b in run),
                sum(b.mean * (b.hi - b.lo) for b in run) / length if length > 0 else 0.0,
            )
        )
    return merged
