"""`recorder run --metrics-port`: every exported figure against the database, and counters that
never go backwards across a restart on the same database, also when a job reappears after its
end and the daemon restarts while it runs again.

Nothing here asserts on time: each check waits until a scrape and the database agree (the
daemon writes a poll, then counts it: a scrape in between sees one poll fewer, and is retried).
"""

from __future__ import annotations

import itertools
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
from sqlalchemy import Connection, Engine, func, select

from recorder.daemon import Daemon
from recorder.exporter import Exporter
from recorder.metrics import TargetMetrics
from recorder.models import Job, Poll, Target, Transition, latest_ok_id
from recorder.pipeline import Pipeline
from recorder.simulator import Faults, JobKind, SimConfig, Simulator
from recorder.snapshot import Item, PollResult, Snapshot
from recorder.store import Store
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
        if dict(labels)["le"] == "5.0" and value  # the database's count has no zeros
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


def closed_once(conn: Connection, target_id: int) -> dict[str, float]:
    """The jobs closed at least once (with a vanished transition), by type."""
    query = (
        select(Job.type, func.count(func.distinct(Transition.job_id)))
        .join(Job, Job.id == Transition.job_id)
        .where(Job.target_id == target_id, Transition.kind == "vanished")
        .group_by(Job.type)
    )
    return {(t or ""): float(n) for t, n in conn.execute(query)}


def stored(live: Engine) -> dict[str, Any]:
    """The same figures, from the database."""
    with live.connect() as conn:
        target_id = conn.scalar(select(Target.id).where(Target.name == "pixverse"))
        jobs = select(Job.type, func.count()).where(Job.target_id == target_id)
        timed = jobs.where(Job.status == "finished", Job.duration_s.is_not(None))
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
            "finished": closed_once(conn, target_id),
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
        # The skew the latest successful poll implies, as stored; within a second of the
        # simulator's (`started` and `elapsed` are truncated).
        assert scraped["offset"] == pytest.approx(last_ok.server_time - mid, abs=1e-5)
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


# --- a job that reappears after its end, across a restart (in one process, scripted polls) ---

URL = "http://127.0.0.1:9/v2/pixverse/scheduler/"
T0 = 1_750_000_000.0
SKEW_SCRIPTED_S = 7.0
STARTS = {"a": ("video", T0 - 5.0), "b": ("image", T0 - 2.0)}


def listing(t: float, *ids: str) -> PollResult:
    """A successful poll at `t` listing the jobs `ids` (their `started` on a skewed clock)."""
    items = tuple(
        Item(
            api_id,
            type=STARTS[api_id][0],
            started=STARTS[api_id][1] + SKEW_SCRIPTED_S,
            elapsed_s=int(t - STARTS[api_id][1]),
        )
        for api_id in ids
    )
    return PollResult(t, t + 0.1, 200, Snapshot(items))


def scripted_daemon(engine: Engine, script: list[PollResult]) -> Daemon:
    """A daemon, with figures, that polls `script` in turn (one poll per tick)."""
    pipeline = Pipeline(Store(engine), URL, lambda: script.pop(0), gap_s=30.0, name="pixverse")
    return Daemon(pipeline, 1.0, name="pixverse", metrics=TargetMetrics())


HISTOGRAM = ("count", "sum", "at_most_5s")


def scraped_against_database(
    engine: Engine, daemon: Daemon, durations: bool = True
) -> dict[str, Any]:
    """Scrape the daemon's /metrics once, parse it, and check every figure against the
    database (the durations only if `durations`); the scrape's figures."""
    assert daemon.metrics is not None
    exporter = Exporter([daemon.metrics], "127.0.0.1", 0)
    try:
        scraped = exported(exporter.port)
    finally:
        exporter.close()
    figures = stored(engine)
    for key in ("running", "finished", "polls", "last_success", *(HISTOGRAM if durations else ())):
        assert scraped[key] == figures[key], key
    last_ok = figures["last_ok"]
    mid = (last_ok.sent_at.timestamp() + last_ok.received_at.timestamp()) / 2
    assert scraped["offset"] == pytest.approx(last_ok.server_time - mid, abs=1e-5)
    assert scraped["offset"] == pytest.approx(SKEW_SCRIPTED_S, abs=1.0)
    return scraped


def never_less(before: dict[str, float], after: dict[str, float]) -> bool:
    return all(after.get(label, 0) >= value for label, value in before.items())


def test_a_job_that_reappears_is_counted_once_across_a_restart(engine: Engine) -> None:
    first = scripted_daemon(
        engine, [listing(T0, "a", "b"), listing(T0 + 1, "a"), listing(T0 + 2, "a", "b")]
    )
    seen = []
    for durations in (True, True, False):
        assert first.tick() is not None
        seen.append(scraped_against_database(engine, first, durations))
    # b ended, then reappeared: running again, and still counted as closed once.
    assert seen[1]["finished"] == {"image": 1.0}
    assert seen[2]["finished"] == {"image": 1.0}
    assert seen[2]["running"] == {"image": 1.0, "video": 1.0}
    # Its first duration stays observed, though the database withdrew it (its end was wrong).
    assert seen[2]["count"] == {"image": 1.0}
    assert stored(engine)["count"] == {}

    # A restart while b runs again: the count starts from the database's, and does not drop.
    second = scripted_daemon(
        engine, [listing(T0 + 3, "a", "b"), listing(T0 + 4, "a"), listing(T0 + 5)]
    )
    for _ in range(3):
        assert second.tick() is not None
        seen.append(scraped_against_database(engine, second))
    for before, after in itertools.pairwise(seen):
        for key in ("finished", "polls"):
            assert never_less(before[key], after[key]), (key, before[key], after[key])
    # b's second end is not counted again; its duration is now the database's; then a ends.
    assert seen[3]["finished"] == {"image": 1.0}
    assert seen[4]["finished"] == {"image": 1.0}
    assert seen[4]["count"] == {"image": 1.0}
    assert seen[5]["finished"] == {"image": 1.0, "video": 1.0}


def test_metrics_host_alone_is_a_usage_error(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from recorder.cli import cli

    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    result = CliRunner().invoke(cli, ["--db", db_url, "run", "--metrics-host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "--metrics-host needs --metrics-port" in result.output
    assert not (tmp_path / "r.db").exists()
