"""Parsing the times users type: ISO-8601 dates and times, or ages such as 30m, 24h, 7d."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TimeSpecError(ValueError):
    """A time the user typed that cannot be understood."""


def parse_when(text: str, now: datetime) -> datetime:
    """`now`, an age before `now` (`30m`, `24h`, `7d`, `2w`), or an ISO-8601 date or time.

    A date or time without a zone is taken as UTC.
    """
    value = text.strip()
    if value.lower() == "now":
        return now
    if match := _AGE.fullmatch(value.lower()):
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeSpecError(
            f"cannot read {text!r} as a time: use an ISO-8601 date or time "
            "(2026-11-01, 2026-11-01T08:00Z) or an age (30m, 24h, 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    """The [since, until) window, by default the last 24 hours."""
    end = parse_when(until, now) if until else now
    start = parse_when(since, now) if since else end - timedelta(hours=24)
    if start >= end:
        raise TimeSpecError(
            f"the window is empty: --since {start:%Y-%m-%dT%H:%M:%SZ} is not "
            f"before --until {end:%Y-%m-%dT%H:%M:%SZ}"
        )
    return start, end
