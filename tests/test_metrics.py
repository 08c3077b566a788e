"""`recorder run --metrics-port`: every exported figure against the database, and counters that
never go backwards across a restart on the same database.

Nothing here asserts on time: each check waits until a scrape and the database agree (the
daemon writes a poll, then counts it: a scrape in between sees one poll fewer, and is retried).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, select

from recorder.models import Job, Poll, Target, latest_ok_id
from recorder.simulator import Faults, JobKind, SimConfig, Simulator
from tests.waiting import Unmet, reader, running, stop, tail, wait_for

TOKEN = "tok-metrics-5d1e"
SKEW_S = 3.0
SERVING = re.compile(r"serving metrics at http://127\.0\.0\.1:(\d+)/metrics")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimConfig(
        seed=41,
        token=TOKEN,
        kinds=(JobKind("video", 40.0, 3.0), JobKind("image", 60.0, 1.5)),
        faults=Faults(garbage=0.15, skew_s=SKEW_S),
        initial_jobs=2,
    )
    with Simulator(config) as simulator:
        yield simulator


def start(db_url: str, url: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A daemon recording `url`, serving metrics on a free port; the process and the port."""
    command = [sys.executable, "-m", "recorder", "--db", db_url, "run", "--url", url]
    command += ["--interval", "0.25", "--metrics-port", "0"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": TOKEN}, stdout=out, stderr=subprocess.STDOUT
        )

    def port() -> int | None:
        running(process, log)
        found = SERVING.search(tail(log, 100_000))
        return int(found.group(1)) if found else None

    return process, wait_for(port, message="the metrics server")


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of /metrics, by sample name, then by labels."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def exported(port: int) -> dict[str, Any]:
    """The scrape's figures, in the shape of `stored`."""
    samples = scrape(port)

    def by(name: str, key: str, nonzero: bool = False) -> dict[str, float]:
        found = {}
        for labels, value in samples.get(name, {}).items():
            label = dict(labels)
            assert label["target"] == "pixverse"  # the target's name, as in targets.name
            if not nonzero or value:
                found[label[key]] = value
        return found

    buckets = {
        dict(labels)["type"]: value
        for labels, value in samples.get("recorder_job_duration_seconds_bucket", {}).items()
        if dict(labels)["le"] == "5.0"
    }
    last = samples.get("recorder_last_success_timestamp_seconds", {})
    offset = samples.get("recorder_server_clock_offset_seconds", {})
    return {
        "running": by("recorder_jobs_running", "type", nonzero=True),
        "finished": by("recorder_jobs_finished_total", "type"),
        "count": by("recorder_job_duration_seconds_count", "type"),
        "sum": {k: round(v, 6) for k, v in by("recorder_job_duration_seconds_sum", "type").items()},
        "at_most_5s": buckets,
        "polls": by("recorder_polls_total", "outcome"),
        "last_success": round(next(iter(last.values())), 6) if last else None,
        "offset": next(iter(offset.values()), None),
        "overdue": by("recorder_jobs_overdue", "type"),
    }


def stored(live: Engine) -> dict[str, Any]:
    """The same figures, from the database."""
    with live.connect() as conn:
        target_id = conn.scalar(select(Target.id).where(Target.name == "pixverse"))
        jobs = select(Job.type, func.count()).where(Job.target_id == target_id)
        timed = jobs.where(Job.status == "finished", Job.duration_s.is_not(None))
        finished = jobs.where(Job.status == "finished")
        polls = select(Poll.outcome, func.count()).where(Poll.target_id == target_id)
        last_ok = conn.execute(
            select(Poll.sent_at, Poll.received_at, Poll.server_time).where(
                Poll.id == latest_ok_id(target_id)
            )
        ).first()
        sums = select(Job.type, func.sum(Job.duration_s)).where(
            Job.target_id == target_id, Job.status == "finished", Job.duration_s.is_not(None)
        )

        def grouped(query: Any) -> dict[str, float]:
            return {(t or ""): float(n) for t, n in conn.execute(query.group_by(Job.type))}

        figures = {
            "running": grouped(jobs.where(Job.status == "running")),
            "finished": grouped(finished),
            "count": grouped(timed),
            "sum": {k: round(v, 6) for k, v in grouped(sums).items()},
            "at_most_5s": grouped(timed.where(Job.duration_s <= 5.0)),
            "polls": {o: float(n) for o, n in conn.execute(polls.group_by(Poll.outcome))},
            "last_success": None if last_ok is None else round(last_ok.sent_at.timestamp(), 6),
            "last_ok": last_ok,
            "max_poll": conn.scalar(select(func.max(Poll.id))),
        }
    return figures


