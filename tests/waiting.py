"""Waiting for a condition, with a deadline, instead of sleeping and hoping.

A test that sleeps and then counts asserts on the machine's speed: on a loaded machine the
count is short, on a fast one a timing bug hides. These helpers wait until what the test needs
has happened; the deadline only bounds a hang, so it is generous (tens of seconds).
"""

from __future__ import annotations

import reprlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable

from recorder import db

T = TypeVar("T")

# Long enough for a loaded 2-core machine; only a hang takes this long.
DEADLINE_S = 60.0

_show = reprlib.Repr()
_show.maxstring = _show.maxother = 400


def wait_for(
    condition: Callable[[], T],
    timeout: float = DEADLINE_S,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """Call `condition` until it returns something truthy, and return that.

    After `timeout` seconds without it, fail the test, saying what was awaited (`message`,
    else the condition's name) and the last value seen. An exception from the condition (e.g.
    a daemon that died) ends the wait at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            awaited = message or getattr(condition, "__qualname__", repr(condition))
            pytest.fail(
                f"timed out after {timeout:g}s waiting for {awaited}; "
                f"last value: {_show.repr(value)}"
            )
        time.sleep(interval)


class Unmet:
    """A condition's "not yet" that says how far things got: falsy, and shown on a timeout."""

    def __init__(self, progress: str) -> None:
        """`progress`: what the condition saw, e.g. "12 of 60 polls"."""
        self.progress = progress

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return self.progress


def catches(pid: int, signum: int) -> bool:
    """True when process `pid` has a handler for `signum` (or blocks it, keeping it pending):
    from then on that signal is the process's to handle, not the kernel's default action."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    mask = int(fields["SigCgt"], 16) | int(fields["SigBlk"], 16)
    return bool(mask >> (signum - 1) & 1)


def ready_for_sigterm(process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Wait until `process` catches SIGTERM: "started", for a process that promises to stop
    cleanly on SIGTERM at any moment after it starts."""

    def caught() -> bool:
        running(process, log)
        return catches(process.pid, signal.SIGTERM)

    wait_for(caught, interval=0.01, message=f"process {process.pid} to catch SIGTERM")


def running(process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Fail at once, with the end of its log, if `process` has exited: nothing it was meant to
    do will happen any more, so waiting out a deadline would only hide why."""
    code = process.poll()
    if code is not None:
        raise AssertionError(f"process {process.pid} exited with {code}:\n{tail(log)}")


def stop(
    process: subprocess.Popen[bytes],
    log: Path | None = None,
    sig: signal.Signals = signal.SIGTERM,
    timeout: float = DEADLINE_S,
) -> int:
    """Send `sig` and return the exit code (see exit_code)."""
    process.send_signal(sig)
    return exit_code(process, log, timeout, after=sig.name)


def exit_code(
    process: subprocess.Popen[bytes],
    log: Path | None = None,
    timeout: float = DEADLINE_S,
    after: str = "it was told to stop",
) -> int:
    """Wait for `process` to exit and return its code. One still running after `timeout` is
    killed and fails the test (with the end of its log)."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"process {process.pid} still ran {timeout:g}s after {after}:\n{tail(log)}")


def tail(log: Path | None, chars: int = 3000) -> str:
    """The end of a process's log, for a failure message."""
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-chars:]


@contextmanager
def reader(db_url: str) -> Iterator[Engine]:
    """An engine that reads the database a daemon is writing. On SQLite it is opened read-only:
    it neither creates the file nor takes the write lock (the recorder's own engines begin
    every transaction with BEGIN IMMEDIATE), so peeking cannot hold the daemon up."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "").expanduser().resolve()
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true")
    else:
        engine = db.create(db_url)
    try:
        yield engine
    finally:
        engine.dispose()


def peek(engine: Engine, query: Executable) -> list[Any]:
    """The rows of `query`, or [] while the database or its schema does not exist yet."""
    try:
        with engine.connect() as conn:
            return list(conn.execute(query).all())
    except DBAPIError:
        return []
