"""`recorder sql`: one query, run so that it cannot change anything.

The database enforces this, not a parser (docs/sql.md):

- SQLite is opened read-only (``mode=ro``), with ``PRAGMA query_only`` and an authorizer that
  refuses ATTACH and DETACH (``VACUUM INTO`` attaches its file) and pragmas that set something;
  the driver runs one statement per call.
- PostgreSQL: the session is read-only from its start (``default_transaction_read_only=on`` in
  the connection's startup options, so even a COMMIT would only begin another read-only
  transaction, and RESET returns to read-only); the query runs in a READ ONLY transaction that
  has already taken its snapshot (so ``transaction_read_only`` can no longer be turned off) and
  is always rolled back; it is sent with the extended query protocol, which carries exactly one
  statement per message; and a statement the server describes as returning no rows (SET, COPY,
  DO, LOCK, ...) is refused before it runs. Connections are never reused.

sqlparse only counts statements for a friendlier message ("give exactly one SQL statement"); if
it miscounts or gives up, the database still refuses.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import chain
from typing import Any
from urllib.parse import quote

import sqlparse
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool
from sqlparse import lexer, tokens

from recorder.db import SQLITE_BUSY_TIMEOUT_MS, one_line, sqlite_path

# A runaway query (a cross join over millions of jobs) is stopped after this long.
DEFAULT_TIMEOUT_S = 600.0

_DENIED = {sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH}
_READ_ONLY_OPTION = "-c default_transaction_read_only=on"
_NO_ROWS = "refused: recorder sql runs queries, and this statement returns no rows"
_NOT_READ_ONLY = "refused: the connection is not read-only (open it with readonly_engine())"
_SEVERAL = "give exactly one SQL statement (the database found more than one)"
# As db.create: a server that is down must not hold the command for minutes.
_CONNECT_TIMEOUT_S = 10

Rows = Iterator[dict[str, Any]]
_tokenize: Callable[[str], Iterator[tuple[Any, str]]] = lexer.tokenize  # untyped in sqlparse


class QueryError(Exception):
    """The query was refused or failed; the message says why, in one line."""


def readonly_engine(engine: Engine) -> Engine:
    """An engine on the same database that cannot write."""
    name = engine.dialect.name
    if name == "sqlite":
        return _sqlite_engine(engine)
    if name == "postgresql":
        return _postgres_engine(engine)
    return engine  # query() refuses it


def _sqlite_engine(engine: Engine) -> Engine:
    path = sqlite_path(engine.url)
    if path is None:  # pragma: no cover (open_readonly refuses an in-memory database first)
        raise QueryError("an in-memory database holds nothing to query")
    uri = f"file:{quote(str(path))}?mode=ro"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        conn.execute("PRAGMA query_only=ON")
        conn.set_authorizer(_authorize)
        return conn

    return create_engine("sqlite://", creator=connect, poolclass=NullPool)


def _authorize(action: int, _name: str | None, argument: str | None, *_rest: Any) -> int:
    # A pragma with a value sets something (journal_mode = DELETE); reading one is fine.
    if action in _DENIED or (action == sqlite3.SQLITE_PRAGMA and argument is not None):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


def _postgres_engine(engine: Engine) -> Engine:
    url = engine.url
    given = url.query.get("options")
    if isinstance(given, tuple):
        given = " ".join(given)
    if given is None:
        # Passing options replaces $PGOPTIONS in libpq, so keep what it said.
        given = os.environ.get("PGOPTIONS", "")
    # Last, so that it wins over a setting of the same name in the user's options.
    options = f"{given} {_READ_ONLY_OPTION}".strip()
    connect_args: dict[str, Any] = {"options": options}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    # NullPool: a connection that ran a query is closed, never handed to the next one.
    return create_engine(
        url.difference_update_query(["options"]), poolclass=NullPool, connect_args=connect_args
    )


def statement_count(sql: str) -> int | None:
    """How many statements sqlparse sees in `sql` (comments alone are none); None if it gives
    up. Only for a friendly message: the database decides what runs."""
    try:
        return sum(1 for statement in sqlparse.split(sql) if _has_code(statement))
    except Exception:  # sqlparse's limits (SQLParseError, RecursionError) or a bug of its own
        return None


def _has_code(statement: str) -> bool:
    for ttype, value in _tokenize(statement):
        if ttype in tokens.Whitespace or ttype in tokens.Comment:
            continue
        if ttype in tokens.Punctuation and value == ";":
            continue
        return True
    return False


@contextmanager
def query(
    engine: Engine, sql: str, timeout_s: float | None = DEFAULT_TIMEOUT_S
) -> Iterator[tuple[list[str], Rows]]:
    """Run one read-only query; yield its column names and a stream of its rows.

    `engine` comes from readonly_engine(). The query is stopped after `timeout_s` seconds
    (None: no limit of ours)."""
    count = statement_count(sql)
    if count is not None and count != 1:
        raise QueryError(f"give exactly one SQL statement (got {count})")
    name = engine.dialect.name
    run: Callable[[Connection, str, float | None], tuple[list[str], Rows, Callable[[], None]]]
    if name == "sqlite":
        run = _run_sqlite
    elif name == "postgresql":
        if engine.dialect.driver != "psycopg":
            raise QueryError(
                "recorder sql on PostgreSQL needs the psycopg driver "
                f"(a postgresql+psycopg:// URL), not {engine.dialect.driver}"
            )
        run = _run_postgres
    else:
        raise QueryError(f"recorder sql supports SQLite and PostgreSQL, not {name}")
    driver_error: type[Exception] = engine.dialect.loaded_dbapi.Error
    try:
        with engine.connect() as conn:
            close: Callable[[], None] = _nothing
            try:
                columns, rows, close = run(conn, sql, timeout_s)
                yield columns, rows
            finally:
                close()
                conn.rollback()
    except (DBAPIError, driver_error) as exc:
        raise QueryError(_explain(exc, timeout_s)) from None
    except UnicodeEncodeError as exc:
        raise QueryError(f"the query cannot be sent in the database's encoding: {exc}") from None


def _nothing() -> None:
    pass


def _run_sqlite(
    conn: Connection, sql: str, timeout_s: float | None
) -> tuple[list[str], Rows, Callable[[], None]]:
    raw = conn.connection.dbapi_connection
    assert raw is not None
    if conn.exec_driver_sql("PRAGMA query_only").scalar() != 1:
        raise QueryError(_NOT_READ_ONLY)
    if timeout_s:
        deadline = time.monotonic() + timeout_s
        # Called every 100,000 virtual machine instructions; a true answer interrupts.
        raw.set_progress_handler(lambda: time.monotonic() > deadline, 100_000)

    def close() -> None:
        raw.set_progress_handler(None, 0)

    try:
        result = conn.exec_driver_sql(sql)
        if not result.returns_rows:
            raise QueryError(_NO_ROWS)
    except BaseException:
        close()
        raise
    columns = list(result.keys())
    return columns, (dict(zip(columns, row, strict=True)) for row in result), close


def _run_postgres(
    conn: Connection, sql: str, timeout_s: float | None
) -> tuple[list[str], Rows, Callable[[], None]]:
    # Begins the transaction; must come before its first query.
    conn.exec_driver_sql("SET TRANSACTION READ ONLY")
    # A query: the transaction takes its snapshot here, after which transaction_read_only
    # cannot be set off ("must be set before any query"), whatever the user's statement does.
    check = "SELECT pg_catalog.current_setting('default_transaction_read_only')"
    if timeout_s:
        check += f", pg_catalog.set_config('statement_timeout', '{round(timeout_s * 1000)}', true)"
    if conn.exec_driver_sql(check).scalar() != "on":
        raise QueryError(_NOT_READ_ONLY)

    import psycopg

    raw = conn.connection.dbapi_connection
    assert raw is not None
    if raw.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
        # Autocommit: nothing to roll back (a large object would stay created).
        raise QueryError("refused: the connection is in autocommit mode (use readonly_engine())")
    columns = _describe(raw, sql)
    if not columns:
        raise QueryError(_NO_ROWS)

    cursor = raw.cursor()
    # stream() always uses the extended query protocol (execute() without parameters would
    # use the simple one, which runs every statement of a text): one statement, or an error.
    chunked = getattr(psycopg, "capabilities", None)
    if chunked is not None and chunked.has_stream_chunked():
        stream = cursor.stream(sql, size=1000)
    else:
        stream = cursor.stream(sql)

    def close() -> None:
        stream.close()  # cancels the query if its rows were not all read
        cursor.close()

    try:
        # Run it now, so that an error comes before any output.
        first = [next(stream)]
    except StopIteration:
        first = []
    except BaseException:
        close()
        raise
    rows = (dict(zip(columns, row, strict=True)) for row in chain(first, stream))
    return columns, rows, close


def _describe(raw: Any, sql: str) -> list[str]:
    """The columns `sql` returns, asked of the server without running it (Parse, Describe)."""
    from psycopg import errors, pq

    encoding = raw.info.encoding
    pgconn = raw.pgconn
    prepared = pgconn.prepare(b"", sql.encode(encoding))
    if prepared.status != pq.ExecStatus.COMMAND_OK:
        raise errors.error_from_result(prepared, encoding=encoding)
    described = pgconn.describe_prepared(b"")
    if described.status != pq.ExecStatus.COMMAND_OK:
        raise errors.error_from_result(described, encoding=encoding)
    return [(described.fname(i) or b"").decode(encoding) for i in range(described.nfields)]


_EXPLAINED = (
    # The database found several statements where sqlparse saw one.
    ("cannot insert multiple commands", _SEVERAL),
    ("one statement at a time", _SEVERAL),
    ("read-only", "refused: recorder sql is read-only ({})"),
    ("readonly", "refused: recorder sql is read-only ({})"),
    ("not authorized", "refused: recorder sql is read-only ({})"),
    ("authorization denied", "refused: recorder sql is read-only ({})"),
    ("query_only", "refused: recorder sql is read-only ({})"),
    ("prohibited", "refused: recorder sql is read-only ({})"),
    ("read-write mode", "refused: recorder sql is read-only ({})"),
)


def _explain(exc: BaseException, timeout_s: float | None) -> str:
    message = one_line(exc)
    lowered = message.lower()
    # SQLite's progress handler interrupts; PostgreSQL cancels at statement_timeout.
    if timeout_s and (lowered == "interrupted" or "statement timeout" in lowered):
        return f"stopped: the query ran longer than {timeout_s:g} s"
    for needle, template in _EXPLAINED:
        if needle in lowered:
            return template.format(message)
    return message
