"""`recorder sql` (read-only, one statement) and the documented queries of docs/sql.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Connection, select, text

from recorder import db
from recorder.cli import cli
from recorder.models import Base
from tests.histories import URL_A, URL_B

DOCS = Path(__file__).resolve().parent.parent / "docs" / "sql.md"
QUERIES = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), flags=re.S)


@pytest.fixture(scope="module")
def recorded(history: tuple[str, list, list]) -> str:
    return history[0]


def sql(url: str, query: str, fmt: str = "json") -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--db", url, "sql", query, "--format", fmt])
    return result.exit_code, result.output


def contents(url: str) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table: an UPDATE changes no count."""
    engine = db.create(url)
    with engine.connect() as conn:
        found = {
            name: [tuple(row) for row in conn.execute(select(table).order_by(*table.primary_key))]
            for name, table in Base.metadata.tables.items()
        }
    engine.dispose()
    return found


def test_the_docs_have_queries() -> None:
    assert len(QUERIES) >= 8


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.splitlines()[0][:40])
def test_every_documented_query_runs(recorded: str, query: str) -> None:
    code, output = sql(recorded, query)
    assert code == 0, output
    rows = json.loads(output)
    assert isinstance(rows, list) and rows, "every worked query finds something in the history"


def test_json_is_an_array_of_row_objects(recorded: str) -> None:
    code, output = sql(
        recorded, "SELECT type, COUNT(*) AS n FROM job_history GROUP BY type ORDER BY type"
    )
    assert code == 0
    rows = json.loads(output)
    assert [set(r) for r in rows] == [{"type", "n"}] * 2
    assert [r["type"] for r in rows] == ["image", "video"]


@pytest.mark.parametrize(("fmt", "lines"), [("jsonl", 2), ("csv", 3), ("table", 4)])
def test_other_formats(recorded: str, fmt: str, lines: int) -> None:
    code, output = sql(recorded, "SELECT type, COUNT(*) AS n FROM job_history GROUP BY type", fmt)
    assert code == 0
    assert len(output.strip().splitlines()) == lines


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM jobs",
        "UPDATE jobs SET duration_s = 0",
        "INSERT INTO targets (url, created_at, name, service) VALUES ('x', 0, 'x', 'generic')",
        "DROP TABLE polls",
        "CREATE TABLE evil (x INTEGER)",
        "DROP VIEW job_history",
        "PRAGMA journal_mode = DELETE",
        "WITH d AS (SELECT 1) DELETE FROM jobs",
        # sqlparse reads one statement in each; PostgreSQL several (tests/test_sql_readonly.py).
        "SELECT 'a\\'; COMMIT; UPDATE jobs SET duration_s = 0 --'",
        "SELECT 1 # 1; SET default_transaction_read_only = off; COMMIT; "
        "UPDATE polls SET error = ''",
        "SELECT 'a\\'; ROLLBACK; BEGIN READ WRITE; UPDATE jobs SET duration_s = 0; COMMIT --'",
        "SELECT 'a\\'; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; "
        "UPDATE jobs SET duration_s = 0 --'",
    ],
)
def test_a_write_is_refused_and_changes_nothing(recorded: str, statement: str) -> None:
    before = contents(recorded)
    code, output = sql(recorded, statement)
    assert code == 1
    assert output.startswith("Error: ")
    assert output.count("\n") == 1
    assert contents(recorded) == before


