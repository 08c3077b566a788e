"""End to end: one daemon, from a config file, records five simulated services at once, through
faults, and each service's history is its simulator's truth.

The services answer in their own shapes (PixVerse's list, Kling's numeric ids and emails,
MiniMax's videoId/imageId, Runway's tasks without any time, Dreamina's envelope keyed by
account with elapsedSeconds), from one simulator server, each at its real path. Nothing here
asserts on time: the test waits for counts of finished jobs, with a deadline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from recorder import db
from recorder.cli import cli
from recorder.models import Job, Lease, Poll, Target
from recorder.simulator import Faults, JobKind, SimConfig, SimulatorGroup
from tests.test_many_targets import check_against_truth, check_log
from tests.test_simulator_services import CARRIES
from tests.waiting import Unmet, peek, reader, running, stop, wait_for

TOKEN = "tok-services-5e21a9"
INTERVAL = 0.25
SERVICES = ("pixverse", "kling", "minimax", "runway", "dreamina")
FINISHED_EACH = 5
# Every kind of bad answer but an empty list (which would show every job as ended: the recorder
# would rightly record ends that the truth does not have).
FAULTS = Faults(
    server_error=0.05, rate_limit=0.05, retry_after_s=0, garbage=0.05, slow=0.05, slow_s=0.3
)


def world(service: str, seed: int) -> SimConfig:
    """A simulated service whose jobs end within seconds, with faults."""
    return SimConfig(
        seed=seed,
        token=TOKEN,
        service=service,
        kinds=(JobKind("video", 40.0, 3.0), JobKind("image", 60.0, 1.5)),
        faults=FAULTS,
        initial_jobs=2,
    )


@pytest.fixture
def group() -> Iterator[SimulatorGroup]:
    with SimulatorGroup([world(name, 50 + k) for k, name in enumerate(SERVICES)]) as sims:
        yield sims


def config_file(tmp_path: Path, urls: dict[str, str]) -> Path:
    """One [targets.NAME] table per service, its URL the simulator's."""
    lines: list[str] = []
    for service, url in urls.items():
        lines += [
            f"[targets.{service}-main]",
            f'service = "{service}"',
            f"url = {json.dumps(url)}",
            'token_env = "USEAPI_TOKEN"',
            f"interval = {INTERVAL}",
            "timeout = 5",
            "",
        ]
    path = tmp_path / "recorder.toml"
    path.write_text("\n".join(lines))
    return path


def test_one_daemon_records_five_services_through_faults(
    group: SimulatorGroup, db_url: str, tmp_path: Path
) -> None:
    sims = {sim.config.service: sim for sim in group.simulators}
    urls = {name: sim.url for name, sim in sims.items()}
    log = tmp_path / "daemon.log"
    command = [sys.executable, "-m", "recorder", "--db", db_url, "run"]
    command += ["--config", str(config_file(tmp_path, urls))]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        with reader(db_url) as live:

            def every_service_saw_jobs_end() -> bool | Unmet:
                running(process, log)
                rows = peek(
                    live,
                    select(Target.service, func.count())
                    .join(Job, Job.target_id == Target.id)
                    .where(Job.status == "finished")
                    .group_by(Target.service),
                )
                counts = {row[0]: row[1] for row in rows}
                if all(counts.get(name, 0) >= FINISHED_EACH for name in SERVICES):
                    return True
                return Unmet(f"finished jobs per service: {counts}")

            wait_for(every_service_saw_jobs_end, message="finished jobs of every service")
    finally:
        code = stop(process, log)
    assert code == 0, log.read_text()
    check_log(log, [f"{name}-main" for name in SERVICES])
    engine = db.create(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(Lease.__table__)).all() == []
            targets = {row.url: row for row in conn.execute(select(Target.__table__))}
            outcomes = dict(
                conn.execute(select(Poll.outcome, func.count()).group_by(Poll.outcome)).all()
            )
        # The faults happened (server errors, 429s, garbage: about one poll in seven), and
        # the histories below are true anyway.
        assert sum(n for outcome, n in outcomes.items() if outcome != "ok") > 0, outcomes
        assert {url: (t.name, t.service) for url, t in targets.items()} == {
            url: (f"{name}-main", name) for name, url in urls.items()
        }
        for name, sim in sims.items():
            assert check_against_truth(engine, sim.url, sim) >= FINISHED_EACH, name
            check_labels(engine, name, sim.url, {job.api_id: job for job in sim.truth()})
    finally:
        engine.dispose()
    check_reports(db_url)


def check_labels(engine: Any, service: str, url: str, truth: dict[str, Any]) -> None:
    """Each recorded job's type and account are the truth's wherever the service's answer
    carries them, and absent where it does not (Runway's `task` is its only type)."""
    carries = CARRIES[service]
    with engine.connect() as conn:
        target_id = conn.scalar(select(Target.id).where(Target.url == url))
        jobs = conn.execute(
            select(Job.api_id, Job.type, Job.account).where(Job.target_id == target_id)
        ).all()
    assert jobs
    for job in jobs:
        true = truth[job.api_id]
        expected_type = true.type if "type" in carries else "task" if service == "runway" else None
        assert (job.type, job.account) == (
            expected_type,
            true.account if "account" in carries else None,
        ), (service, job.api_id)


def check_reports(db_url: str) -> None:
    """The reports tell the services apart: stats by service, jobs of one service."""
    runner = CliRunner()
    result = runner.invoke(
        cli, ["--db", db_url, "stats", "--by", "service", "--since", "1d", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    groups = {group["service"]: group for group in json.loads(result.output)["groups"]}
    assert set(groups) == set(SERVICES)
    assert all(group["finished"] >= FINISHED_EACH for group in groups.values())
    result = runner.invoke(
        cli, ["--db", db_url, "jobs", "--service", "kling", "--finished", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert len(rows) >= FINISHED_EACH
    assert {(row["service"], row["target_name"]) for row in rows} == {("kling", "kling-main")}
