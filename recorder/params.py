"""click parameter types: option values are checked and converted where they enter.

A bad value fails with click's `BadParameter` ("Invalid value for '--interval': ...", exit
code 2): one line that names the option and quotes what was typed, never a traceback.

- `Number(min, max)`: a finite number within [min, max] (nan, inf, 0x10 and 1_000 are refused).
- `Seconds(min, max)`: the same in seconds; `90s`, `5m`, `1.5h`, `1d` are accepted too.
- `WHEN`: an ISO-8601 date or time, `now`, or an age such as `30m`; see `recorder.timespec`.
- `JOB_KIND`: the simulator's TYPE:PER_MIN:MEAN_S.
- `SIM_SERVICE`: a service whose scheduler the simulator can fake (pixverse, kling, …).
- `DATABASE_URL`: a URL for one of the supported database drivers.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from recorder import db, timespec

if TYPE_CHECKING:
    from recorder.simulator import JobKind

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


class Number(click.ParamType[float, "str | float"]):
    """A finite number within [min, max], typed as plain decimal digits."""

    name = "number"
    _pattern = re.compile(rf"\s*({_NUMBER})\s*")

    def __init__(self, min: float, max: float) -> None:
        """Accept values from `min` to `max`, both included."""
        self.min = min
        self.max = max

    def convert(self, value: str | float, param: click.Parameter | None, ctx: Any) -> float:
        """The number `value` stands for, or a failure that quotes it."""
        if isinstance(value, int | float):
            number, typed = float(value), repr(value)
        else:
            number, typed = self._parse(value, param, ctx), repr(value)
        if math.isnan(number):
            self.fail(f"{typed} is not a finite number", param, ctx)
        if number < self.min:
            self.fail(f"{typed} is less than the minimum, {self._show(self.min)}", param, ctx)
        if number > self.max:  # also inf, and 1e400, which float() reads as inf
            self.fail(f"{typed} is more than the maximum, {self._show(self.max)}", param, ctx)
        return number + 0.0  # -0.0 becomes 0.0

    def _parse(self, text: str, param: click.Parameter | None, ctx: Any) -> float:
        match = self._pattern.fullmatch(text.lower())
        if match is None:
            if _is_non_finite(text):
                self.fail(f"{text!r} is not a finite number", param, ctx)
            self.fail(f"{text!r} is not {self._expected()}", param, ctx)
        return float(match[1]) * _UNITS[match.groupdict().get("unit") or ""]

    def _expected(self) -> str:
        return "a finite decimal number, e.g. 0.5"

    def _show(self, value: float) -> str:
        return f"{value:g}"


def _is_non_finite(text: str) -> bool:
    try:
        return not math.isfinite(float(text))
    except ValueError:
        return False


class Seconds(Number):
    """A finite number of seconds within [min, max]: `90`, `0.5`, `90s`, `5m`, `1.5h`, `1d`."""

    name = "seconds"
    _pattern = re.compile(rf"\s*({_NUMBER})\s*(?P<unit>[smhd]?)\s*")

    def _expected(self) -> str:
        return "a number of seconds, e.g. 10, 0.5, 90s, 5m, 1h"

    def _show(self, value: float) -> str:
        for size, unit in ((DAY, "day"), (HOUR, "hour"), (MINUTE, "minute")):
            if value and value % size == 0:
                count = abs(value) // size
                plural = "s" if count != 1 else ""
                return f"{value:g} s ({'-' if value < 0 else ''}{count:g} {unit}{plural})"
        return f"{value:g} s"


class WhenType(click.ParamType[timespec.When, "str | timespec.When"]):
    """An ISO-8601 date or time (UTC unless it says otherwise), `now`, or an age (30m, 7d).

    Converts to a `timespec.When`, resolved against the command's own "now" later; an age that
    reaches back before the year 1 fails here already.
    """

    name = "when"

    def convert(
        self, value: str | timespec.When, param: click.Parameter | None, ctx: Any
    ) -> timespec.When:
        """The parsed time, or a failure that quotes what was typed."""
        if isinstance(value, timespec.When):
            return value
        try:
            when = timespec.parse(value)
            when.resolve(datetime.now(UTC))
        except timespec.TimeSpecError as exc:
            self.fail(str(exc), param, ctx)
        return when


class JobKindType(click.ParamType["JobKind", "str | JobKind"]):
    """The simulator's TYPE:PER_MIN:MEAN_S, e.g. video:2:90."""

    name = "job_kind"
    _rate = Number(0, 10_000)
    _mean = Seconds(0.1, 7 * DAY)

    def convert(self, value: str | JobKind, param: click.Parameter | None, ctx: Any) -> JobKind:
        """The job kind, or a failure that quotes what was typed."""
        from recorder.simulator import JobKind

        if isinstance(value, JobKind):
            return value
        parts = value.split(":")
        if len(parts) != 3 or not parts[0].strip():
            self.fail(f"{value!r} is not TYPE:PER_MIN:MEAN_S, e.g. video:2:90", param, ctx)
        try:
            rate = self._rate.convert(parts[1], None, None)
            mean = self._mean.convert(parts[2], None, None)
        except click.BadParameter as exc:
            self.fail(f"in {value!r}: {exc.message}", param, ctx)
        return JobKind(parts[0].strip(), rate, mean)


class SimServiceType(click.ParamType[str, str]):
    """A service whose scheduler the simulator can fake, e.g. kling."""

    name = "service"

    def convert(self, value: str, param: click.Parameter | None, ctx: Any) -> str:
        """The name, or a failure that lists the names the simulator knows."""
        # Looked up at use, not at import: every other command starts without the simulator.
        from recorder.simulator import SERVICE_PATHS

        if value not in SERVICE_PATHS:
            known = ", ".join(SERVICE_PATHS)
            self.fail(f"{value!r} is not a service the simulator knows: {known}", param, ctx)
        return value


class DatabaseURL(click.ParamType[str, str]):
    """A database URL for a supported driver (see `recorder.db.check_url`)."""

    name = "url"

    def convert(self, value: str, param: click.Parameter | None, ctx: Any) -> str:
        """The URL unchanged, or a failure that says which drivers are supported."""
        try:
            db.check_url(value)
        except db.DatabaseError as exc:
            self.fail(str(exc), param, ctx)
        return value


WHEN = WhenType()
JOB_KIND = JobKindType()
SIM_SERVICE = SimServiceType()
DATABASE_URL = DatabaseURL()
