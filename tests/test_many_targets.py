"""Many targets in one process (`recorder run --config`, `recorder poll --config`): each target
keeps its own schedule, history and lease, and a slow or dead server holds up no other target.

Nothing here asserts on time: each test waits for counts of recorded polls, which a serial
runner could not reach before the (generous) deadline, and a loaded machine only reaches later.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from recorder import db
from recorder.cli import cli
from recorder.daemon import Daemon, run_daemons
from recorder.models import Job, Lease, Poll, Target
from recorder.pipeline import Pipeline, Recorded
from recorder.simulator import Faults, JobKind, ManualClock, SimConfig, Simulator
from recorder.snapshot import Failure, Outcome, PollResult
from recorder.stopping import STOP
from recorder.store import Store
from tests.feeding import ok
from tests.waiting import DEADLINE_S, Unmet, peek, reader, running, stop, wait_for

TOKEN = "tok-many-0c7f52"
INTERVAL = 0.25
# What the daemon logs about one target (the other lines are about the whole process).
ABOUT_A_TARGET = re.compile(r"appeared|vanished|failing|recovered|backing off|standby|took over")


def world(seed: int, faults: Faults | None = None) -> SimConfig:
    """A simulated scheduler whose jobs end within seconds."""
    return SimConfig(
        seed=seed,
        token=TOKEN,
        kinds=(JobKind("video", 40.0, 3.0), JobKind("image", 60.0, 1.5)),
        faults=faults or Faults(),
        initial_jobs=2,
    )


@pytest.fixture
def sims() -> Iterator[list[Simulator]]:
    with ExitStack() as stack:
        yield [stack.enter_context(Simulator(world(seed))) for seed in (31, 32, 33)]


def config(tmp_path: Path, targets: dict[str, dict[str, Any]]) -> Path:
    """A config file of `targets` (name: keys); the token from $USEAPI_TOKEN unless a target's
    keys say otherwise."""
    lines = []
    for name, keys in targets.items():
        keys = {"service": "pixverse", "token_env": "USEAPI_TOKEN"} | keys
        lines += [
            f"[targets.{json.dumps(name)}]",
            *(f"{k} = {json.dumps(v)}" for k, v in keys.items()),
            "",
        ]
    path = tmp_path / "targets.toml"
    path.write_text("\n".join(lines))
    return path


def start(db_url: str, config_file: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "recorder",
        "--db",
        db_url,
        "run",
        "--config",
        str(config_file),
    ]
    with log.open("wb") as out:
        return subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT
        )


def polls_by_url(live: Engine, outcome: str | None = None) -> dict[str, int]:
    """Recorded polls per target URL (of one outcome, if given)."""
    query = select(Target.url, func.count()).join(Poll, Poll.target_id == Target.id)
    if outcome is not None:
        query = query.where(Poll.outcome == outcome)
    return {row[0]: int(row[1]) for row in peek(live, query.group_by(Target.url))}


def leases(live: Engine) -> list[Any]:
    return peek(live, select(Lease.target_id, Lease.holder))


def check_log(log: Path, names: list[str]) -> str:
    """The log, checked: no token, no traceback, and every line about a target names it."""
    text = log.read_text()
    assert TOKEN not in text
    assert "Traceback" not in text
    for line in text.splitlines():
        message = line.split(maxsplit=2)[-1]  # after the time and the level
        if ABOUT_A_TARGET.search(message):
            assert any(message.startswith(f"[{name}] ") for name in names), line
    return text


def check_against_truth(engine: Engine, url: str, sim: Simulator) -> int:
    """One target's history against its simulator's truth: every job that a successful poll
    must have seen is recorded once, nothing else is, and every finished job's bounds hold.
    Returns how many finished jobs were checked."""
    with engine.connect() as conn:
        target_id = conn.scalar(select(Target.id).where(Target.url == url))
        jobs = conn.execute(select(Job.__table__).where(Job.target_id == target_id)).all()
        polls = conn.execute(select(Poll.__table__).where(Poll.target_id == target_id)).all()
    truth = {job.api_id: job for job in sim.truth()}
    ok_polls = [p for p in polls if p.outcome == "ok"]
    must_see = {
        job.api_id
        for job in truth.values()
        for p in ok_polls
        if job.start <= p.sent_at.timestamp() and p.received_at.timestamp() < job.end
    }
    recorded = [job.api_id for job in jobs]
    assert len(set(recorded)) == len(recorded)  # each job once
    assert must_see <= set(recorded) <= set(truth)  # and only this simulator's jobs
    slack = 0.005  # timestamps are stored to the microsecond; starts to the millisecond
    finished = [job for job in jobs if job.status == "finished"]
    for job in finished:
        true = truth[job.api_id]
        assert job.start_min is None or job.start_min.timestamp() - slack <= true.start
        assert true.start <= job.start_max.timestamp() + slack
        assert job.end_min.timestamp() - slack <= true.end <= job.end_max.timestamp() + slack
        true_duration = true.end - true.start
        assert job.duration_min_s - slack <= true_duration
        # Unbounded above when the start is (a job listed from the first poll, without a time).
        assert job.duration_max_s is None or true_duration <= job.duration_max_s + slack
    return len(finished)


def test_one_process_records_three_targets_into_one_database(
    sims: list[Simulator], db_url: str, tmp_path: Path
) -> None:
    names = ["pixverse-a", "pixverse.b", "pixverse_c"]
    urls = {name: sim.url for name, sim in zip(names, sims, strict=True)}
    path = config(
        tmp_path, {name: {"url": url, "interval": INTERVAL} for name, url in urls.items()}
    )
    log = tmp_path / "daemon.log"
    process = start(db_url, path, log)
    try:
        with reader(db_url) as live:

            def each_target_saw_jobs_end() -> bool | Unmet:
                running(process, log)
                finished = peek(
                    live,
                    select(Target.url, func.count())
                    .join(Job, Job.target_id == Target.id)
                    .where(Job.status == "finished")
                    .group_by(Target.url),
                )
                counts = {row[0]: row[1] for row in finished}
                held = len(leases(live))
                if held == 3 and all(counts.get(url, 0) >= 5 for url in urls.values()):
                    return True
                return Unmet(f"finished jobs per target {counts}, {held} lease(s) held")

            wait_for(each_target_saw_jobs_end, message="5 finished jobs of each target")
            processes = {row.holder.rsplit(":", 1)[0] for row in leases(live)}
            assert processes == {f"{socket.gethostname()}:{process.pid}"}  # one holds all
    finally:
        code = stop(process, log)
    assert code == 0, log.read_text()
    text = check_log(log, names)
    for name, url in urls.items():
        assert f"[{name}] recording {url} (pixverse) every 0.25s" in text
    engine = db.create(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(Lease.__table__)).all() == []  # every lease released
            assert set(conn.scalars(select(Target.url))) == set(urls.values())
        for sim in sims:
            assert check_against_truth(engine, sim.url, sim) >= 5
    finally:
        engine.dispose()


def refusing_port() -> socket.socket:
    """A bound socket that does not listen: a connection to its port is refused at once (a
    server that is down), and no other process can take the port meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.mark.parametrize(
    ("slow_s", "timeout"), [(5.0, 30.0), (3600.0, 600.0)], ids=["slow", "hanging"]
)
def test_a_slow_target_and_a_down_target_hold_up_no_other(
    tmp_path: Path, slow_s: float, timeout: float
) -> None:
    """A healthy target goes on polling at its own interval while another's server holds
    every answer (for seconds, or for the whole test) and a third refuses connections."""
    answers = slow_s < timeout
    db_url = f"sqlite:///{tmp_path / 'recorder.db'}"
    log = tmp_path / "daemon.log"
    with ExitStack() as stack:
        healthy = stack.enter_context(Simulator(world(41)))
        slow = stack.enter_context(Simulator(world(42, Faults(slow=1.0, slow_s=slow_s))))
        slow_url = slow.url
        down = refusing_port()
        stack.callback(down.close)
        down_url = f"http://127.0.0.1:{down.getsockname()[1]}/v2/pixverse/scheduler/"
        targets = {
            "healthy": {"url": healthy.url, "interval": INTERVAL, "timeout": 5.0},
            "slow": {"url": slow.url, "interval": INTERVAL, "timeout": timeout},
            "down": {"url": down_url, "interval": INTERVAL, "timeout": 5.0},
        }
        process = start(db_url, config(tmp_path, targets), log)
        try:
            with reader(db_url) as live:

                def others_polled_on() -> bool | Unmet:
                    running(process, log)
                    good = polls_by_url(live, "ok")
                    failed = polls_by_url(live, "network")
                    slow_done = good.get(slow.url, 0) >= 1 or not answers
                    if good.get(healthy.url, 0) >= 20 and failed.get(down_url, 0) >= 3:
                        return slow_done or Unmet(f"no answer from the slow target yet: {good}")
                    return Unmet(f"ok polls {good}, refused polls {failed}")

                # A runner that waited for the slow answers would make at most one poll of
                # the healthy target per slow answer: 20 of them would take 20 * slow_s.
                wait_for(others_polled_on, message="the healthy and the down target's polls")
                assert len(leases(live)) == 3
        finally:
            code = stop(process, log)
        assert code == 0, log.read_text()
        with reader(db_url) as live:
            assert leases(live) == []
            recorded = polls_by_url(live)
    text = check_log(log, list(targets))
    assert "[down] failing (network): network error" in text
    if not answers:
        # Its poll was in flight the whole time: cut on stop, and not recorded.
        assert slow_url not in recorded
        assert "[slow] failing" not in text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_stops_every_target_and_releases_every_lease(
    sims: list[Simulator], tmp_path: Path, signum: signal.Signals
) -> None:
    db_url = f"sqlite:///{tmp_path / 'recorder.db'}"
    urls = [sim.url for sim in sims]
    path = config(tmp_path, {f"t{i}": {"url": url, "interval": 0.5} for i, url in enumerate(urls)})
    log = tmp_path / "daemon.log"
    process = start(db_url, path, log)
    try:
        with reader(db_url) as live:

            def all_recording() -> bool | Unmet:
                running(process, log)
                counts, held = polls_by_url(live), len(leases(live))
                if held == 3 and all(counts.get(url, 0) >= 2 for url in urls):
                    return True
                return Unmet(f"polls {counts}, {held} lease(s)")

            wait_for(all_recording, message="every target recording")
    finally:
        code = stop(process, log, signum)
    assert code == 0, log.read_text()
    assert f"stopping ({signum.name})" in check_log(log, ["t0", "t1", "t2"])
    with reader(db_url) as live:
        assert leases(live) == []


