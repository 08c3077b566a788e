"""Outcomes: what the API said became of each finished job, asked after it vanished

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 10:00:00

* ``outcomes``: one row per finished job of a target that asks (``outcomes = true``), keyed by
  the job: pending (``outcome`` null, ``next_attempt_at`` set) until the answer is final, then
  ``completed``, ``failed``, ``moderated`` or ``unknown``, with the times the answer carried and
  how they contradict the inferred bounds, if they do. The ``jobs`` table is unchanged.
* A partial index of the pending rows, which the asking reads on every tick.
* The view ``job_outcomes`` shows the rows with the job's id and target, times as ISO-8601 UTC
  text on SQLite (as the other report views do) and ``timestamptz`` on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Times: timestamptz on PostgreSQL, epoch seconds (REAL) on SQLite (recorder.models.UTCDateTime).
TIMESTAMP = sa.DateTime(timezone=True).with_variant(sa.Double(), "sqlite")
PENDING = "outcome IS NULL"


def _view(sqlite: bool) -> str:
    """The view job_outcomes for one backend."""

    def iso(column: str) -> str:
        # SQLite keeps epoch seconds; the views show ISO-8601 UTC text, which sorts as time.
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')" if sqlite else column

    return f"""
        SELECT
            j.api_id AS id,
            t.url AS target,
            t.name AS target_name,
            o.outcome AS outcome,
            o.attempts AS attempts,
            {iso("o.checked_at")} AS checked_at,
            {iso("o.next_attempt_at")} AS next_attempt_at,
            {iso("o.api_created_at")} AS api_created_at,
            {iso("o.api_finished_at")} AS api_finished_at,
            o.disagreement AS disagreement
        FROM outcomes o
        JOIN jobs j ON j.id = o.job_id
        JOIN targets t ON t.id = j.target_id
    """


def upgrade() -> None:
    """Outcomes: what the API said became of each finished job, asked after it vanished."""
    op.create_table(
        "outcomes",
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("outcome", sa.String(length=9), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=True),
        sa.Column("checked_at", TIMESTAMP, nullable=True),
        sa.Column("api_created_at", TIMESTAMP, nullable=True),
        sa.Column("api_finished_at", TIMESTAMP, nullable=True),
        sa.Column("disagreement", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_outcomes_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_outcomes")),
    )
    op.create_index(
        "ix_outcomes_pending",
        "outcomes",
        ["next_attempt_at"],
        unique=False,
        sqlite_where=sa.text(PENDING),
        postgresql_where=sa.text(PENDING),
    )
    op.execute(f"CREATE VIEW job_outcomes AS {_view(op.get_bind().dialect.name == 'sqlite')}")


def downgrade() -> None:
    """Undo: outcomes, its index and its view."""
    op.execute("DROP VIEW job_outcomes")
    op.drop_index("ix_outcomes_pending", table_name="outcomes")
    op.drop_table("outcomes")
