"""Process faults: the daemon killed at random points, again and again; SIGTERM; the token."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from recorder import db
from recorder.daemon import gap_threshold
from recorder.models import Job, Poll, Transition
from recorder.simulator import Faults, JobKind, SimConfig, Simulator

TOKEN = "tok-kill-3d94a0e7"
INTERVAL = 0.1


def start(db_url: str, url: str, log: Path, token: str = TOKEN) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url", url]
    command += ["--interval", str(INTERVAL), "--timeout", "1"]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": token}, stdout=out, stderr=subprocess.STDOUT
        )


def history(db_url: str) -> tuple[list[Any], list[Any], list[Any]]:
    engine = db.create(db_url)
    with engine.connect() as conn:
        jobs = conn.execute(select(Job.__table__)).all()
        polls = conn.execute(select(Poll.__table__).order_by(Poll.id)).all()
        transitions = conn.execute(select(Transition.__table__).order_by(Transition.id)).all()
    engine.dispose()
    return jobs, polls, transitions


def check_consistent(db_url: str, truth: dict[str, Any]) -> None:
    """One row per job, statuses that match the transitions, gaps recorded, bounds true."""
    jobs, polls, transitions = history(db_url)
    assert len({j.api_id for j in jobs}) == len(jobs)
    kinds = defaultdict(list)
    for t in transitions:
        kinds[t.job_id].append(t.kind)
    for job in jobs:
        sequence = kinds[job.id]
        assert sequence[0] == "appeared"
        assert (sequence[-1] == "vanished") == (job.status == "finished"), sequence
        if job.status == "finished":
            assert job.end_at is not None and job.duration_s is not None
            assert job.duration_min_s - 1e-6 <= job.duration_s
            assert job.duration_max_s is None or job.duration_s <= job.duration_max_s + 1e-6
            true = truth[job.api_id]
            assert job.end_min.timestamp() - 1e-3 <= true.end <= job.end_max.timestamp() + 1e-3
        else:
            assert job.end_at is None and job.duration_s is None
    # Every gap recorded: a silence longer than the threshold, or failed polls, between two
    # successful polls marks the second one.
    ok = [p for p in polls if p.outcome == "ok"]
    threshold = gap_threshold(INTERVAL)
    failed_between = {p.id for p in polls if p.outcome != "ok"}
    for prev, poll in itertools.pairwise(ok):
        silence = (poll.sent_at - prev.received_at).total_seconds()
        failures = any(prev.id < f < poll.id for f in failed_between)
        assert poll.after_gap == (failures or silence > threshold), (prev, poll)


def test_killed_twenty_times_the_history_stays_consistent(db_url: str, tmp_path: Path) -> None:
    faults = Faults(server_error=0.05, rate_limit=0.02, retry_after_s=1, skew_s=-35.0)
    kinds = (JobKind("video", 40.0, 3.0), JobKind("image", 80.0, 1.0))
    config = SimConfig(seed=31, token=TOKEN, kinds=kinds, faults=faults, initial_jobs=3)
    rng = random.Random(31)
    log = tmp_path / "daemon.log"
    with Simulator(config) as sim:
        for _ in range(20):
            process = start(db_url, sim.url, log)
            time.sleep(rng.uniform(0.8, 2.0))  # lands anywhere: polling, writing, starting
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
        process = start(db_url, sim.url, log)  # a last, clean run closes what vanished
        time.sleep(3.0)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        truth = {j.api_id: j for j in sim.truth()}
    check_consistent(db_url, truth)
    jobs, polls, _ = history(db_url)
    assert len(jobs) > 30 and len(polls) > 60
    assert any(p.after_gap for p in polls)
    assert TOKEN not in log.read_text()


def test_sigterm_exits_within_one_poll_timeout(db_url: str, tmp_path: Path) -> None:
    faults = Faults(slow=1.0, slow_s=5.0)  # every answer takes longer than the timeout
    with Simulator(SimConfig(seed=2, token=TOKEN, faults=faults)) as sim:
        process = start(db_url, sim.url, tmp_path / "daemon.log")
        time.sleep(1.5)  # a poll is in flight, waiting on a slow answer
        began = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - began < 1.0 + 1.5  # the timeout, and a little for the exit


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_token_is_nowhere(db_url: str, tmp_path: Path) -> None:
    """Through faults and a wrong token: not in the logs, the database, --help or argv."""
    faults = Faults(server_error=0.2, garbage=0.1, rate_limit=0.1, retry_after_s=1)
    log = tmp_path / "daemon.log"
    with Simulator(SimConfig(seed=5, token=TOKEN, faults=faults, initial_jobs=2)) as sim:
        process = start(db_url, sim.url, log)
        time.sleep(2.0)
        cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        wrong = start(db_url, sim.url, log, token=TOKEN + "-revoked")  # 401 every time
        time.sleep(1.5)
        wrong.send_signal(signal.SIGTERM)
        assert wrong.wait(timeout=10) == 0
        help_text = subprocess.run(
            [sys.executable, "-m", "recorder", "run", "--help"],
            env=os.environ | {"USEAPI_TOKEN": TOKEN},
            capture_output=True,
            check=True,
        ).stdout
    text = log.read_text()
    assert "failing (auth)" in text and "failing (server)" in text  # the faults happened
    database = Path(db_url.removeprefix("sqlite:///"))
    stored = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))
    for haystack in (text.encode(), stored, help_text, cmdline):
        assert TOKEN.encode() not in haystack
