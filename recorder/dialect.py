"""Every difference between SQLite and PostgreSQL that the recorder's own queries meet.

The store, the reports and the lease ask a `Dialect` instead of testing the backend's name;
engine set-up (recorder.db, recorder.readonly) and the migrations, which stand alone, are the
only other places that know it. Everything else in the reports is plain SQL that both run
unchanged. Times are stored as epoch seconds (REAL) on SQLite and as ``timestamptz`` on
PostgreSQL; report arithmetic is done in epoch seconds on both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table
from sqlalchemy import Dialect as SQLAlchemyDialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import Executable

from recorder.output import iso


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs on one backend: SQL snippets, statements, and how values look."""

    name: str

    @staticmethod
    def of(bind: Engine | Connection | SQLAlchemyDialect) -> Dialect:
        """The Dialect of an engine, a connection, or SQLAlchemy's own dialect object."""
        return Dialect(bind.name if isinstance(bind, SQLAlchemyDialect) else bind.dialect.name)

    @property
    def sqlite(self) -> bool:
        """True for SQLite."""
        return self.name == "sqlite"

    @property
    def postgresql(self) -> bool:
        """True for PostgreSQL."""
        return self.name == "postgresql"

    def epoch(self, column: str) -> str:
        """A stored time as epoch seconds (double)."""
        return column if self.sqlite else f"EXTRACT(EPOCH FROM {column})::double precision"

    def floor(self, expr: str) -> str:
        """floor() of a non-negative number (SQLite may be built without math functions)."""
        return f"CAST(({expr}) AS INTEGER)" if self.sqlite else f"FLOOR({expr})"

    def no_index(self, column: str) -> str:
        """A column the planner should not pick an index for (SQLite plans without statistics).

        On SQLite, a unary + keeps a term out of index selection; PostgreSQL plans from the
        statistics its autovacuum keeps, and needs no hint.
        """
        return f"+{column}" if self.sqlite else column

    def indexed_by(self, index: str) -> str:
        """After a table in FROM: read it through `index` (SQLite, whose planner without
        statistics prefers a wider index to a partial one that fits; PostgreSQL chooses well).

        The same for a SQLAlchemy SELECT: ``.with_hint(table, indexed_by_hint(index), "sqlite")``.
        """
        return f" {indexed_by_hint(index)}" if self.sqlite else ""

    def end_day(self, alias: str) -> str:
        """The UTC day a job ended, as the index ``ix_jobs_finished_day`` has it: days since
        the epoch on SQLite, a date on PostgreSQL (whose epoch extraction is not immutable)."""
        if self.sqlite:
            return f"CAST({alias}.end_at / 86400 AS INTEGER)"
        return f"(({alias}.end_at AT TIME ZONE 'UTC')::date)"

    def day_value(self, day: int) -> int | date:
        """Days since the epoch as `end_day` compares it."""
        return day if self.sqlite else date(1970, 1, 1) + timedelta(days=day)

    def greatest(self, a: str, b: str) -> str:
        """The larger of two values."""
        return f"MAX({a}, {b})" if self.sqlite else f"GREATEST({a}, {b})"

    def least(self, a: str, b: str) -> str:
        """The smaller of two values."""
        return f"MIN({a}, {b})" if self.sqlite else f"LEAST({a}, {b})"

    def number(self, param: str) -> str:
        """A bound parameter used as a double (PostgreSQL needs to know its type)."""
        return f":{param}" if self.sqlite else f"CAST(:{param} AS double precision)"

    def insert_new(self, table: Any, values: Mapping[str, Any]) -> Executable:
        """INSERT one row, doing nothing when a row with the same key is already there."""
        # Imported here: the PostgreSQL dialect package loads every PostgreSQL driver's module,
        # a cost every command would pay at start-up for what only the lease writes.
        from sqlalchemy.dialects import postgresql, sqlite

        if self.postgresql:
            return postgresql.insert(table).values(**values).on_conflict_do_nothing()
        return sqlite.insert(table).values(**values).on_conflict_do_nothing()

    def view_time(self, value: datetime) -> datetime | str:
        """A time to compare with a report view's time column (ISO-8601 text on SQLite)."""
        return iso(value) if self.sqlite else value

    def from_view_time(self, value: Any) -> datetime:
        """A report view's time column as an aware UTC datetime."""
        if self.sqlite:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        return cast(datetime, value)


def indexed_by_hint(index: str) -> str:
    """SQLite's table hint that makes a query read its table through `index`."""
    return f"INDEXED BY {index}"


@compiles(Table, "sqlite")
def _table_with_hint(table: Table, compiler: SQLCompiler, **kw: Any) -> str:
    """A table in a SELECT's FROM, followed by its ``with_hint(table, text, "sqlite")`` text.

    SQLAlchemy's SQLite compiler drops table hints (only its MySQL, SQL Server and Oracle
    compilers render them). SQLite takes ``INDEXED BY`` after the table's name and alias; a hint
    on a table does not reach an alias of it (``Job.alias()``), which is another FROM entry.
    """
    # SQLAlchemy leaves its visit methods untyped.
    sql: str = compiler.visit_table(table, **kw)  # type: ignore[no-untyped-call]
    hint = (kw.get("fromhints") or {}).get(table)
    return f"{sql} {hint}" if hint and kw.get("asfrom") else sql
