"""Parsing the times users type: ISO-8601 dates and times, or ages such as 30m, 24h, 7d.

Every mistake, including a time outside what the recorder can represent (before 0001-01-01
or after 9999-12-31T23:59:59 in UTC), is a `TimeSpecError` whose message quotes what was typed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_HOW = "use an ISO-8601 date or time (2026-11-01, 2026-11-01T08:00Z) or an age (30m, 24h, 7d)"
DEFAULT_WINDOW = timedelta(hours=24)
# The latest time accepted: later ones overflow when rounded to milliseconds for output.
LATEST = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)


class TimeSpecError(ValueError):
    """A time the user typed that cannot be understood or represented."""


@dataclass(frozen=True, slots=True)
class When:
    """A time as typed: an instant (`at`), an age before now (`ago`), or now (neither)."""

    text: str
    at: datetime | None = None
    ago: timedelta | None = None

    def resolve(self, now: datetime) -> datetime:
        """The instant this stands for, with ages counted back from `now`."""
        if self.at is not None:
            return self.at
        if self.ago is None:
            return now
        try:
            return now - self.ago
        except OverflowError:
            raise TimeSpecError(_too_long_ago(self.text)) from None


def parse(text: str) -> When:
    """`now`, an age (`30m`, `24h`, `7d`, `2w`), or an ISO-8601 date or time (UTC if no zone)."""
    value = text.strip()
    if not value:
        raise TimeSpecError(f"{text!r} is empty: {_HOW}")
    if value.lower() == "now":
        return When(text)
    if match := _AGE.fullmatch(value.lower()):
        seconds = float(match[1]) * _UNITS[match[2]]
        if not math.isfinite(seconds):
            raise TimeSpecError(_too_long_ago(text))
        try:
            return When(text, ago=timedelta(seconds=seconds))
        except OverflowError:  # more than 999,999,999 days
            raise TimeSpecError(_too_long_ago(text)) from None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeSpecError(f"cannot read {text!r} as a time: {_HOW}") from None
    try:
        at = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:  # 0001-01-01 with a positive offset, 9999-12-31 with a negative one
        at = None
    if at is None or at > LATEST:
        edge = "before 0001-01-01" if moment.year == 1 else f"after {_iso(LATEST)}"
        raise TimeSpecError(
            f"{text!r} is out of range: in UTC it falls {edge}, outside the times the "
            "recorder can represent"
        )
    return When(text, at=at)


def parse_when(when: str | When, now: datetime) -> datetime:
    """The instant `when` (text as for `parse`, or already parsed) stands for at `now`."""
    return (parse(when) if isinstance(when, str) else when).resolve(now)


def window(
    since: str | When | None, until: str | When | None, now: datetime
) -> tuple[datetime, datetime]:
    """The [since, until) window, by default the last 24 hours."""
    end = parse_when(until, now) if until else now
    if since:
        start = parse_when(since, now)
    else:
        try:
            start = end - DEFAULT_WINDOW
        except OverflowError:
            raise TimeSpecError(
                f"--until {_iso(end)} leaves no room for the default 24-hour window before it: "
                "give --since as well"
            ) from None
    if start >= end:
        raise TimeSpecError(
            f"the window is empty: --since {_iso(start)} is not before --until {_iso(end)}"
        )
    return start, end


def _iso(moment: datetime) -> str:
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"  # %Y drops the zeros of year 1


def _too_long_ago(text: str) -> str:
    return (
        f"{text!r} reaches back before 0001-01-01, the earliest time the recorder can "
        "represent: give a shorter age or a date"
    )
