"""The few SQL fragments that differ between SQLite and PostgreSQL, for hand-written queries.

Everything else in the reports is plain SQL that both run unchanged. Times are stored as
epoch seconds (REAL) on SQLite and as ``timestamptz`` on PostgreSQL; report arithmetic is done
in epoch seconds on both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Dialect:
    """SQL snippets for one backend."""

    name: str

    @property
    def sqlite(self) -> bool:
        """True for SQLite."""
        return self.name == "sqlite"

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

    def greatest(self, a: str, b: str) -> str:
        """The larger of two values."""
        return f"MAX({a}, {b})" if self.sqlite else f"GREATEST({a}, {b})"

    def least(self, a: str, b: str) -> str:
        """The smaller of two values."""
        return f"MIN({a}, {b})" if self.sqlite else f"LEAST({a}, {b})"

    def number(self, param: str) -> str:
        """A bound parameter used as a double (PostgreSQL needs to know its type)."""
        return f":{param}" if self.sqlite else f"CAST(:{param} AS double precision)"
