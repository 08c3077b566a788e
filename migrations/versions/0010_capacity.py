"""Capacity: each account's maxJobs / executing / available, stored when they change

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 10:00:00

* ``capacity``: one row per run of unchanged /scheduler/available values of one account of one
  target, from ``first_at`` (the read that saw them) to ``last_at`` (the latest read that
  repeated them, or the read that saw them change).
* The view ``account_capacity`` shows the rows with the target's URL, name and service, times
  as ISO-8601 UTC text on SQLite (as the report views of 0002 and 0009 do) and ``timestamptz``
  on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# Times: timestamptz on PostgreSQL, epoch seconds (REAL) on SQLite (recorder.models.UTCDateTime).
TIMESTAMP = sa.DateTime(timezone=True).with_variant(sa.Double(), "sqlite")


def _view(sqlite: bool) -> str:
    """The view account_capacity for one backend."""

    def iso(column: str) -> str:
        # SQLite keeps epoch seconds; the views show ISO-8601 UTC text, which sorts as time.
        return f"strftime('%Y-%m-%dT%H:%M:%fZ', {column}, 'unixepoch')" if sqlite else column

    return f"""
        SELECT
            t.url AS target,
            t.name AS target_name,
            t.service AS service,
            c.account AS account,
            c.max_jobs AS max_jobs,
            c.executing AS executing,
            c.available AS available,
            {iso("c.first_at")} AS since,
            {iso("c.last_at")} AS until
        FROM capacity c
        JOIN targets t ON t.id = c.target_id
    """


def upgrade() -> None:
    """Capacity: each account's maxJobs / executing / available, stored when they change."""
    op.create_table(
        "capacity",
        sa.Column("id", ID, nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("account", sa.String(), nullable=False),
        sa.Column("max_jobs", sa.Integer(), nullable=True),
        sa.Column("executing", sa.Integer(), nullable=True),
        sa.Column("available", sa.Integer(), nullable=True),
        sa.Column("first_at", TIMESTAMP, nullable=False),
        sa.Column("last_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_capacity_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_capacity")),
    )
    op.create_index(
        "ix_capacity_target_account_first",
        "capacity",
        ["target_id", "account", "first_at"],
        unique=False,
    )
    op.execute(f"CREATE VIEW account_capacity AS {_view(op.get_bind().dialect.name == 'sqlite')}")


def downgrade() -> None:
    """Undo: capacity, and its view."""
    op.execute("DROP VIEW account_capacity")
    op.drop_index("ix_capacity_target_account_first", table_name="capacity")
    op.drop_table("capacity")