# --- in one process: the runner itself ----------------------------------------------------


def test_the_runner_polls_a_target_while_another_target_hangs(store: Store) -> None:
    """Two daemons under run_daemons: one's poll never returns until aborted; the other
    reaches its polls anyway, then stops them both (the hung poll is cut, not recorded)."""
    clock = ManualClock(1_750_000_000.0)
    sim = Simulator(SimConfig(seed=5, initial_jobs=2), clock=clock)
    released = threading.Event()
    ticks: list[Recorded | None] = []

    def hung() -> PollResult:
        released.wait(DEADLINE_S)
        return PollResult(clock.t, clock.t, None, Failure(Outcome.NETWORK, "aborted"))

    def feed() -> PollResult:
        clock.advance(INTERVAL)
        return ok(sim, clock)

    def count(recorded: Recorded | None) -> None:
        ticks.append(recorded)
        if len(ticks) == 20:
            STOP.requested.append("enough polls")  # what a signal handler does

    stuck = Daemon(
        Pipeline(store, "http://127.0.0.1:9/hung/", hung, gap_s=1.0),
        INTERVAL,
        lease_ttl_s=60.0,
        abort=released.set,
        name="hung",
    )
    healthy = Daemon(
        Pipeline(store, "http://127.0.0.1:9/ok/", feed, gap_s=1.0),
        0.05,
        lease_ttl_s=60.0,
        on_poll=count,
        name="ok",
    )
    run_daemons([stuck, healthy], stop_after=DEADLINE_S)  # SIGALRM only bounds a hang
    assert len(ticks) >= 20 and all(tick is not None for tick in ticks[:20])
    assert released.is_set()  # the hung poll was aborted on stop
    assert (stuck.polls, stuck.fatal, healthy.fatal) == (0, None, None)
    with store.engine.connect() as conn:
        assert conn.execute(select(Lease.__table__)).all() == []
        polled = dict(
            conn.execute(
                select(Target.url, func.count())
                .join(Poll, Poll.target_id == Target.id)
                .group_by(Target.url)
            ).all()
        )
    assert polled == {"http://127.0.0.1:9/ok/": healthy.polls}


