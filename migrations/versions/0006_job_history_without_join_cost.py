"""job_history as fast as the jobs table: no join costs a query that reads none of its columns

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _job_history(sqlite: bool, *, inner_joins: bool) -> str:
    """The view job_history for one backend: 0002's definition, or this revision's.

    0002 joined the target and the first poll with inner joins, which SQLite performs even for
    a query that reads none of their columns (a count by type cost 33 times the same count on
    jobs). Every job has its target and its first poll (NOT NULL foreign keys, enforced on
    both backends), so looking them up finds exactly the same rows: on SQLite as scalar
    subqueries, which a query that does not read `target` or `first_seen_at` never runs; on
    PostgreSQL as LEFT JOINs on unique keys, which its planner removes when unused and hashes
    when used. Columns, names and types are those of 0002.
    """
    if inner_joins:
        target, first_seen = "t.url", "fp.received_at"
        joins = """
        JOIN targets t ON t.id = j.target_id
        JOIN polls fp ON fp.id = j.first_poll_id"""
    elif sqlite:
        target = "(SELECT t.url FROM targets t WHERE t.id = j.target_id)"
        first_seen = "(SELECT fp.received_at FROM polls fp WHERE fp.id = j.first_poll_id)"
        joins = ""
    else:
        target, first_seen = "t.url", "fp.received_at"
        joins = """
        LEFT JOIN targets t ON t.id = j.target_id
        LEFT JOIN polls fp ON fp.id = j.first_poll_id"""

    def iso(column: str) -> str:
        # SQLite keeps epoch seconds; the views show ISO-8601 UTC text, which sorts as time.
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
            {iso(first_seen)} AS first_seen_at,
            {text_time("j.start_at", "day")} AS started_day,
            {text_time("j.end_at", "day")} AS ended_day,
            {text_time("j.end_at", "hour")} AS ended_hour,
            {target} AS target
        FROM jobs j{joins}
    """


def _replace(*, inner_joins: bool) -> None:
    """Define job_history anew, with the same columns (PostgreSQL keeps its grants)."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    body = _job_history(sqlite, inner_joins=inner_joins)
    if sqlite:  # no CREATE OR REPLACE VIEW, and no grants to keep
        op.execute("DROP VIEW job_history")
        op.execute(f"CREATE VIEW job_history AS {body}")
    else:
        op.execute(f"CREATE OR REPLACE VIEW job_history AS {body}")


def upgrade() -> None:
    """job_history as fast as the jobs table: no join costs a query that reads none of its columns."""
    _replace(inner_joins=False)


def downgrade() -> None:
    """Undo: job_history as fast as the jobs table (its inner joins of 0002 again)."""
    _replace(inner_joins=True)
