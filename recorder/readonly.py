"""`recorder sql`: one query, run so that it cannot change anything.

SQLite is opened read-only (``mode=ro``, ``PRAGMA query_only``, and an authorizer that refuses
ATTACH); PostgreSQL runs the query in a READ ONLY transaction that is rolled back. Exactly one
statement is accepted, so a query cannot end the read-only transaction and write after it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlparse
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from recorder.db import one_line

_DENIED = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}


class QueryError(Exception):
    """The query was refused or failed; the message says why, in one line."""


def single_statement(sql: str) -> str:
    """The one statement in `sql`, without a trailing semicolon; refuse zero or several."""
    statements = [s for s in sqlparse.split(sql) if sqlparse.format(s, strip_comments=True).strip()]
    if len(statements) != 1:
        raise QueryError(f"give exactly one SQL statement (got {len(statements)})")
    return statements[0].strip().rstrip(";").strip()


def readonly_engine(engine: Engine) -> Engine:
    """An engine on the same database that cannot write."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return engine
    path = Path(url.database or "").expanduser().resolve()
    ro = create_engine(make_url(f"sqlite:///file:{path}?mode=ro&uri=true"))

    @event.listens_for(ro, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only=ON")
        dbapi_connection.set_authorizer(_authorize)

    return ro


def _authorize(action: int, _name: str | None, argument: str | None, *_rest: Any) -> int:
    # A pragma with a value sets something (journal_mode = DELETE); reading one is fine.
    if action in _DENIED or (action == sqlite3.SQLITE_PRAGMA and argument is not None):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


@contextmanager
def _readonly(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        try:
            yield conn
        finally:
            conn.rollback()


@contextmanager
def query(engine: Engine, sql: str) -> Iterator[tuple[list[str], Iterator[dict[str, Any]]]]:
    """Run one read-only query; yield its column names and a stream of its rows."""
    statement = single_statement(sql)
    try:
        with _readonly(engine) as conn:
            result = conn.exec_driver_sql(statement)
            if not result.returns_rows:
                raise QueryError("the statement returned no rows (recorder sql runs queries)")
            columns = list(result.keys())
            yield columns, (dict(zip(columns, row, strict=True)) for row in result)
    except DBAPIError as exc:
        raise QueryError(_explain(exc)) from None


def _explain(exc: DBAPIError) -> str:
    message = one_line(exc)
    lowered = message.lower()
    if "readonly" in lowered or "read-only" in lowered or "not authorized" in lowered:
        return f"refused: recorder sql is read-only ({message})"
    if "query_only" in lowered or "prohibited" in lowered:
        return f"refused: recorder sql is read-only ({message})"
    return message
