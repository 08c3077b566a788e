"""`recorder status` on a recorded history, on SQLite and PostgreSQL: each target's name and
service, the age of its latest successful poll, its running and overdue jobs, its last error and
the server clock's offset, each against the database.

The history is scripted (tests.test_metrics.listing: a server clock 7 s ahead). The one figure
that depends on the wall clock, the age, is checked against the instants before and after the
command ran, never against a duration.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from recorder import reports
from recorder.cli import cli
from recorder.models import Poll, latest_ok_id
from recorder.pipeline import Pipeline
from recorder.snapshot import Failure, Outcome, PollResult
from recorder.store import Store
from tests.test_metrics import SKEW_SCRIPTED_S, T0, URL, listing


def record(engine: Engine, *polls: PollResult) -> None:
    pipeline = Pipeline(Store(engine), URL, lambda: polls[0], gap_s=30.0, name="main")
    for result in polls:
        pipeline.record(result)


def status(db_url: str, fmt: str) -> tuple[int, str, float, float]:
    """The command's exit code and output, and the Unix times before and after it ran."""
    before = time.time()
    result = CliRunner().invoke(
        cli, ["--db", db_url, "status", "--format", fmt, "--max-age", "1d"], catch_exceptions=False
    )
    return result.exit_code, result.stdout, before, time.time()


def latest_ok(engine: Engine) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(Poll.sent_at, Poll.received_at, Poll.server_time).where(
                Poll.id == latest_ok_id(1)
            )
        ).one()


def test_status_shows_each_figure_as_the_database_holds_it(engine: Engine, db_url: str) -> None:
    failed = PollResult(T0 + 2, T0 + 2.1, 503, Failure(Outcome.SERVER, "HTTP 503"))
    record(engine, listing(T0, "a", "b"), listing(T0 + 1, "a"), failed)
    code, out, before, after = status(db_url, "json")
    assert code == 1  # the latest poll failed
    (row,) = json.loads(out)
    ok = latest_ok(engine)
    assert row["target"] == URL
    assert (row["name"], row["service"]) == ("main", "pixverse")
    assert row["last_ok_at"] == "2025-06-15T15:06:41.000Z"  # T0 + 1
    sent = ok.sent_at.timestamp()
    assert before - sent - 0.001 <= row["last_ok_age_s"] <= after - sent + 0.001
    assert (row["last_outcome"], row["last_error"], row["failing_polls"]) == (
        "server",
        "HTTP 503",
        1,
    )
    assert (row["running_jobs"], row["overdue"]) == (1, 0)
    mid = (ok.sent_at.timestamp() + ok.received_at.timestamp()) / 2
    assert row["clock_offset_s"] == round(ok.server_time - mid, 3)
    assert row["clock_offset_s"] == pytest.approx(SKEW_SCRIPTED_S, abs=1.0)

    code, table, _, _ = status(db_url, "table")
    header, _, line = table.splitlines()
    assert header.split() == [
        "target",
        "service",
        "healthy",
        "last_ok",
        "failing_polls",
        "running_jobs",
        "overdue",
        "clock_offset",
        "quarantined",
        "recorded_by",
        "last_error",
    ]
    assert line.split()[:3] == ["main", "pixverse", "false"]
    assert " ago " in line
    assert f"{row['clock_offset_s']:+.1f}s" in line
    assert line.endswith("HTTP 503")


def test_a_success_clears_the_last_error(engine: Engine, db_url: str) -> None:
    failed = PollResult(T0 + 1, T0 + 1.1, 503, Failure(Outcome.SERVER, "HTTP 503"))
    record(engine, listing(T0, "a"), failed, listing(T0 + 2, "a", "b"))
    _, out, _, _ = status(db_url, "json")
    (row,) = json.loads(out)
    assert row["last_outcome"] == "ok"
    assert (row["last_error"], row["failing_polls"], row["running_jobs"]) == (None, 0, 2)


def test_a_target_never_polled_successfully_has_no_age_and_no_offset(
    engine: Engine, db_url: str
) -> None:
    record(engine, PollResult(T0, T0 + 0.1, 401, Failure(Outcome.AUTH, "HTTP 401")))
    code, out, _, _ = status(db_url, "json")
    (row,) = json.loads(out)
    assert code == 1
    assert (row["last_ok_age_s"], row["clock_offset_s"], row["last_error"]) == (
        None,
        None,
        "HTTP 401",
    )
    _, table, _, _ = status(db_url, "table")
    assert " never " in table


@pytest.mark.parametrize(
    ("offset", "shown"), [(-0.049, "+0.0s"), (0.0, "+0.0s"), (-0.05, "-0.1s"), (2.46, "+2.5s")]
)
def test_the_table_shows_the_offset_signed_never_as_minus_zero(offset: float, shown: str) -> None:
    row = {
        "name": "t",
        "service": "pixverse",
        "healthy": True,
        "last_ok_age_s": 1.0,
        "failing_polls": 0,
        "running_jobs": 0,
        "overdue": 0,
        "clock_offset_s": offset,
        "quarantined": 0,
        "recorded_by": None,
        "last_error": None,
    }
    assert reports.status_table_row(row)["clock_offset"] == shown
