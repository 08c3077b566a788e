"""The recorder's clock: wall-clock time that a step of the host clock cannot make jump.

NTP may step the host clock back or forward while the daemon runs. Poll times taken from the
wall clock would then go backwards or leap, and the durations inferred from them with them.
So a process reads the wall clock once, and from then on advances it by the monotonic clock;
a restarted process anchors again.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], float]

# The times the database can hold and give back on every backend and platform: from the epoch
# to the last second of year 9999 (Python's datetime ends there).
EARLIEST = 0.0
LATEST = 253402300799.0


def to_datetime(ts: float) -> datetime:
    """Epoch seconds to an aware UTC datetime."""
    return datetime.fromtimestamp(ts, tz=UTC)


def storable(ts: float | None) -> float | None:
    """`ts` if the database can hold it as a time, else None."""
    if ts is None or not math.isfinite(ts) or not EARLIEST <= ts <= LATEST:
        return None
    return ts


class SteadyClock:
    """Epoch seconds that advance with the monotonic clock from one wall-clock reading."""

    def __init__(self, wall: Clock = time.time, monotonic: Clock = time.monotonic) -> None:
        """Anchor to the wall clock now."""
        self._monotonic = monotonic
        self._wall = wall
        self._anchor = wall() - monotonic()

    def __call__(self) -> float:
        """The current time, epoch seconds."""
        return self._anchor + self._monotonic()

    def drift(self) -> float:
        """How far the wall clock has moved from this clock since the anchor (a step, if large)."""
        return self._wall() - self()