def agreed(live: Engine, port: int) -> dict[str, Any]:
    """The scrape's figures once they match the database's (which must not move meanwhile)."""

    def agreement() -> dict[str, Any] | Unmet:
        before = stored(live)
        scraped = exported(port)
        after = stored(live)
        if before != after:
            return Unmet("the database moved during the scrape")
        differ = {
            key: (scraped[key], before[key])
            for key in ("running", "finished", "count", "sum", "at_most_5s", "polls")
            if scraped[key] != before[key]
        }
        if scraped["last_success"] != before["last_success"]:
            differ["last_success"] = (scraped["last_success"], before["last_success"])
        last_ok = before["last_ok"]
        if differ or last_ok is None or scraped["offset"] is None:
            return Unmet(f"scrape vs database: {differ}")
        mid = (last_ok.sent_at.timestamp() + last_ok.received_at.timestamp()) / 2
        # The estimate's own error is within a second (`started` and `elapsed` are truncated).
        assert abs(scraped["offset"] - (last_ok.server_time - mid)) <= 1.0
        assert abs(scraped["offset"] - SKEW_S) <= 1.0
        assert set(scraped["overdue"]) <= set(scraped["running"]) | set(before["finished"])
        assert all(0 <= n <= scraped["running"].get(t, 0) for t, n in scraped["overdue"].items())
        return scraped

    return wait_for(agreement, message="a scrape that matches the database")


def busy_enough(live: Engine) -> bool | Unmet:
    figures = stored(live)
    finished = sum(figures["finished"].values())
    outcomes = set(figures["polls"])
    if finished >= 5 and {"ok", "bad_payload"} <= outcomes:
        return True
    return Unmet(f"{finished} finished jobs, outcomes {sorted(outcomes)}")


def test_every_figure_matches_the_database_and_survives_a_restart(
    sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    process, port = start(db_url, sim.url, log)
    try:
        with reader(db_url) as live:
            wait_for(lambda: running(process, log) or busy_enough(live), message="jobs to end")
            first = agreed(live, port)
    finally:
        assert stop(process, log) == 0, tail(log)
    assert set(first["polls"]) >= {"ok", "bad_payload"}
    assert first["finished"] and first["count"] == first["finished"]

    log2 = tmp_path / "daemon2.log"
    process, port = start(db_url, sim.url, log2)
    try:
        with reader(db_url) as live:

            def moved_on() -> bool | Unmet:
                running(process, log2)
                polls = sum(stored(live)["polls"].values())
                before = sum(first["polls"].values())
                return polls > before + 4 or Unmet(f"{polls} polls, {before} before the restart")

            wait_for(moved_on, message="polls after the restart")
            second = agreed(live, port)
    finally:
        assert stop(process, log2) == 0, tail(log2)
    for key in ("finished", "count", "polls"):
        for label, value in first[key].items():
            assert second[key].get(label, 0) >= value, (key, label)
    assert sum(second["polls"].values()) > sum(first["polls"].values())
    assert "Traceback" not in log.read_text() + log2.read_text()
    assert TOKEN not in log.read_text() + log2.read_text()


def test_metrics_host_alone_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from recorder.cli import cli

    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    result = CliRunner().invoke(cli, ["--db", db_url, "run", "--metrics-host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--metrics-host needs --metrics-port" in result.output
    assert not (tmp_path / "r.db").exists()
