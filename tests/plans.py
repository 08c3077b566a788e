"""SQLite's query plans of the statements a call runs, for tests that hold the recorder to its
indexes (SQLite plans without statistics, so a plan is the same on a small test database as on a
large one)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, event


def statements(
    engine: Engine, call: Callable[[], object], matching: str = " jobs"
) -> list[tuple[str, Any]]:
    """Every statement holding `matching` (by default, those on jobs) that `call` runs
    (executemany aside), with its parameters."""
    found: list[tuple[str, Any]] = []

    def seen(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
        if not many and matching in sql:
            found.append((sql, params))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    return found


def planned(
    engine: Engine, call: Callable[[], object], matching: str = " jobs"
) -> list[tuple[str, str]]:
    """`statements`, each with SQLite's plan of it, one line per step joined by " / "."""
    found = statements(engine, call, matching)
    with engine.connect() as conn:
        return [
            (
                sql,
                " / ".join(
                    step[-1] for step in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params)
                ),
            )
            for sql, params in found
        ]


def plans(engine: Engine, call: Callable[[], object]) -> list[str]:
    """The plans alone of `planned`."""
    return [plan for _, plan in planned(engine, call)]
