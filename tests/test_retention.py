"""`recorder prune`: old polls go; no job loses its bounds, and no report changes."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import Engine, func, select

from recorder import db
from recorder.cli import cli
from recorder.clock import to_datetime
from recorder.models import Job, Observation, Poll, Transition
from recorder.output import iso
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.store import Store
from tests.feeding import ok
from tests.histories import T0, record_history

URL_QUIET = "http://127.0.0.1:9/quiet/"


def run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def poll_count(url: str) -> int:
    engine = db.create(url)
    with engine.connect() as conn:
        count = conn.scalar(select(func.count()).select_from(Poll)) or 0
    engine.dispose()
    return count


def at(offset: float) -> str:
    return iso(to_datetime(T0 + offset))


def reports(url: str) -> dict[str, object]:
    window = ["--since", at(-1800), "--until", at(6 * 3600)]
    return {
        "jobs": json.loads(run(url, "jobs", "--format", "json")),
        "stats": json.loads(
            run(url, "stats", *window, "--by", "type", "--by", "hour", "--format", "json")
        ),
        "gaps": json.loads(run(url, "gaps", *window, "--format", "json")),
    }


def record_quiet(engine: Engine) -> None:
    """Half an hour of a quiet target: a job or two, and runs of polls that change nothing."""
    clock = ManualClock(T0 + 900)
    kinds = (JobKind("video", 2.0, 120.0),)
    sim = Simulator(SimConfig(seed=3, kinds=kinds, initial_jobs=1), clock=clock)
    results = []
    for _ in range(60):
        results.append(ok(sim, clock))
        clock.advance(30)
    pipeline = Pipeline(Store(engine), URL_QUIET, lambda: results.pop(0), gap_s=90.0)
    while results:
        pipeline.poll_once()


def test_prune_keeps_every_bound_and_every_figure(db_url: str, tmp_path: Path) -> None:
    engine = db.open_database(db_url)
    record_history(engine)
    record_quiet(engine)
    engine.dispose()
    before_reports, before_polls = reports(db_url), poll_count(db_url)
    expected = deletable(db_url, T0 + 4 * 3600)

    output = run(db_url, "prune", "--polls-older-than", at(4 * 3600))

    after_polls = poll_count(db_url)
    assert output.startswith(f"deleted {len(expected)} poll(s) sent before {at(4 * 3600)}")
    assert before_polls - after_polls == len(expected) > 5
    assert reports(db_url) == before_reports  # no job lost its bounds, no figure moved


def deletable(url: str, cutoff: float) -> set[int]:
    """By hand: old successful polls that nothing refers to, and that neither end nor open a gap."""
    engine = db.create(url)
    with engine.connect() as conn:
        polls = conn.execute(select(Poll.__table__).order_by(Poll.id)).all()
        used = set(conn.scalars(select(Transition.poll_id)))
        used |= set(conn.scalars(select(Observation.poll_id)))
        conn_first_polls = set(conn.scalars(select(Job.first_poll_id)))
        used |= conn_first_polls
        used |= {i for i in conn.scalars(select(Job.last_poll_id)) if i is not None}
    engine.dispose()
    ok = [p for p in polls if p.outcome == "ok"]
    for target in {p.target_id for p in ok}:
        for prev, poll in itertools.pairwise(p for p in ok if p.target_id == target):
            if poll.after_gap:
                used |= {prev.id, poll.id}
            if poll.id in conn_first_polls:  # the missed-jobs estimate reads the gap before it
                used.add(prev.id)
    latest: dict[int, int] = {}
    for poll in ok:
        latest[poll.target_id] = poll.id
    used |= set(latest.values())
    old = {p.id for p in ok if p.sent_at.timestamp() < cutoff}
    return old - used


def test_prune_takes_a_relative_age(db_url: str) -> None:
    engine = db.open_database(db_url)
    record_history(engine)
    engine.dispose()
    expected = deletable(db_url, datetime.now(UTC).timestamp() - 30 * 86400)
    output = run(db_url, "prune", "--polls-older-than", "30d")
    assert output.startswith(f"deleted {len(expected)} poll(s)")


def test_prune_refuses_a_bad_age(db_url: str) -> None:
    result = CliRunner().invoke(cli, ["--db", db_url, "prune", "--polls-older-than", "soon"])
    assert result.exit_code == 2 and "cannot read 'soon' as a time" in result.output
