"""Signals and crashes, with real daemon processes: SIGTERM at start-up, SIGTERM and SIGINT
while a server holds the poll, and a restart after SIGKILL that resumes at once (SIGHUP
reloads instead: tests/test_reload.py)."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from recorder.models import Lease, Poll
from recorder.simulator import JobKind, SimConfig, Simulator
from tests.waiting import peek, reader, ready_for_sigterm, running, wait_for

TOKEN = "tok-signals-5be2"


def start(db_url: str, url: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url", url, *extra]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT
        )


def finish(process: subprocess.Popen[bytes], log: Path) -> int:
    """The exit code, waiting at most a generous deadline (only a hang takes that long)."""
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the daemon did not stop:\n{log.read_text()[-3000:]}")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimConfig(seed=12, token=TOKEN, kinds=(JobKind("video", 30.0, 5.0),), initial_jobs=2)
    with Simulator(config) as simulator:
        yield simulator


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_sigterm_at_any_moment_of_start_up_stops_cleanly(
    db_url: str, sim: Simulator, tmp_path: Path, delay: float
) -> None:
    log = tmp_path / "daemon.log"
    process = start(db_url, sim.url, log, "--interval", "0.2")
    ready_for_sigterm(process, log)  # the handler is the first thing the process installs
    time.sleep(delay * random.random())  # somewhere in opening the database, or polling
    process.send_signal(signal.SIGTERM)
    assert finish(process, log) == 0, log.read_text()
    assert "Traceback" not in log.read_text()


class SilentServer:
    """Accepts connections and never answers: a poll to it waits for its whole timeout."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v2/pixverse/scheduler/"
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_cuts_a_poll_that_waits_on_a_silent_server(
    tmp_path: Path, signum: int
) -> None:
    server = SilentServer()
    log = tmp_path / "daemon.log"
    db_url = f"sqlite:///{tmp_path / 'recorder.db'}"
    try:
        # A one-hour timeout: only aborting the poll in flight can stop the daemon in time.
        process = start(db_url, server.url, log, "--interval", "1", "--timeout", "3600")
        wait_for(lambda: server.accepted.is_set() and running(process, log) is None)
        process.send_signal(signum)
        began = time.monotonic()
        assert finish(process, log) == 0, log.read_text()
    finally:
        server.close()
    waited = time.monotonic() - began
    text = log.read_text()
    assert "stopping (" + signal.Signals(signum).name + ")" in text
    assert waited < 600  # far below the timeout: the poll was cut, not waited out
    with reader(db_url) as engine:
        # The cut poll is not recorded as a failure: the recorder stopped, the API did not fail.
        assert peek(engine, select(func.count()).select_from(Poll)) == [(0,)]


def test_a_restart_after_sigkill_resumes_at_once(
    db_url: str, sim: Simulator, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    # A 5 s interval and 20 s timeout: the old lease timeout would have been 35 s of standby.
    options = ("--interval", "5", "--timeout", "20")
    first = start(db_url, sim.url, log, *options)
    with reader(db_url) as engine:

        def polls(process: subprocess.Popen[bytes]) -> int:
            running(process, log)
            rows = peek(engine, select(func.count()).select_from(Poll))
            return int(rows[0][0]) if rows else 0

        wait_for(lambda: polls(first) >= 1, message="the first daemon's first poll")
        first.send_signal(signal.SIGKILL)
        first.wait()
        holder = peek(engine, select(Lease.holder))[0][0]
        before = peek(engine, select(func.count()).select_from(Poll))[0][0]
        restarted_at = time.time()
        second = start(db_url, sim.url, log, *options)
        try:
            wait_for(lambda: polls(second) > before, message="the restarted daemon's first poll")
            new_holder = peek(engine, select(Lease.holder))[0][0]
            last_poll = peek(engine, select(func.max(Poll.sent_at)))[0][0]
        finally:
            second.send_signal(signal.SIGTERM)
            assert finish(second, log) == 0
    text = log.read_text()
    assert "standby" not in text
    assert f"took over {sim.url} from {holder}" in text
    assert new_holder != holder
    # For the record, not asserted (timing belongs in benchmarks): -s shows it.
    print(f"first poll {last_poll.timestamp() - restarted_at:.2f}s after the restart began")


def test_a_daemon_whose_database_file_is_deleted_stops_with_a_clear_error(
    sim: Simulator, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    path = tmp_path / "recorder.db"
    db_url = f"sqlite:///{path}"
    process = start(db_url, sim.url, log, "--interval", "0.2")
    with reader(db_url) as engine:

        def polled() -> bool:
            running(process, log)
            return bool(peek(engine, select(Poll.id).limit(1)))

        wait_for(polled, message="the daemon's first poll")
    path.unlink()
    assert finish(process, log) == 1
    text = log.read_text()
    assert f"Error: the database file {path} was deleted; nothing more is written" in text
    assert "Traceback" not in text
    assert not path.exists()
