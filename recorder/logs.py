"""The log: one line per event on stderr, in UTC, with nothing from the API able to forge a line.

Log messages carry job ids, types, accounts and error texts that the API chose. `SafeFormatter`
shows every formatted line through `output.safe_text`, so a line break in an id cannot start a
fake log line, and an escape sequence in it (ESC [2J, OSC 0;title BEL) cannot clear the screen
or retitle the terminal. A traceback keeps its line breaks, but every other control character
in it (an exception's message may quote the API) is escaped too.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import IO

from recorder.output import safe_text

FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

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


def _safe_lines(text: str) -> str:
    return "\n".join(safe_text(line) for line in text.split("\n"))


def setup(verbosity: int, stream: IO[str] | None = None) -> None:
    """Log to `stream` (stderr): WARNING and up if `verbosity` < 0, INFO at 0, DEBUG above."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    formatter = SafeFormatter(FORMAT, DATE_FORMAT)
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("recorder").setLevel(level)
    # APScheduler warns on every skipped or late run; the daemon reports what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
