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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from recorder import db
from recorder.daemon import gap_threshold
from recorder.models import Job, Poll, Transition
from recorder.simulator import Faults, JobKind, SimConfig, Simulator
from tests.waiting import DEADLINE_S, Unmet, peek, reader, running, stop, wait_for

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
        transitions = conn.execute(
            select(Transition.__table__).order_by(Transition.poll_id, Transition.job_id)
        ).all()
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


def count(engine: Engine, rows_of: Any) -> int:
    """How many rows a table (or a subquery) holds in a database a daemon is writing."""
    rows = peek(engine, select(func.count()).select_from(rows_of))
    return int(rows[0][0]) if rows else 0


def test_killed_twenty_times_the_history_stays_consistent(db_url: str, tmp_path: Path) -> None:
    faults = Faults(server_error=0.05, rate_limit=0.02, retry_after_s=1, skew_s=-35.0)
    kinds = (JobKind("video", 40.0, 3.0), JobKind("image", 80.0, 1.0))
    config = SimConfig(seed=31, token=TOKEN, kinds=kinds, faults=faults, initial_jobs=3)
    rng = random.Random(31)
    log = tmp_path / "daemon.log"
    with Simulator(config) as sim, reader(db_url) as live:
        for _ in range(20):
            process = start(db_url, sim.url, log)
            if rng.random() < 0.5:
                # Lands while it records: once this run has written, at a random point after.
                before = count(live, Poll)

                def recording(
                    process: subprocess.Popen[bytes] = process, before: int = before
                ) -> bool:
                    running(process, log)
                    return count(live, Poll) > before

                wait_for(recording, interval=0.02, message="the restarted daemon to record")
                time.sleep(rng.uniform(0.0, 0.3))
            else:
                time.sleep(rng.uniform(0.0, 1.5))  # lands anywhere: starting, standing by, polling
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=DEADLINE_S)
        process = start(db_url, sim.url, log)  # a last, clean run closes what vanished
        before = count(live, Poll)

        def enough() -> bool | Unmet:
            """This run polled, and the whole history is big enough, gaps included."""
            running(process, log)
            polls, jobs = count(live, Poll), count(live, Job)
            gaps = count(live, select(Poll.id).where(Poll.after_gap).subquery())
            if polls > before and polls > 60 and jobs > 30 and gaps:
                return True
            return Unmet(
                f"{polls} polls ({polls - before} in this run, {gaps} after a gap), {jobs} jobs"
            )

        try:
            wait_for(enough, interval=0.1, message="the history of the last run")
        finally:
            code = stop(process, log)
        assert code == 0, log.read_text()[-3000:]
        truth = {j.api_id: j for j in sim.truth()}
    check_consistent(db_url, truth)
    jobs, polls, _ = history(db_url)
    assert len(jobs) > 30 and len(polls) > 60
    assert any(p.after_gap for p in polls)
    assert TOKEN not in log.read_text()


# Far beyond any deadline here: a daemon that waited for the answer would not stop in time.
SLOW_S = 600.0


def test_sigterm_exits_within_one_poll_timeout(db_url: str, tmp_path: Path) -> None:
    """Every answer takes ten minutes; the poll in flight gives up at its 1 s timeout (or is
    cut short), so the daemon stops well within the deadline instead of waiting for it."""
    assert DEADLINE_S < SLOW_S / 2  # else stopping in time would not tell the two apart
    faults = Faults(slow=1.0, slow_s=SLOW_S)
    log = tmp_path / "daemon.log"
    with Simulator(SimConfig(seed=2, token=TOKEN, faults=faults)) as sim:
        process = start(db_url, sim.url, log)

        def in_flight() -> bool:
            running(process, log)
            return sim.faults_injected["slow"] > 0  # counted when a request arrives

        try:
            wait_for(in_flight, interval=0.01, message="a poll in flight")
        finally:
            code = stop(process, log, timeout=DEADLINE_S)
    assert code == 0, log.read_text()


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_token_is_nowhere(db_url: str, tmp_path: Path) -> None:
    """Through faults and a wrong token: not in the logs, the database, --help or argv."""
    faults = Faults(server_error=0.2, garbage=0.1, rate_limit=0.1, retry_after_s=1)
    log = tmp_path / "daemon.log"
    with Simulator(SimConfig(seed=5, token=TOKEN, faults=faults, initial_jobs=2)) as sim:
        process = start(db_url, sim.url, log)
        try:
            wait_for(logged(process, log, "failing (server)"), message="a server error logged")
            cmdline = Path(f"/proc/{process.pid}/cmdline").read_bytes()
        finally:
            code = stop(process, log)
        assert code == 0, log.read_text()
        wrong = start(db_url, sim.url, log, token=TOKEN + "-revoked")  # 401 every time
        try:
            wait_for(logged(wrong, log, "failing (auth)"), message="the 401 logged")
        finally:
            code = stop(wrong, log)
        assert code == 0, log.read_text()
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


def logged(process: subprocess.Popen[bytes], log: Path, text: str) -> Callable[[], bool]:
    """A condition: `text` is in the log (and the process still runs)."""

    def condition() -> bool:
        running(process, log)
        return text in log.read_text()

    return condition
