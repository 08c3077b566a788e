"""The log: one line per event on stderr, in UTC, with nothing from the API able to forge a line.

Log messages carry job ids, types, accounts and error texts that the API chose. `SafeFormatter`
shows every formatted line through `output.safe_text`, so a line break in an id cannot start a
fake log line, and an escape sequence in it (ESC [2J, OSC 0;title BEL) cannot clear the screen
or retitle the terminal. A traceback keeps its line breaks, but every other control character
in it (an exception's message may quote the API) is escaped too.

`--log-format json` writes the same events as one JSON object per line, for journald and log
shippers (`JsonFormatter`): `time` (UTC, to the millisecond, with Z), `level`, `message`
(exactly the text line's text after the level, API text escaped alike, so both formats read
the same), `target` on a line about one target, and `exception` with a traceback. Escaping
before encoding keeps a bidi override or a line break in an id inert also where a tool prints
the decoded message raw (`jq -r .message`).

`--log-file PATH` appends the lines to a file instead of stderr (`ReopeningFileHandler`); after
logrotate has moved it away, SIGHUP makes `recorder run` open the path again (`reopen`).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from recorder.output import safe_text

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
LOG_FORMATS = ("text", "json")
LogFormat = Literal["text", "json"]
# The LogRecord attribute that names the target a line is about: log calls pass about(name).
TARGET = "target"

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]


class SafeFormatter(logging.Formatter):
    """A `logging.Formatter` whose output holds no control character but a traceback's breaks.

    The whole first line is escaped (the message, and whatever else the format shows);
    `exc_text` and `stack_info` are escaped line by line.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        """The record's line, escaped."""
        return safe_text(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo) -> str:
        """The traceback, with its line breaks and nothing else raw."""
        return _safe_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        """The stack, with its line breaks and nothing else raw."""
        return _safe_lines(super().formatStack(stack_info))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: the text format's events, machine-readable."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a JSON object: time, level, message, and target where it has one."""
        entry = {
            "time": utc_time(record.created),
            "level": record.levelname,
            "message": safe_text(record.getMessage()),
        }
        target = getattr(record, TARGET, None)
        if isinstance(target, str):
            entry["target"] = safe_text(target)
        if record.exc_info:
            entry["exception"] = _safe_lines(self.formatException(record.exc_info))
        if record.stack_info:
            entry["stack"] = _safe_lines(self.formatStack(record.stack_info))
        # ASCII only: the line stays valid JSON whatever encoding stderr has (under systemd
        # there may be no locale), and a \u escape decodes back to the same text.
        return json.dumps(entry, ensure_ascii=True)


def utc_time(created: float) -> str:
    """`created` (a Unix time) in ISO-8601 UTC to the millisecond, with Z."""
    moment = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    return moment.removesuffix("+00:00") + "Z"


def about(name: str | None) -> dict[str, object]:
    """The `extra` of a log call about the target `name` (nothing for None)."""
    return {} if name is None else {TARGET: name}


def _safe_lines(text: str) -> str:
    return "\n".join(safe_text(line) for line in text.split("\n"))


class ReopeningFileHandler(logging.FileHandler):
    """Appends to a file, and opens its path again on `reopen` (after logrotate moved it)."""

    def __init__(self, path: Path) -> None:
        """Append to `path`, created if missing (UTF-8)."""
        super().__init__(path, mode="a", encoding="utf-8")

    def reopen(self) -> None:
        """Close the file and open the path again: a new file if the old one was moved. Under
        the handler's lock, so that no line is written to a closed stream."""
        self.acquire()
        try:
            old, self.stream = self.stream, self._open()
            if old is not None:
                old.close()
        finally:
            self.release()


def reopen() -> int:
    """Open the log file again, if the log goes to one (see `setup`); how many were reopened."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, ReopeningFileHandler)]
    for handler in handlers:
        handler.reopen()
    return len(handlers)


def setup(
    verbosity: int,
    stream: IO[str] | None = None,
    fmt: LogFormat = "text",
    path: Path | None = None,
) -> None:
    """Log to `stream` (stderr), or append to the file `path`, in `fmt`: WARNING and up if
    `verbosity` < 0, INFO at 0, DEBUG above."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler: logging.Handler
    if path is not None:
        handler = ReopeningFileHandler(path)
    else:
        handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("recorder").setLevel(level)
    # APScheduler warns on every skipped or late run; the daemon reports what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


def _formatter(fmt: LogFormat) -> logging.Formatter:
    if fmt == "json":
        return JsonFormatter()
    formatter = SafeFormatter(FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    return formatter
