"""`recorder jobs` filters and orders, and `recorder gaps`, against the stored rows; `jobs`
lists what it listed before its UNION ALL, from index ranges."""

from __future__ import annotations

import itertools
import json
import re
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import ColumnElement, func, or_, select

from recorder import db, reports
from recorder.cli import cli
from recorder.clock import to_datetime
from recorder.models import Job, JobOutcome, JobStatus, Poll, Target, latest_ok_per_target
from recorder.output import iso
from tests.histories import T0, URL_A, URL_B
from tests.plans import plans


def listed(url: str, *args: str) -> list[dict]:
    result = CliRunner().invoke(
        cli, ["--db", url, "jobs", "--format", "json", *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def parse(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def at(offset: float) -> str:
    return iso(to_datetime(T0 + offset))


def test_json_without_limit_lists_every_job(history: tuple) -> None:
    url, jobs, _ = history
    assert len(listed(url)) == len(jobs) > 100


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        (["--running"], lambda j: j.status == "running"),
        (["--finished"], lambda j: j.status == "finished"),
        (["--type", "video"], lambda j: j.type == "video"),
        (["--type", "video", "--type", "image"], lambda j: True),
        (["--account", "alice@example.com"], lambda j: j.account == "alice@example.com"),
        (["--finished", "--type", "image"], lambda j: j.status == "finished" and j.type == "image"),
    ],
)
def test_filters(history: tuple, args: list[str], keep: object) -> None:
    url, jobs, _ = history
    expected = {j.api_id for j in jobs if keep(j)}  # type: ignore[operator]
    assert {j["id"] for j in listed(url, *args)} == expected
    assert expected


def test_each_job_names_its_target_and_service(history: tuple) -> None:
    """`target` is the URL polled; `target_name` and `service` label it (both of the history's
    targets have a URL that names no service: generic, generic-2 in the order first polled)."""
    url, _, _ = history
    listing = listed(url)
    assert {(j["target"], j["target_name"], j["service"]) for j in listing} == {
        (URL_A, "generic", "generic"),
        (URL_B, "generic-2", "generic"),
    }
    assert list(listing[0])[-4:] == ["target", "service", "target_name", "outcome"]


ANOTHER_SPELLING_OF_B = URL_B.rstrip("/").replace("127.0.0.1", "LOCALHOST")


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        (["--target", "generic-2"], lambda j: j.target == "generic-2"),
        (["--target", URL_B], lambda j: j.target == "generic-2"),
        (["--target", ANOTHER_SPELLING_OF_B], lambda j: j.target == "generic-2"),
        (
            ["--target", "generic", "--target", URL_B, "--finished"],
            lambda j: j.status == "finished",
        ),
        (["--service", "generic", "--target", "generic"], lambda j: j.target == "generic"),
        (["--service", "generic", "--type", "video"], lambda j: j.type == "video"),
    ],
)
def test_target_and_service_filters(history: tuple, args: list[str], keep: object) -> None:
    url, jobs, _ = history
    expected = {j.api_id for j in jobs if keep(j)}  # type: ignore[operator]
    assert {j["id"] for j in listed(url, *args)} == expected
    assert expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "pixverse"], "no target named 'pixverse', nor polled at that URL"),
        (["--target", "http://127.0.0.1:9/c/"], "no target named 'http://127.0.0.1:9/c/'"),
        (["--service", "kling"], "no target of service 'kling' in this database"),
        (["--service", "generic", "--target", "nowhere"], "no target named 'nowhere'"),
    ],
)
def test_an_unknown_target_or_service_is_one_clear_line(
    history: tuple, args: list[str], message: str
) -> None:
    url, _, _ = history
    for fmt in ("json", "table"):
        result = CliRunner().invoke(cli, ["--db", url, "jobs", *args, "--format", fmt])
        assert result.exit_code == 1
        assert result.output.startswith(f"Error: {message}")
        assert result.output.count("\n") == 1  # nothing streamed before it


def test_the_table_shows_the_target_name(history: tuple) -> None:
    url, _, _ = history
    result = CliRunner().invoke(
        cli, ["--db", url, "jobs", "--format", "table", "--target", URL_B, "--limit", "3"]
    )
    header, _, *rows = result.output.splitlines()
    assert header.split()[-2:] == ["target", "outcome"]
    at = header.index("target")
    assert [row[at:].split()[0] for row in rows] == ["generic-2"] * 3


