"""Soak: the daemon polls the simulator at 20 Hz with random faults; memory stays flat and every
job is accounted for. About 30 seconds' worth of polls in the default run; 10 minutes' worth with
`pytest -m slow`. The soak is measured in polls, not seconds, so that a slow machine soaks as
long, not less: memory is sampled after each thirtieth of the polls.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from recorder import db
from recorder.models import Job, Poll
from recorder.simulator import Account, Faults, JobKind, SimConfig, Simulator
from tests.waiting import DEADLINE_S, Unmet, peek, reader, running, stop, wait_for

TOKEN = "tok-soak-0b7c"
INTERVAL = 0.05  # 20 Hz
# Polls per second of soak: what an unloaded machine records at 20 Hz, less backoffs, slow
# answers and start-up. A loaded one takes longer over as many polls.
POLLS_PER_S = 14
SAMPLES = 30  # RSS readings, one after each thirtieth of the polls


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def soak(db_url: str, tmp_path: Path, seconds: float) -> None:
    faults = Faults(
        server_error=0.03,
        rate_limit=0.01,
        retry_after_s=1,
        garbage=0.01,
        slow=0.01,
        slow_s=0.3,
        skew_s=20.0,
    )
    accounts = (Account("a@example.com", "1", 8), Account("b@example.com", "1", 8))
    kinds = (JobKind("video", 30.0, 6.0), JobKind("image", 90.0, 1.5))
    config = SimConfig(seed=77, token=TOKEN, kinds=kinds, accounts=accounts, faults=faults)
    log = tmp_path / "soak.log"
    with Simulator(config) as sim, log.open("wb") as out:
        command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url", sim.url]
        command += ["--interval", str(INTERVAL), "--timeout", "1"]
        process = subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT
        )
        target = int(seconds * POLLS_PER_S)
        began = time.monotonic()  # for the figures printed, not for any assertion
        samples = []
        try:
            with reader(db_url) as live:
                # Between two samples: a hang, not a slow machine, takes ten times as long.
                deadline = DEADLINE_S + 10 * INTERVAL * target / SAMPLES
                for milestone in range(1, SAMPLES + 1):
                    polls = milestone * target // SAMPLES

                    def reached(polls: int = polls) -> bool | Unmet:
                        running(process, log)
                        rows = peek(live, select(func.count()).select_from(Poll))
                        done = int(rows[0][0]) if rows else 0
                        return done >= polls or Unmet(f"{done} of {polls} polls")

                    wait_for(reached, deadline, 0.1, message=f"{polls} polls recorded")
                    samples.append(rss_kib(process.pid))
        finally:
            code = stop(process, log)
        truth = {j.api_id: j for j in sim.truth()}
    assert code == 0, log.read_text()[-2000:]

    # Memory: after the first third (imports, pools, caches warm), it stays flat.
    settled = samples[len(samples) // 3 :]
    growth_mib = (max(settled) - settled[0]) / 1024
    assert growth_mib < 8, f"RSS grew {growth_mib:.1f} MiB: {samples}"

    engine = db.create(db_url)
    with engine.connect() as conn:
        jobs = {row.api_id: row for row in conn.execute(select(Job.__table__))}
        polls = conn.execute(select(Poll.sent_at, Poll.received_at, Poll.outcome)).all()
    engine.dispose()
    ok = [p for p in polls if p.outcome == "ok"]
    print(  # shown with -s: the figures behind the assertions
        f"soak of {target} polls in {time.monotonic() - began:.1f}s: {len(polls)} polls "
        f"({len(ok)} ok), {len(jobs)} jobs, "
        f"RSS {samples[0]} -> {settled[0]} -> {samples[-1]} KiB (max {max(settled)})"
    )
    assert len(polls) >= target
    # Every job a successful poll must have seen is recorded, and its bounds hold the truth.
    seen = {
        j.api_id
        for j, p in itertools.product(truth.values(), ok)
        if j.start <= p.sent_at.timestamp() and p.received_at.timestamp() < j.end
    }
    assert seen <= set(jobs)
    assert set(jobs) <= set(truth)
    for api_id, job in jobs.items():
        if job.status == "finished":
            true = truth[api_id]
            assert job.end_min.timestamp() - 1e-3 <= true.end <= job.end_max.timestamp() + 1e-3
            assert job.duration_min_s - 1e-3 <= true.end - true.start <= job.duration_max_s + 1e-3


@pytest.mark.parametrize("backend", ["sqlite"])
def test_soak_30_seconds(db_url: str, tmp_path: Path) -> None:
    soak(db_url, tmp_path, float(os.environ.get("RECORDER_SOAK_SECONDS", "30")))


@pytest.mark.slow
def test_soak_10_minutes(db_url: str, tmp_path: Path) -> None:
    soak(db_url, tmp_path, 600.0)
