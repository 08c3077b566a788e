"""`recorder sql` cannot write, whatever the text says (issue 9).

Every attack below runs through the command on SQLite and PostgreSQL and must change nothing.
Each test can fail: the same text, run without the protection (or, where it got through, with
the protection as it was before: sqlparse counting one statement, then a READ ONLY transaction),
does write, and the comparison of the database before and after sees it.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlparse
from click.testing import CliRunner
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlparse.exceptions import SQLParseError

from recorder import db, readonly
from recorder.cli import cli
from recorder.models import Base
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.store import Store
from tests.conftest import new_database
from tests.feeding import ok

POSTGRES = "postgresql"
SQLITE = "sqlite"
BOTH = frozenset({SQLITE, POSTGRES})
PG = frozenset({POSTGRES})
WRITE = "UPDATE jobs SET type = 'pwned'"
# The trick the adversary used: with standard_conforming_strings (PostgreSQL's default) a
# backslash does not escape a quote, so PostgreSQL reads 'a\' as a whole string and then three
# statements, the last ending in a comment; sqlparse reads a string running to the final quote,
# so one statement. PostgreSQL's simple query protocol runs all three.
TRICK = "SELECT 'a\\'; COMMIT; {} --'"
# A second one: sqlparse takes `# ` for a (MySQL) comment to the end of the line; in PostgreSQL
# `#` is the bitwise XOR operator.
HASH_TRICK = "SELECT 1 # 1; COMMIT; {}"


def sql(url: str, query: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["--db", url, "sql", query, "--format", "json"])
    assert result.exit_code in (0, 1), result.exception  # never a traceback
    return result.exit_code, result.output


def seed(engine: Engine) -> None:
    """A few jobs, finished and running, recorded the ordinary way."""
    clock = ManualClock(1_750_000_000.0)
    kinds = (JobKind("video", 6.0, 60.0),)
    sim = Simulator(SimConfig(seed=5, kinds=kinds, initial_jobs=4), clock=clock)
    results = []
    for _ in range(8):
        results.append(ok(sim, clock))
        clock.advance(30)
    pipeline = Pipeline(Store(engine), "http://127.0.0.1:9/a/", lambda: results.pop(0), gap_s=90)
    while results:
        pipeline.poll_once()


def snapshot(engine: Engine) -> dict[str, Any]:
    """Everything an attack could change: every row of every table, the schema, and on
    PostgreSQL the sequences and large objects."""
    found: dict[str, Any] = {}
    with engine.connect() as conn:
        for name, table in sorted(Base.metadata.tables.items()):
            rows = conn.execute(select(table).order_by(*table.primary_key.columns)).all()
            found[name] = [tuple(row) for row in rows]
        if engine.dialect.name == POSTGRES:
            found["schema"] = conn.execute(
                text("SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace")
            ).all()
            found["sequences"] = conn.execute(
                text("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1")
            ).all()
            found["large objects"] = conn.scalar(
                text("SELECT count(*) FROM pg_largeobject_metadata")
            )
        else:
            found["schema"] = conn.execute(text("SELECT name FROM sqlite_master ORDER BY 1")).all()
    return found


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    return _seeded(engine)


def _seeded(engine: Engine) -> Engine:
    seed(engine)
    assert snapshot(engine)["jobs"], "the attacks need jobs to change"
    if engine.dialect.name == POSTGRES:
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE FUNCTION recorder_test_pwn() RETURNS integer LANGUAGE sql VOLATILE "
                f"AS $$ {WRITE}; SELECT 1 $$"
            )
    return engine


@contextmanager
def _one_backend(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    with new_database(backend, tmp_path, request) as url:
        engine = db.open_database(url)
        try:
            yield _seeded(engine)
        finally:
            engine.dispose()


@pytest.fixture(params=[POSTGRES])  # the id names the backend, as for the two-backend tests
def pg_seeded(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A seeded database on PostgreSQL only, for what only PostgreSQL has."""
    with _one_backend(request.param, tmp_path, request) as engine:
        yield engine


@pytest.fixture(params=[SQLITE])
def sqlite_seeded(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Engine]:
    """A seeded database on SQLite only, for what only SQLite has."""
    with _one_backend(request.param, tmp_path, request) as engine:
        yield engine


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def run_unprotected(engine: Engine, query: str) -> None:
    """`query` as a client without any protection runs it: PostgreSQL's simple query protocol
    (psycopg without parameters), committed; SQLite's executescript."""
    if engine.dialect.name == SQLITE:
        conn = sqlite3.connect(engine.url.database or "")
        try:
            conn.executescript(query)
        finally:
            conn.close()
        return
    import psycopg

    conninfo = make_url(url_of(engine)).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False)) as conn:
        conn.execute(query)