def test_since_until_lists_the_jobs_overlapping_the_window(history: tuple) -> None:
    url, jobs, _ = history
    since, until = T0 + 3600, T0 + 3900
    expected = {
        j.api_id
        for j in jobs
        if j.start_at.timestamp() < until
        and (j.status == "running" or j.end_at.timestamp() >= since)
    }
    got = {j["id"] for j in listed(url, "--since", at(3600), "--until", at(3900))}
    assert got == expected
    assert 0 < len(expected) < len(jobs)


@pytest.mark.parametrize("order", ["started", "-started", "ended", "-duration", "id"])
def test_order_and_limit(history: tuple, order: str) -> None:
    url, _, _ = history
    everything = listed(url, "--finished", "--order", order)
    key = {"started": "started_at", "ended": "ended_at", "duration": "duration_s", "id": "id"}
    values = [j[key[order.lstrip("-")]] for j in everything]
    assert values == sorted(values, reverse=order.startswith("-"))
    assert listed(url, "--finished", "--order", order, "--limit", "7") == everything[:7]


def test_a_bad_order_is_one_clear_line(history: tuple) -> None:
    url, _, _ = history
    result = CliRunner().invoke(cli, ["--db", url, "jobs", "--order", "colour"])
    assert result.exit_code == 1
    assert "cannot order by 'colour'" in result.output


def test_gaps_lists_every_gap_with_its_failed_polls(history: tuple) -> None:
    url, _, polls = history
    result = CliRunner().invoke(
        cli,
        ["--db", url, "gaps", "--since", at(-3600), "--until", at(7 * 3600), "--format", "json"],
    )
    gaps = json.loads(result.output)
    target_a = polls[0].target_id
    ok = [p for p in polls if p.target_id == target_a and p.outcome == "ok"]
    expected = [(prev, poll) for prev, poll in itertools.pairwise(ok) if poll.after_gap]
    closed = [g for g in gaps if not g["ongoing"]]
    assert len(closed) == len(expected) >= 3
    for gap, (prev, poll) in zip(closed, expected, strict=True):
        # The view shows milliseconds; SQLite rounds them through a Julian day, so allow one.
        assert abs(parse(gap["started_at"]) - prev.sent_at.timestamp()) <= 0.0011
        assert abs(parse(gap["ended_at"]) - poll.sent_at.timestamp()) <= 0.0011
        assert gap["duration_s"] == pytest.approx(
            (poll.sent_at - prev.sent_at).total_seconds(), abs=1e-3
        )
        failed = [p for p in polls if p.target_id == target_a and prev.id < p.id < poll.id]
        assert gap["failed_polls"] == len(failed)
    assert any(g["duration_s"] > 1500 for g in closed)  # the restart
    (ongoing,) = [g for g in gaps if g["ongoing"]]
    assert ongoing["failed_polls"] == 1


def test_gaps_outside_the_window_are_left_out(history: tuple) -> None:
    url, _, _ = history
    result = CliRunner().invoke(
        cli, ["--db", url, "gaps", "--since", at(-7200), "--until", at(-3600), "--format", "json"]
    )
    assert json.loads(result.output) == []


def test_gaps_of_one_target_by_name_or_url(history: tuple) -> None:
    url, _, _ = history

    def listed_gaps(*args: str) -> Any:
        window = ["--since", at(-3600), "--until", at(7 * 3600), "--format", "json"]
        result = CliRunner().invoke(cli, ["--db", url, "gaps", *window, *args])
        return result.exit_code, result.output

    code, everything = listed_gaps()
    of_a = [g for g in json.loads(everything) if g["target"] == URL_A]
    assert code == 0 and of_a
    for ref in ("generic", URL_A, URL_A.replace("127.0.0.1", "localhost").rstrip("/")):
        code, output = listed_gaps("--target", ref)
        assert (code, json.loads(output)) == (0, of_a)
    code, output = listed_gaps("--target", "kling")
    assert code == 1 and output.startswith("Error: no target named 'kling'")
    assert output.count("\n") == 1


