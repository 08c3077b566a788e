"""Report views: job_history, poll_log, poll_gaps (docs/sql.md)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 16:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sql(sqlite: bool) -> dict[str, str]:
    """The view definitions for one backend; their names and columns are a stable contract."""

    def iso(column: str) -> str:
        # SQLite keeps epoch seconds; the views show ISO-8601 UTC text, which sorts as time.
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')" if sqlite else column

    def epoch(column: str) -> str:
        return column if sqlite else f"EXTRACT(EPOCH FROM {column})::double precision"

    def text_time(column: str, unit: str) -> str:
        if sqlite:
            fmt = {"day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H"}[unit]
            return f"strftime('{fmt}', {column}, 'unixepoch')"
        fmt = {"day": "YYYY-MM-DD", "hour": 'YYYY-MM-DD"T"HH24'}[unit]
        return f"to_char({column} AT TIME ZONE 'UTC', '{fmt}')"

    job_history = f"""
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
    poll_log = f"""
        SELECT
            p.id AS id,
            t.url AS target,
            {iso("p.sent_at")} AS sent_at,
            {iso("p.received_at")} AS received_at,
            p.latency_s AS latency_s,
            p.outcome AS outcome,
            p.http_status AS http_status,
            p.item_count AS item_count,
            p.after_gap AS after_gap,
            p.error AS error
        FROM polls p
        JOIN targets t ON t.id = p.target_id
    """
    poll_gaps = f"""
        WITH closed_gaps AS (
            SELECT
                p.target_id AS target_id,
                p.id AS end_id,
                (SELECT MAX(q.id) FROM polls q
                 WHERE q.target_id = p.target_id AND q.outcome = 'ok' AND q.id < p.id) AS start_id,
                FALSE AS ongoing
            FROM polls p
            WHERE p.outcome = 'ok' AND p.after_gap
        ),
        open_gaps AS (
            SELECT ok.target_id AS target_id, latest.last_id AS end_id, ok.ok_id AS start_id,
                   TRUE AS ongoing
            FROM (SELECT target_id, MAX(id) AS ok_id FROM polls
                  WHERE outcome = 'ok' GROUP BY target_id) ok
            JOIN (SELECT target_id, MAX(id) AS last_id FROM polls GROUP BY target_id) latest
              ON latest.target_id = ok.target_id
            WHERE latest.last_id > ok.ok_id
        ),
        gaps AS (
            SELECT * FROM closed_gaps WHERE start_id IS NOT NULL
            UNION ALL
            SELECT * FROM open_gaps
        )
        SELECT
            t.url AS target,
            {iso("s.sent_at")} AS started_at,
            {iso("e.sent_at")} AS ended_at,
            {epoch("e.sent_at")} - {epoch("s.sent_at")} AS duration_s,
            (SELECT COUNT(*) FROM polls f
             WHERE f.target_id = g.target_id AND f.id > g.start_id AND f.id <= g.end_id
               AND f.outcome <> 'ok') AS failed_polls,
            g.ongoing AS ongoing
        FROM gaps g
        JOIN polls s ON s.id = g.start_id
        JOIN polls e ON e.id = g.end_id
        JOIN targets t ON t.id = g.target_id
    """
    return {"job_history": job_history, "poll_log": poll_log, "poll_gaps": poll_gaps}


def upgrade() -> None:
    """Report views: job_history, poll_log, poll_gaps; an index that finds gaps fast."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    with op.batch_alter_table("polls", schema=None) as batch_op:
        batch_op.create_index(
            "ix_polls_gaps",
            ["target_id", "id"],
            unique=False,
            sqlite_where=sa.text("after_gap"),
            postgresql_where=sa.text("after_gap"),
        )
    for name, body in _sql(sqlite).items():
        op.execute(f"CREATE VIEW {name} AS {body}")


def downgrade() -> None:
    """Undo: report views: job_history, poll_log, poll_gaps."""
    for name in ("poll_gaps", "poll_log", "job_history"):
        op.execute(f"DROP VIEW {name}")
    with op.batch_alter_table("polls", schema=None) as batch_op:
        batch_op.drop_index("ix_polls_gaps")