def run_old_guard(engine: Engine, query: str) -> None:
    """`query` through the protection as it was before the fix: sqlparse counts exactly one
    statement, which then runs in a READ ONLY transaction that is rolled back."""
    split = sqlparse.split(query)
    statements = [s for s in split if sqlparse.format(s, strip_comments=True).strip()]
    if len(statements) != 1:
        return
    with engine.connect() as conn:
        conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            conn.exec_driver_sql(statements[0].strip().rstrip(";").strip())
        except DBAPIError:
            pass
        finally:
            conn.rollback()


@dataclass(frozen=True)
class Attack:
    id: str
    query: str
    writes_unprotected: frozenset[str] = PG  # where the text writes without any protection
    got_through: bool = False  # it wrote on PostgreSQL through the old protection
    refused: bool | None = True  # None: may run, as long as nothing stays changed


ATTACKS = [
    Attack("backslash-quote-commit", TRICK.format(WRITE), got_through=True),
    Attack("hash-comment-commit", HASH_TRICK.format(WRITE), got_through=True),
    # A session read-only by default is not enough without one statement per message: set
    # the default off in the read-only transaction, commit it, write in the next one.
    Attack(
        "set-default-read-write-commit",
        f"SELECT 'a\\'; SET default_transaction_read_only = off; COMMIT; {WRITE} --'",
        got_through=True,
    ),
    Attack(
        "session-characteristics-commit",
        "SELECT 1 # 1; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; COMMIT; " + WRITE,
        got_through=True,
    ),
    Attack(
        "commit-set-default-read-write",
        TRICK.format(f"SET default_transaction_read_only = off; {WRITE}"),
        got_through=True,
    ),
    Attack("commit-reset-all", TRICK.format(f"RESET ALL; {WRITE}"), got_through=True),
    Attack(
        "commit-reset-role", TRICK.format(f"RESET ROLE; SET ROLE NONE; {WRITE}"), got_through=True
    ),
    Attack(
        "set-config-then-commit",
        "SELECT 'a\\'; SELECT set_config('default_transaction_read_only', 'off', false); "
        f"COMMIT; {WRITE} --'",
        got_through=True,
    ),
    Attack(
        "rollback-begin-read-write",
        f"SELECT 'a\\'; ROLLBACK; BEGIN READ WRITE; {WRITE}; COMMIT --'",
        got_through=True,
    ),
    Attack("set-transaction-read-write", f"SELECT 'a\\'; SET TRANSACTION READ WRITE; {WRITE} --'"),
    Attack("commit-update", f"COMMIT; {WRITE}"),
    Attack("backslash-quote-update", f"SELECT 'a\\'; {WRITE} --'", BOTH),
    Attack("update-returning", f"{WRITE} RETURNING id", BOTH),
    Attack("delete", "DELETE FROM observations", BOTH),
    Attack("writable-cte", f"WITH u AS ({WRITE} RETURNING id) SELECT count(*) FROM u"),
    Attack(
        "set-config-read-write-in-cte",
        "WITH s AS (SELECT set_config('transaction_read_only', 'off', true) AS v) "
        f"{WRITE} FROM s RETURNING jobs.id",
    ),
    Attack(
        "set-config-role-in-cte",
        f"WITH r AS (SELECT set_config('role', 'none', true) AS v) {WRITE} FROM r RETURNING 1",
    ),
    Attack("volatile-function", "SELECT recorder_test_pwn()"),
    Attack("do-block", f"DO $$ BEGIN {WRITE}; END $$"),
    Attack("explain-analyze", f"EXPLAIN ANALYZE {WRITE}"),
    Attack("nextval", "SELECT nextval(pg_get_serial_sequence('jobs', 'id'))"),
    # PostgreSQL 15 lets a read-only transaction create a large object; the rollback undoes it.
    Attack("large-object", "SELECT lo_from_bytea(0, 'pwned')", refused=None),
]


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.id)
def test_an_attack_changes_nothing(seeded: Engine, backend: str, attack: Attack) -> None:
    before = snapshot(seeded)
    code, output = sql(url_of(seeded), attack.query)
    assert snapshot(seeded) == before
    if attack.refused or code:
        assert code == 1
        assert output.startswith("Error: ")
        assert output.count("\n") == 1
    if attack.refused is None:
        assert code == 1 or json.loads(output)

    # The test can fail: without the protection (or with the old one) the same text writes.
    if backend == POSTGRES and attack.got_through:
        run_old_guard(seeded, attack.query)
        assert snapshot(seeded) != before, "the old protection let it write"
    elif backend in attack.writes_unprotected:
        run_unprotected(seeded, attack.query)
        assert snapshot(seeded) != before, "unprotected, it writes"


