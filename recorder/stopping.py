"""Stop requests (SIGTERM, SIGINT) and reload requests (SIGHUP), caught from the first moment
the recorder runs.

The handler only records the signal. Anything more inside a handler is unsafe: it runs on the
main thread between two bytecodes of whatever that thread was doing, possibly while it holds
the very lock that stopping needs (a deadlock), and an exception raised there can leave a lock
half-released. So even a threading.Event is out (setting one takes a lock); the daemon's
monitor thread looks at ``requested`` a few times a second instead. SIGHUP only counts
(``hangups``): the daemon's monitor re-opens the log and reloads the config file when the count
moves, and a second SIGHUP does the same again.

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

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
RELOAD_SIGNAL = signal.SIGHUP

_Handler = Any  # what signal.getsignal returns: a callable, an int constant, or None


class StopRequest:
    """The process's stop signals: which have come since the handlers were installed."""

    def __init__(self) -> None:
        """No handlers yet; nothing requested."""
        self.requested: list[str] = []
        self.hangups = 0  # SIGHUPs so far: only the handler writes it, so readers need no lock
        self._previous: dict[int, _Handler] = {}

    @property
    def installed(self) -> bool:
        """True while our handlers are in place."""
        return bool(self._previous)

    def install(self, extra: tuple[signal.Signals, ...] = ()) -> None:
        """Catch the stop signals, SIGHUP (and `extra` ones); call on the main thread.
        Idempotent."""
        for sig in (*STOP_SIGNALS, RELOAD_SIGNAL, *extra):
            if sig not in self._previous:
                self._previous[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == RELOAD_SIGNAL:
            self.hangups += 1  # an int's increment: no lock taken, nothing raised
            return
        self.requested.append(signal.Signals(signum).name)  # no lock taken, nothing raised
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # a second signal acts as it normally would

    def uninstall(self) -> None:
        """Put the previous handlers back and forget what was requested."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        self.requested.clear()
        self.hangups = 0

    def release(self) -> None:
        """Give the signals back to their previous handlers, delivering one that already came
        (a SIGHUP too: only `recorder run` reloads)."""
        pending = [signal.Signals[name] for name in self.requested]
        if self.hangups:
            pending.append(RELOAD_SIGNAL)
        self.uninstall()
        if pending:
            os.kill(os.getpid(), pending[0])


STOP = StopRequest()
