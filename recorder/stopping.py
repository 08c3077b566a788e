"""Stop requests: SIGTERM, SIGINT and SIGHUP, caught from the first moment the recorder runs.

The handler only records the signal. Anything more inside a handler is unsafe: it runs on the
main thread between two bytecodes of whatever that thread was doing, possibly while it holds
the very lock that stopping needs (a deadlock), and an exception raised there can leave a lock
half-released. So even a threading.Event is out (setting one takes a lock); the daemon's
monitor thread looks at ``requested`` a few times a second instead.

`recorder` installs the handlers before it imports anything else (``recorder.__main__``), so a
SIGTERM during start-up stops the daemon cleanly instead of killing it. Commands other than
`run` hand the signals back to their defaults once the command is known (`release`), re-raising
one that already came, so that they stop as any program does.
"""

from __future__ import annotations

import os
import signal
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_Handler = Any  # what signal.getsignal returns: a callable, an int constant, or None


class StopRequest:
    """The process's stop signals: which have come since the handlers were installed."""

    def __init__(self) -> None:
        """No handlers yet; nothing requested."""
        self.requested: list[str] = []
        self._previous: dict[int, _Handler] = {}

    @property
    def installed(self) -> bool:
        """True while our handlers are in place."""
        return bool(self._previous)

    def install(self, extra: tuple[signal.Signals, ...] = ()) -> None:
        """Catch the stop signals (and `extra` ones); call on the main thread. Idempotent."""
        for sig in STOP_SIGNALS + extra:
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.requested.append(signal.Signals(signum).name)  # no lock taken, nothing raised
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # a second signal acts as it normally would

    def uninstall(self) -> None:
        """Put the previous handlers back and forget what was requested."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.requested.clear()

    def release(self) -> None:
        """Give the signals back to their previous handlers, delivering one that already came."""
        pending = [signal.Signals[name] for name in self.requested]
        self.uninstall()
        if pending:
            os.kill(os.getpid(), pending[0])


STOP = StopRequest()