# --- poll --config ----------------------------------------------------------------------------


def test_poll_config_polls_each_target_once(
    sims: list[Simulator], db_url: str, tmp_path: Path
) -> None:
    path = config(tmp_path, {f"t{i}": {"url": sim.url} for i, sim in enumerate(sims)})
    runner = CliRunner()
    args = ["--db", db_url, "poll", "--config", str(path)]
    result = runner.invoke(cli, args, env={"USEAPI_TOKEN": TOKEN}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == ["[t0]", "[t1]", "[t2]"]
    for line in lines:  # a first poll: every job listed is new
        listed = re.fullmatch(r"\[t\d\] ok: (\d+) job\(s\) listed; (\d+) appeared, .*", line)
        assert listed is not None and listed[1] == listed[2], line
    with reader(db_url) as live:
        assert polls_by_url(live) == {sim.url: 1 for sim in sims}
        assert leases(live) == []


def test_poll_config_fails_when_any_target_failed(
    sims: list[Simulator], db_url: str, tmp_path: Path
) -> None:
    targets = {f"t{i}": {"url": sim.url} for i, sim in enumerate(sims)}
    targets["t1"]["token_env"] = "OTHER_TOKEN"  # the wrong token
    path = config(tmp_path, targets)
    env = {"USEAPI_TOKEN": TOKEN, "OTHER_TOKEN": "tok-wrong-91"}
    runner = CliRunner()
    args = ["--db", db_url, "poll", "--config", str(path)]
    result = runner.invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("[t0] ok: ") and lines[2].startswith("[t2] ok: ")
    assert lines[1].startswith("[t1] poll failed (auth): HTTP 401")
    assert lines[3] == "Error: 1 of 3 target(s) failed: t1"
    assert TOKEN not in result.output and "tok-wrong-91" not in result.output
    with reader(db_url) as live:
        assert polls_by_url(live) == {sim.url: 1 for sim in sims}