def test_attaching_another_file_is_refused(recorded: str, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    code, _ = sql(recorded, f"ATTACH DATABASE '{other}' AS other")
    assert code == 1
    assert not other.exists()


@pytest.mark.parametrize("query", ["SELECT 1; DELETE FROM jobs", "", "  -- nothing  "])
def test_exactly_one_statement(recorded: str, query: str) -> None:
    before = contents(recorded)
    code, output = sql(recorded, query)
    assert code == 1
    assert "exactly one SQL statement" in output
    assert contents(recorded) == before


def test_a_bad_query_gets_one_clear_line(recorded: str) -> None:
    code, output = sql(recorded, "SELECT nope FROM job_history")
    assert code == 1
    # SQLite: "no such column: nope"; PostgreSQL: 'column "nope" does not exist'.
    assert re.search(r"no such column: nope|column \"nope\" does not exist", output)
    assert output.count("\n") == 1
    assert "Traceback" not in output


def job_history_0002(sqlite: bool) -> str:
    """The view job_history as migration 0002 defined it (inner joins), verbatim."""

    def iso(column: str) -> str:
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')" if sqlite else column

    def text_time(column: str, unit: str) -> str:
        if sqlite:
            fmt = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H"}[unit]
            return f"strftime('{fmt}', {column}, 'unixepoch')"
        fmt = {"day": "YYYY-MM-DD", "hour": 'YYYY-MM-DD"T"HH24'}[unit]
        return f"to_char({column} AT TIME ZONE 'UTC', '{fmt}')"

    return f"""
        SELECT
            j.api_id AS id,
            j.type AS type,
            j.account AS account,
            j.user_id AS user_id,
            j.status AS status,
            {iso("j.start_at")} AS started_at,
            {iso("j.end_at")} AS ended_at,
            j.duration_s AS duration_s,
            j.duration_min_s AS duration_min_s,
            j.duration_max_s AS duration_max_s,
            j.closed_across_gap AS closed_across_gap,
            {iso("j.start_min")} AS start_min,
            {iso("j.start_max")} AS start_max,
            j.start_source AS start_source,
            {iso("j.end_min")} AS end_min,
            {iso("j.end_max")} AS end_max,
            {iso("fp.received_at")} AS first_seen_at,
            {text_time("j.start_at", "day")} AS started_day,
            {text_time("j.end_at", "day")} AS ended_day,
            {text_time("j.end_at", "hour")} AS ended_hour,
            t.url AS target
        FROM jobs j
        JOIN targets t ON t.id = j.target_id
        JOIN polls fp ON fp.id = j.first_poll_id
    """


def view_columns(conn: Connection, name: str) -> list[tuple[object, ...]]:
    """A view's columns in order: name and declared type (SQLite) or type (PostgreSQL)."""
    if conn.dialect.name == "sqlite":
        schema = "temp" if name.startswith("old_") else "main"
        rows = conn.exec_driver_sql(f"PRAGMA {schema}.table_info({name})")
        return [(row[1], row[2]) for row in rows]
    rows = conn.execute(
        text(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = CAST(:name AS regclass) AND attnum > 0 ORDER BY attnum"
        ),
        {"name": name},
    )
    return [tuple(row) for row in rows]


def test_job_history_is_what_it_was_before_0006(recorded: str) -> None:
    """Migration 0006 rewrote the view's joins: the same columns, types and rows as 0002's
    (and after them, migration 0009's two: the target's service and name)."""
    engine = db.create(recorded)
    try:
        with engine.connect() as conn:
            sqlite = conn.dialect.name == "sqlite"
            conn.exec_driver_sql(f"CREATE TEMP VIEW old_job_history AS {job_history_0002(sqlite)}")
            columns = view_columns(conn, "job_history")
            assert columns[:21] == view_columns(conn, "old_job_history")
            assert [name for name, _ in columns[21:]] == ["service", "target_name"]
            now = conn.execute(text("SELECT * FROM job_history")).all()
            before = conn.execute(text("SELECT * FROM old_job_history")).all()
            conn.rollback()
    finally:
        engine.dispose()
    assert len(now) == len(before) > 100
    assert sorted((row[:21] for row in now), key=repr) == sorted(before, key=repr)
    assert {row[20:] for row in now} == {
        (URL_A, "generic", "generic"),
        (URL_B, "generic", "generic-2"),
    }


AGGREGATE = "SELECT type, count(*), avg(duration_s) FROM job_history GROUP BY type"


def test_a_query_of_job_history_reads_only_jobs_when_it_needs_no_more(recorded: str) -> None:
    """No join to targets or polls for a query that reads neither target nor first_seen_at."""
    engine = db.create(recorded)
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {AGGREGATE}")]
                steps = [step for step in plan if step.startswith(("SCAN", "SEARCH"))]
                # One read of jobs (aliased j by the view): of the table, or of an index.
                assert len(steps) == 1 and re.match(r"SCAN j\b", steps[0]), plan
            else:
                plan = [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {AGGREGATE}")]
                assert not re.search(r"\b(targets|polls)\b", "\n".join(plan)), plan
                assert re.search(r"\bjobs\b", "\n".join(plan)), plan
            both = conn.exec_driver_sql(
                "SELECT target, first_seen_at FROM job_history ORDER BY id, target"
            ).all()
    finally:
        engine.dispose()
    assert all(target and first_seen for target, first_seen in both)