def _statement_before(query: reports.JobQuery) -> Any:
    """`recorder jobs`' SELECT as it was before the UNION ALL: one OR for `since`."""
    first, last, latest = Poll.alias(), Poll.alias(), Poll.alias()
    latest_ok = latest_ok_per_target()
    stmt = (
        select(
            Job.api_id.label("id"),
            Job.type,
            Job.account,
            Job.user_id,
            Job.status,
            Job.start_at.label("started_at"),
            Job.start_min,
            Job.start_max,
            Job.start_source,
            Job.end_at.label("ended_at"),
            Job.end_min,
            Job.end_max,
            Job.duration_s,
            Job.duration_min_s,
            Job.duration_max_s,
            Job.closed_across_gap,
            first.received_at.label("first_seen_at"),
            func.coalesce(last.received_at, latest.received_at).label("last_seen_at"),
            Target.url.label("target"),
            Target.service,
            Target.name.label("target_name"),
            JobOutcome.outcome,
        )
        .join(Target, Target.id == Job.target_id)
        .join(first, first.id == Job.first_poll_id)
        .outerjoin(last, last.id == Job.last_poll_id)
        .outerjoin(JobOutcome, JobOutcome.job_id == Job.id)
        .outerjoin(latest_ok, latest_ok.c.target_id == Job.target_id)
        .outerjoin(latest, latest.id == latest_ok.c.poll_id)
    )
    if query.status is not None:
        stmt = stmt.where(Job.status == query.status)
    if query.types:
        stmt = stmt.where(Job.type.in_(query.types))
    if query.accounts:
        stmt = stmt.where(Job.account.in_(query.accounts))
    if query.until is not None:
        stmt = stmt.where(Job.start_at < query.until)
    if query.since is not None:
        stmt = stmt.where(or_(Job.status == JobStatus.RUNNING, Job.end_at >= query.since))
    columns: dict[str, ColumnElement[Any]] = {
        "started": Job.start_at,
        "ended": Job.end_at,
        "duration": Job.duration_s,
        "id": Job.api_id,
    }
    column = columns[query.order.removeprefix("-")]
    if query.order.startswith("-"):
        stmt = stmt.order_by(column.desc(), Job.id.desc())
    else:
        stmt = stmt.order_by(column, Job.id)
    return stmt if query.limit is None else stmt.limit(query.limit)


def test_jobs_lists_the_same_rows_in_the_same_order_as_before_the_union(history: tuple) -> None:
    url, jobs, _ = history
    assert {j.status for j in jobs} == {"running", "finished"}
    engine = db.create(url)
    moments = [None, T0 - 3600, T0 + 3600, T0 + 3 * 3600, T0 + 6 * 3600]
    orders = [sign + name for name in reports.ORDERS for sign in ("", "-")]
    filters: list[dict[str, Any]] = [
        {},
        {"types": ("video",)},
        {"accounts": ("alice@example.com",)},
        {"types": ("image", "video"), "accounts": ("alice@example.com", "render-farm@example.org")},
    ]
    queries = [
        reports.JobQuery(
            status=status,
            since=None if since is None else to_datetime(since),
            until=None if until is None else to_datetime(until),
            limit=limit,
            order=order,
            **filters[k % len(filters)],
        )
        for k, (since, until, status, order, limit) in enumerate(
            itertools.product(
                moments,
                [None, T0 + 3900, T0 + 4 * 3600],
                [None, "running", "finished"],
                orders,
                [None, 7],
            )
        )
    ]
    found_running = found_finished = 0
    try:
        for query in queries:
            with engine.connect() as conn:
                before = [dict(row._mapping) for row in conn.execute(_statement_before(query))]
            for row in before:
                for key in ("duration_s", "duration_min_s", "duration_max_s"):
                    if row[key] is not None:
                        row[key] = round(row[key], 3)
            assert list(reports.jobs(engine, query)) == before, query
            found_running += sum(row["status"] == "running" for row in before)
            found_finished += sum(row["status"] == "finished" for row in before)
    finally:
        engine.dispose()
    assert found_running and found_finished


RUNNING_BY_INDEX = "SCAN jobs USING INDEX ix_jobs_running"  # the running jobs, and no other


def sqlite_plan(tmp_path: Path, stmt: Any) -> list[str]:
    """SQLite's plan of a reports statement, on an empty database of the current schema."""
    engine = db.open_database(f"sqlite:///{tmp_path / 'plan.db'}")
    compiled = stmt.compile(engine, compile_kwargs={"literal_binds": True})
    with engine.connect() as conn:
        plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}")]
    engine.dispose()
    return plan