def test_sqlparse_is_not_the_guard() -> None:
    # sqlparse sees one statement in each trick; PostgreSQL sees three.
    assert readonly.statement_count(TRICK.format(WRITE)) == 1
    assert readonly.statement_count(HASH_TRICK.format(WRITE)) == 1


def test_psycopg_sends_one_statement_per_message(pg_seeded: Engine) -> None:
    """What the protection relies on in psycopg: execute() without parameters uses the simple
    query protocol, which runs every statement of the text; stream() always uses the extended
    protocol, whose Parse message takes exactly one."""
    import psycopg

    conninfo = make_url(url_of(pg_seeded)).set(drivername="postgresql")
    with psycopg.connect(conninfo.render_as_string(hide_password=False)) as conn:
        cursor = conn.cursor()
        cursor.execute("SELECT 1; SELECT 2")
        assert cursor.fetchall() == [(1,)] and cursor.nextset() and cursor.fetchall() == [(2,)]
        conn.rollback()
        with pytest.raises(psycopg.errors.SyntaxError, match="multiple commands"):
            list(cursor.stream("SELECT 1; SELECT 2"))


def test_a_normal_query_still_works(seeded: Engine) -> None:
    with seeded.connect() as conn:
        jobs = conn.scalar(text("SELECT count(*) FROM jobs"))
    code, output = sql(url_of(seeded), "SELECT id, type, status FROM job_history ORDER BY id")
    assert code == 0, output
    rows = json.loads(output)
    assert len(rows) == jobs
    assert set(rows[0]) == {"id", "type", "status"}
    # A trailing semicolon and comment, a percent sign, and a backslash in a string are fine.
    code, output = sql(
        url_of(seeded), "SELECT count(*) AS n, '100%' AS p, 'a\\' AS b FROM jobs; -- all of them"
    )
    assert code == 0, output
    assert json.loads(output) == [{"n": jobs, "p": "100%", "b": "a\\"}]


def test_select_for_update_is_refused(seeded: Engine, backend: str) -> None:
    query = "SELECT id FROM jobs FOR UPDATE"
    code, output = sql(url_of(seeded), query)
    assert code == 1
    assert output.count("\n") == 1
    if backend == POSTGRES:  # SQLite has no FOR UPDATE: a syntax error
        assert "read-only" in output
        with seeded.connect() as conn:  # the test can fail: it locks rows otherwise
            assert conn.execute(text(query)).all()


def test_the_session_stays_read_only(pg_seeded: Engine) -> None:
    url = url_of(pg_seeded)
    code, output = sql(url, "SET default_transaction_read_only = off")
    assert code == 1
    assert "returns no rows" in output
    # set_config() runs inside a query, but cannot make the transaction read-write...
    code, output = sql(
        url,
        "SELECT set_config('default_transaction_read_only', 'off', false) AS d, "
        "set_config('role', 'none', false) AS r, current_setting('transaction_read_only') AS t",
    )
    assert code == 0, output
    assert json.loads(output) == [{"d": "off", "r": "none", "t": "on"}]
    code, output = sql(url, "SELECT set_config('transaction_read_only', 'off', true)")
    assert code == 1
    assert "read-only" in output
    # ...and the next query has a new session, read-only from its start.
    code, output = sql(url, "SHOW default_transaction_read_only")
    assert (code, json.loads(output)) == (0, [{"default_transaction_read_only": "on"}])


def test_the_urls_options_cannot_turn_it_off(pg_seeded: Engine) -> None:
    url = make_url(url_of(pg_seeded)).update_query_dict(
        {"options": "-c default_transaction_read_only=off -c application_name=mine"}
    )
    given = url.render_as_string(hide_password=False)
    before = snapshot(pg_seeded)
    query = "SELECT current_setting('default_transaction_read_only') AS ro, "
    query += "current_setting('application_name') AS app"
    code, output = sql(given, query)
    assert (code, json.loads(output)) == (0, [{"ro": "on", "app": "mine"}])
    code, _ = sql(given, TRICK.format(WRITE))
    assert code == 1
    assert snapshot(pg_seeded) == before
    # The test can fail: the URL alone does open a read-write session.
    plain = db.create(given)
    with plain.connect() as conn:
        assert conn.scalar(text("SHOW default_transaction_read_only")) == "off"
    plain.dispose()


