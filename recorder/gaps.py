"""What counts as a gap in the record: a silence between two successful polls that is longer
than the recorder's cadence explains (failed polls in between are a gap whatever the silence).

The threshold is set once per recording: from the daemon's interval, from `recorder poll
--expect-every`, or, for a one-shot poll run by cron or a timer, from the spacing of the
target's own recent polls, so that a steady history of polls a minute apart has no gaps while a
missed hour still shows.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence

# How many recent polls the observed cadence is taken from.
CADENCE_POLLS = 6


def gap_threshold(interval: float) -> float:
    """Silence between successful polls longer than this is a gap in the record."""
    return 3 * interval + 1.0


def observed_threshold(sent_times: Sequence[float]) -> float | None:
    """The gap threshold for polls sent at `sent_times` (oldest first, the newest last).

    The cadence is the median spacing of those polls, so one long silence among steady ones
    stands out as a gap, while the silence of the newest poll alone never defines the cadence
    it is judged by, unless it is the only spacing known. None with fewer than two polls.
    """
    spacings = [b - a for a, b in itertools.pairwise(sent_times)]
    if not spacings:
        return None
    return gap_threshold(statistics.median(spacings))