@pytest.mark.parametrize(
    ("until", "status", "by_start", "finished_by"),
    [
        (None, None, False, "ix_jobs_end_at (end_at>?)"),
        (3600.0, None, False, "ix_jobs_end_at (end_at>?)"),
        (3600.0, None, True, "ix_jobs_start_at (start_at<?)"),
        (None, "finished", False, "ix_jobs_end_at (end_at>?)"),
        (3600.0, "finished", True, "ix_jobs_start_at (start_at<?)"),
        (None, "running", False, None),
        (3600.0, "running", True, None),
    ],
)
def test_jobs_since_reads_index_ranges_on_sqlite(
    tmp_path: Path, until: float | None, status: str | None, by_start: bool, finished_by: str
) -> None:
    """Running jobs by their partial index, finished ones by one time range: no scan of every
    job (an OR made one), and no job read by its status (which would read every finished one,
    and without the status index every job along start_at)."""
    query = reports.JobQuery(
        status=status,
        since=to_datetime(T0),
        until=None if until is None else to_datetime(T0 + until),
        types=("video",),
    )
    plan = sqlite_plan(tmp_path, reports._statement(query, sqlite=True, by_start=by_start))
    steps = [step for step in plan if re.match(r"(SCAN|SEARCH) jobs\b", step)]
    running = [] if status == "finished" else [RUNNING_BY_INDEX]
    finished = [] if status == "running" else [f"SEARCH jobs USING INDEX {finished_by}"]
    assert steps == running + finished, plan


@pytest.mark.parametrize(
    "query",
    [
        reports.JobQuery(status="running"),
        reports.JobQuery(status="running", types=("video",), order="-duration", limit=5),
        reports.JobQuery(status="running", until=to_datetime(T0)),
    ],
    ids=["running", "running by type and duration", "running until"],
)
def test_jobs_running_reads_the_partial_index_on_sqlite(
    tmp_path: Path, query: reports.JobQuery
) -> None:
    """`jobs --running` reads the running jobs only, whatever else it filters or orders by
    (without the hint, SQLite would walk every job along start_at for the order)."""
    plan = sqlite_plan(tmp_path, reports._statement(query, sqlite=True))
    assert [step for step in plan if re.match(r"(SCAN|SEARCH) jobs\b", step)] == [
        RUNNING_BY_INDEX
    ], plan


def test_the_index_hint_is_sqlites_alone() -> None:
    """INDEXED BY is SQLite's syntax: PostgreSQL gets the same statement without it."""
    from sqlalchemy.dialects import postgresql, sqlite

    stmt = reports._statement(reports.JobQuery(status="running"), sqlite=False)
    hinted = str(stmt.compile(dialect=sqlite.dialect()))
    assert "FROM jobs INDEXED BY ix_jobs_running JOIN" in hinted
    assert "INDEXED BY" not in str(stmt.compile(dialect=postgresql.dialect()))


@pytest.mark.parametrize("history", ["sqlite"], indirect=True)
def test_status_counts_the_running_jobs_from_their_index(history: tuple) -> None:
    url, jobs, _ = history
    engine = db.create(url)
    try:
        found = plans(engine, lambda: reports.status(engine, to_datetime(T0), 60.0))
        rows = reports.status(engine, to_datetime(T0), 60.0)
    finally:
        engine.dispose()
    counts = [plan for plan in found if plan.startswith("SEARCH")]
    assert len(counts) == len(rows) > 1  # a count per target
    assert set(counts) == {"SEARCH jobs USING INDEX ix_jobs_running (target_id=?)"}
    # And, for the overdue jobs, once: the running jobs from their index, the p95s of the
    # jobs that ended in the last 7 days from the index on end_at.
    overdue = [plan for plan in found if not plan.startswith("SEARCH")]
    assert overdue[0] == "SCAN jobs USING INDEX ix_jobs_running"
    assert "SEARCH jobs USING INDEX ix_jobs_end_at (end_at>?)" in overdue[1]
    assert len(overdue) == 2
    assert sum(row["running_jobs"] for row in rows) == sum(j.status == "running" for j in jobs)


def test_an_old_window_is_read_by_start_and_a_recent_one_by_end(history: tuple) -> None:
    url, _, _ = history
    engine = db.create(url)
    try:
        with engine.connect() as conn:
            guess = partial(reports._fewer_started_than_ended, conn)
            window = partial(reports.JobQuery, types=("video",))
            assert guess(window(since=to_datetime(T0), until=to_datetime(T0 + 600)))
            recent = window(since=to_datetime(T0 + 4 * 3600), until=to_datetime(T0 + 5 * 3600))
            assert not guess(recent)
            assert not guess(window(since=to_datetime(T0)))  # no `until`: by end
    finally:
        engine.dispose()