def test_a_statement_without_rows_is_refused_before_it_runs(pg_seeded: Engine) -> None:
    """COPY ... TO PROGRAM (a superuser's) runs a program even in a read-only transaction: it
    is refused because the server describes it as returning no rows, before it runs."""
    with pg_seeded.connect() as conn:
        if not conn.scalar(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
            pytest.skip("needs a superuser URL")
    path = f"/tmp/recorder-sql-test-{uuid.uuid4().hex}"  # on the server's machine
    query = f"COPY (SELECT 'pwned') TO PROGRAM 'cat > {path}'"

    def written() -> bool:
        with pg_seeded.connect() as conn:
            return conn.scalar(text(f"SELECT (pg_stat_file('{path}', true)).size IS NOT NULL"))

    try:
        code, output = sql(url_of(pg_seeded), query)
        assert code == 1
        assert "returns no rows" in output
        assert not written()
        run_old_guard(pg_seeded, query)  # the test can fail: a read-only transaction runs it
        assert written()
    finally:
        with pg_seeded.begin() as conn:
            conn.exec_driver_sql(f"COPY (SELECT 1) TO PROGRAM 'rm -f {path}'")


def test_vacuum_into_is_refused(sqlite_seeded: Engine, tmp_path: Path) -> None:
    copy = tmp_path / "copy.db"
    code, output = sql(url_of(sqlite_seeded), f"VACUUM INTO '{copy}'")
    assert code == 1
    assert "read-only" in output
    assert not copy.exists()
    run_unprotected(sqlite_seeded, f"VACUUM INTO '{copy}'")  # the test can fail
    assert copy.exists()


NESTED = "SELECT " + "(" * 150 + "1" + ")" * 150 + " AS n"
LONG = "SELECT 1 AS n WHERE 1 IN (" + ", ".join(["1"] * 6000) + ")"


@pytest.mark.parametrize("query", [NESTED, LONG], ids=["deeply-nested", "long"])
def test_a_query_sqlparse_gives_up_on_runs(seeded: Engine, backend: str, query: str) -> None:
    with pytest.raises(SQLParseError):  # how the old check failed, with a traceback
        sqlparse.format(query, strip_comments=True)
    code, output = sql(url_of(seeded), query)
    if backend == SQLITE and query == NESTED:  # deeper than SQLite's parser goes
        assert (code, output) == (1, "Error: parser stack overflow\n")
    else:
        assert (code, json.loads(output)) == (0, [{"n": 1}])


@pytest.fixture
def sqlparse_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def give_up(*_args: Any, **_kwargs: Any) -> list[str]:
        raise SQLParseError("Maximum grouping depth exceeded (100).")

    monkeypatch.setattr(readonly.sqlparse, "split", give_up)


@pytest.mark.usefixtures("sqlparse_gives_up")
def test_when_sqlparse_gives_up_the_database_decides(seeded: Engine, backend: str) -> None:
    url = url_of(seeded)
    assert readonly.statement_count("SELECT 1") is None
    code, output = sql(url, "SELECT 2 AS n")
    assert (code, json.loads(output)) == (0, [{"n": 2}])
    before = snapshot(seeded)
    for query in ["SELECT 1; DELETE FROM jobs", TRICK.format(WRITE), "DELETE FROM jobs", ""]:
        code, output = sql(url, query)
        assert code == 1
        assert output.startswith("Error: ")
        assert output.count("\n") == 1
    assert snapshot(seeded) == before


# Each runs for about ten seconds (and returns a row) unless stopped.
RUNAWAY = {
    SQLITE: "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 40000000) "
    "SELECT count(*) FROM c",
    POSTGRES: "SELECT pg_sleep(10)",
}


def test_a_runaway_query_is_stopped(seeded: Engine, backend: str) -> None:
    ro = readonly.readonly_engine(seeded)
    with (
        pytest.raises(readonly.QueryError, match=r"^stopped: the query ran longer than 0.5 s$"),
        readonly.query(ro, RUNAWAY[backend], timeout_s=0.5) as (_, rows),
    ):
        list(rows)
    ro.dispose()


def test_query_refuses_an_engine_that_can_write(seeded: Engine) -> None:
    with (
        pytest.raises(readonly.QueryError, match="not read-only"),
        readonly.query(seeded, "SELECT 1"),
    ):
        pass


def test_query_refuses_autocommit(pg_seeded: Engine) -> None:
    """In autocommit there is nothing to roll back: a large object (which a read-only
    transaction lets PostgreSQL 15 create) would stay."""
    before = snapshot(pg_seeded)
    ro = readonly.readonly_engine(pg_seeded).execution_options(isolation_level="AUTOCOMMIT")
    with (
        pytest.raises(readonly.QueryError, match="autocommit"),
        readonly.query(ro, "SELECT lo_from_bytea(0, 'pwned')"),
    ):
        pass
    assert snapshot(pg_seeded) == before
