"""Rendering rows for people and scripts: table, JSON, JSON lines, CSV.

Text from the API (job ids, types, accounts, error messages) is untrusted. What people read, the
table and the log, shows it through `safe_text`, so that it can neither forge a line nor send
the terminal a control sequence. What scripts read keeps it exact: JSON and JSON lines (which
escape control characters themselves) and CSV (which quotes a field holding a line break;
a CSV file is data for a program, not a view for a terminal).
"""

from __future__ import annotations

import csv
import json
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import IO, Any

FORMATS = ("table", "json", "jsonl", "csv")
Row = Mapping[str, Any]


# Unicode categories shown escaped: controls (C0, DEL, C1), format characters (bidi overrides
# and isolates, zero-width characters, soft hyphen, BOM), lone surrogates (which cannot even be
# encoded for output), and the line and paragraph separators.
_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# The characters that, after a backslash, make an escape; a backslash before one is doubled.
_ESCAPE_LETTERS = frozenset("\\tnrxuU")


def safe_text(text: str) -> str:
    r"""`text` as one line with no control or invisible format character, all else untouched.

    Such a character shows as the escape Python's repr uses: `\n`, `\r`, `\t`, `\x1b` (code
    points below 256), `\u202e`, `\U000e0001` (lowercase hex, fixed width). Letters in any
    script, emoji, punctuation and spaces (including no-break spaces) are left alone.

    A backslash is doubled only where it would otherwise read as the start of an escape: before
    another backslash, before one of `t n r x u U`, or before a character that is escaped. So
    `C:\data` and `a\b` stay as they are, while a literal `\n` shows as `\\n`, unlike an
    escaped line break. The escaping is therefore injective: reading the escapes back gives the
    original text exactly, and two different ids never look alike.
    """
    if text.isprintable() and "\\" not in text:  # the common case, checked in C
        return text
    out = []
    last = len(text) - 1
    for i, char in enumerate(text):
        if char == "\\":
            following = text[i + 1] if i < last else ""
            escape_next = following in _ESCAPE_LETTERS or (following and _needs_escape(following))
            out.append("\\\\" if escape_next else char)
        elif _needs_escape(char):
            out.append(_escape(char))
        else:
            out.append(char)
    return "".join(out)


def _needs_escape(char: str) -> bool:
    return unicodedata.category(char) in _ESCAPED_CATEGORIES


def _escape(char: str) -> str:
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


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
    lines = _LineFeedRows(out)
    writer: csv.DictWriter[str] | None = None
    for row in rows:
        if writer is None:
            writer = csv.DictWriter(lines, fieldnames=list(columns or row.keys()))
            writer.writeheader()
        writer.writerow({k: _text(v) for k, v in row.items()})
    if writer is None and columns:
        csv.writer(lines).writerow(columns)


class _LineFeedRows:
    r"""Rows that end in \n, written by a csv writer whose rows end in \r\n.

    The writer quotes a field that holds a character of its line terminator; with \n alone it
    would leave a bare \r unquoted, and every CSV reader would split the row there.
    """

    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def write(self, row: str) -> int:
        return self.out.write(row.removesuffix("\r\n") + "\n")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(json_value(value))


def _table(rows: list[Row], out: IO[str], columns: Sequence[str] | None) -> None:
    keys = list(columns or (rows[0].keys() if rows else []))
    if not keys:
        out.write("(no rows)\n")
        return
    names = [safe_text(key) for key in keys]  # `recorder sql` names its own columns
    cells = [[_cell(row.get(key)) for key in keys] for row in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    out.write("  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for line in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n")
    if not rows:
        out.write("(no rows)\n")


def _cell(value: Any) -> str:
    """A value as the table shows it to a person: short, and safe for a terminal."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.1f}"
    return safe_text(_text(value))
