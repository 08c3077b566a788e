"""The daemon's loop body: backoff, health logging, transitions.

Every test drives Daemon.tick() by hand on a ManualClock (the daemon's monotonic clock), so
nothing here depends on how fast the machine is. A real process's signals: tests/test_e2e.py.
"""

from __future__ import annotations

import itertools
import logging

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from recorder.daemon import MAX_BACKOFF_S, Daemon
from recorder.pipeline import Pipeline
from recorder.simulator import ManualClock, SimConfig, Simulator
from recorder.snapshot import Failure, Outcome, PollResult
from recorder.store import Store
from tests.feeding import ok

URL = "http://127.0.0.1:9/v2/pixverse/scheduler/"
T0 = 1_750_000_000.0


class Script:
    """A poll source that plays back a list of results and counts calls."""

    def __init__(self, clock: ManualClock, results: list[PollResult | Outcome]) -> None:
        self.clock, self.results, self.calls = clock, results, 0

    def __call__(self) -> PollResult:
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, Outcome):
            retry = 30.0 if result is Outcome.RATE_LIMITED else None
            return PollResult(self.clock.t, self.clock.t, 429, Failure(result, "x", retry))
        return result


def daemon_for(store: Store, clock: ManualClock, source: Script, interval: float = 1.0) -> Daemon:
    pipeline = Pipeline(store, URL, source, gap_s=3 * interval)
    return Daemon(pipeline, interval, monotonic=clock)


def test_retry_after_is_honoured(store: Store) -> None:
    clock = ManualClock(T0)
    sim = Simulator(SimConfig(seed=1), clock=clock)
    source = Script(clock, [Outcome.RATE_LIMITED] + [ok(sim, clock) for _ in range(3)])
    daemon = daemon_for(store, clock, source)
    daemon.tick()
    for _ in range(29):
        clock.advance(1.0)
        assert daemon.tick() is None
    assert source.calls == 1
    clock.advance(1.0)
    assert daemon.tick() is not None
    assert source.calls == 2


def test_server_errors_back_off_exponentially_up_to_a_cap(store: Store) -> None:
    clock = ManualClock(T0)
    source = Script(clock, [Outcome.SERVER] * 12)
    daemon = daemon_for(store, clock, source, interval=10.0)
    times = []
    for _ in range(400):
        if daemon.tick() is not None:
            times.append(clock.t)
        clock.advance(10.0)
        if source.calls == 10:
            break
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [10.0, 20.0, 40.0, 80.0, 120.0]
    assert max(gaps) == pytest.approx(MAX_BACKOFF_S)


def test_health_changes_are_logged_once_not_per_poll(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    sim = Simulator(SimConfig(seed=1), clock=clock)
    source = Script(clock, [Outcome.NETWORK] * 5 + [ok(sim, clock)] + [Outcome.AUTH] * 3)
    daemon = daemon_for(store, clock, source)
    with caplog.at_level(logging.INFO, logger="recorder"):
        for _ in range(9):
            daemon.tick()
            clock.advance(1.0)
    lines = [
        r.getMessage()
        for r in caplog.records
        if "fail" in r.getMessage() or "recover" in r.getMessage()
    ]
    assert lines == [
        "failing (network): x",
        "recovered after 5 failed poll(s) over 5.0s",
        "failing (auth): x",
    ]
    auth = [r for r in caplog.records if r.getMessage() == "failing (auth): x"]
    assert auth[0].levelno == logging.ERROR  # loud: nobody fixes a token by waiting
    assert daemon.health.failing == "auth"


def test_each_transition_is_logged_once(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(T0)
    sim = Simulator(SimConfig(seed=2, initial_jobs=3), clock=clock)
    results = []
    for _ in range(40):
        results.append(ok(sim, clock))
        clock.advance(5.0)
    daemon = daemon_for(store, ManualClock(T0), Script(clock, results), interval=5.0)
    with caplog.at_level(logging.INFO, logger="recorder"):
        recorded = [daemon.tick() for _ in range(40)]
    appeared = sum(len(r.change.opened) for r in recorded if r)
    vanished = sum(len(r.change.closed) for r in recorded if r)
    messages = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("appeared") for m in messages) == appeared > 3
    assert sum(m.startswith("vanished") for m in messages) == vanished > 0


def test_a_database_error_is_reported_and_the_daemon_goes_on(
    store: Store, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(T0)
    sim = Simulator(SimConfig(seed=1), clock=clock)
    daemon = daemon_for(store, clock, Script(clock, [ok(sim, clock) for _ in range(4)]))

    def locked(*_args: object) -> int:
        raise OperationalError("INSERT", {}, Exception("database is locked"))

    monkeypatch.setattr(store, "record", locked)
    with caplog.at_level(logging.INFO, logger="recorder"):
        assert daemon.tick() is None
        assert daemon.tick() is None
        monkeypatch.undo()
        assert daemon.tick() is not None
    messages = [r.getMessage() for r in caplog.records]
    failing = [m for m in messages if m.startswith("failing (database)")]
    assert failing == [
        "failing (database): cannot write to the database (1 poll(s) kept, to be written in "
        "order when it is back): database is locked"
    ]
    assert any(m.startswith("recovered after 2 failed poll(s)") for m in messages)
    # Nothing was lost: the two polls kept while the database failed were written, in order.
    with store.engine.connect() as conn:
        sent = [row[0] for row in conn.execute(text("SELECT sent_at FROM polls ORDER BY id"))]
    assert len(sent) == 3
    assert sent == sorted(sent)
