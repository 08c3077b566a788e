"""End to end: `recorder run` as a real process against the simulator, with faults and skew."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from recorder import db
from recorder.models import Job, Poll
from recorder.simulator import Account, Faults, JobKind, SimConfig, Simulator

TOKEN = "tok-e2e-8d02b7"
INTERVAL = 0.25
RUN_SECONDS = 12.0
SKEW_S = 45.0


@pytest.fixture
def faulty_sim() -> Iterator[Simulator]:
    faults = Faults(
        server_error=0.08,
        rate_limit=0.04,
        retry_after_s=1,
        garbage=0.04,
        slow=0.04,
        slow_s=0.6,
        skew_s=SKEW_S,
    )
    config = SimConfig(
        seed=21,
        token=TOKEN,
        kinds=(JobKind("video", 60.0, 4.0), JobKind("image", 120.0, 1.5)),
        accounts=(
            Account("alice@example.com", "12345", 8),
            Account("render-farm@example.org", "12345", 8),
        ),
        faults=faults,
        initial_jobs=3,
    )
    with Simulator(config) as sim:
        yield sim


def start_daemon(db_url: str, url: str, log_path: Path) -> subprocess.Popen[bytes]:
    env = os.environ | {"USEAPI_TOKEN": TOKEN}
    command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url", url]
    command += ["--interval", str(INTERVAL), "--timeout", "2"]
    with log_path.open("wb") as log:
        return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> tuple[int, float]:
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=10)
    return code, time.monotonic() - began


def test_the_daemon_records_the_simulators_truth(
    faulty_sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "daemon.log"
    process = start_daemon(db_url, faulty_sim.url, log_path)
    try:
        time.sleep(RUN_SECONDS)
    finally:
        code, took = stop(process)
    log = log_path.read_text()
    assert code == 0, log
    assert took < 5.0
    assert TOKEN not in log
    assert "Traceback" not in log

    engine = db.create(db_url)
    with engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__)).all()
        polls = conn.execute(select(Poll.__table__).order_by(Poll.id)).all()
    engine.dispose()
    truth = {j.api_id: j for j in faulty_sim.truth()}
    outcomes = {p.outcome for p in polls}
    assert {"ok", "server"} <= outcomes, outcomes  # faults really happened

    # Every job that a successful poll must have seen was recorded, once.
    ok_polls = [p for p in polls if p.outcome == "ok"]
    must_see = {
        j.api_id
        for j in truth.values()
        for p in ok_polls
        if j.start <= p.sent_at.timestamp() and p.received_at.timestamp() < j.end
    }
    recorded = {j.api_id for j in jobs}
    assert must_see <= recorded
    assert len(recorded) == len(jobs)
    assert recorded <= set(truth)

    finished = [j for j in jobs if j.status == "finished"]
    assert len(finished) >= 15
    slack = 0.005  # timestamps are stored to the microsecond; starts to the millisecond
    for job in finished:
        true = truth[job.api_id]
        assert job.start_min is None or job.start_min.timestamp() - slack <= true.start
        assert true.start <= job.start_max.timestamp() + slack
        assert job.end_min.timestamp() - slack <= true.end <= job.end_max.timestamp() + slack
        true_duration = true.end - true.start
        assert job.duration_min_s - slack <= true_duration <= job.duration_max_s + slack
        # Our clock, not the server's: a 45 s skew must not leak into the start.
        assert abs(job.start_at.timestamp() - true.start) < 1.0
        if not job.closed_across_gap:
            assert abs(job.end_at.timestamp() - true.end) <= INTERVAL / 2 + 1.0
    assert any(j.closed_across_gap for j in finished) or all(p.outcome == "ok" for p in polls)


def test_sigint_also_finishes_and_exits_zero(
    faulty_sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    process = start_daemon(db_url, faulty_sim.url, tmp_path / "daemon.log")
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=10) == 0
    engine = db.create(db_url)
    with engine.connect() as conn:
        polls = conn.execute(select(Poll.id)).all()
    engine.dispose()
    assert len(polls) >= 3


def test_sigterm_at_any_moment_exits_zero_promptly(
    faulty_sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    """Signals land anywhere in the scheduler's loop; none may hang or kill the daemon."""
    rng = random.Random(5)
    for attempt in range(8):
        log_path = tmp_path / f"daemon-{attempt}.log"
        env = os.environ | {"USEAPI_TOKEN": TOKEN}
        command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url"]
        command += [faulty_sim.url, "--interval", "0.05", "--timeout", "2"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        time.sleep(rng.uniform(1.0, 2.0))
        code, took = stop(process)
        assert code == 0, log_path.read_text()
        assert took < 5.0
