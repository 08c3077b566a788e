"""`recorder sql` (read-only, one statement) and the documented queries of docs/sql.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from recorder import db
from recorder.cli import cli
from recorder.models import Base

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
        "INSERT INTO targets (url, created_at) VALUES ('x', 0)",
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
