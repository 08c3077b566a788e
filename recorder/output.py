"""Rendering rows for people and scripts: table, JSON, JSON lines, CSV."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any

FORMATS = ("table", "json", "jsonl", "csv")
Row = Mapping[str, Any]


def default_format(stream: IO[str] | None = None) -> str:
    """A table on a terminal, JSON otherwise (pipes and files)."""
    stream = stream or sys.stdout
    return "table" if stream.isatty() else "json"


def json_value(value: Any) -> Any:
    """A value as JSON shows it: datetimes in ISO-8601 UTC with Z, decimals as numbers."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def iso(value: datetime) -> str:
    """ISO-8601 UTC with milliseconds (rounded, as SQLite's views round them) and Z."""
    value = value.astimezone(UTC) + timedelta(microseconds=500)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def human_duration(seconds: float | None) -> str:
    """Seconds as `3m57s`, `1h02m`, `0.4s`; empty for None."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def render(
    rows: Iterable[Row], fmt: str, out: IO[str], columns: Sequence[str] | None = None
) -> None:
    """Write `rows` to `out` in `fmt`; JSON streams, so any number of rows fits."""
    if fmt == "json":
        _json_array(rows, out)
    elif fmt == "jsonl":
        for row in rows:
            out.write(json.dumps({k: json_value(v) for k, v in row.items()}) + "\n")
    elif fmt == "csv":
        _csv(rows, out, columns)
    elif fmt == "table":
        _table(list(rows), out, columns)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def _json_array(rows: Iterable[Row], out: IO[str]) -> None:
    out.write("[")
    count = 0
    for count, row in enumerate(rows, start=1):
        out.write(",\n  " if count > 1 else "\n  ")
        out.write(json.dumps({k: json_value(v) for k, v in row.items()}))
    out.write("\n]\n" if count else "]\n")


def _csv(rows: Iterable[Row], out: IO[str], columns: Sequence[str] | None) -> None:
    writer: csv.DictWriter[str] | None = None
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(
                out, fieldnames=list(columns or row.keys()), lineterminator="\n"
            )
            writer.writeheader()
        writer.writerow({k: _text(v) for k, v in row.items()})
    if writer is None and columns:
        csv.writer(out, lineterminator="\n").writerow(columns)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(json_value(value))


def _table(rows: list[Row], out: IO[str], columns: Sequence[str] | None) -> None:
    names = list(columns or (rows[0].keys() if rows else []))
    if not names:
        out.write("(no rows)\n")
        return
    cells = [[_cell(row.get(name)) for name in names] for row in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    out.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
    if not rows:
        out.write("(no rows)\n")


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    return _text(value)
