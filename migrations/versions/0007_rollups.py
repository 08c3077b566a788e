"""Rollups: the finished jobs summed per hour, for reports over long windows

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 17:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# recorder.models.LONG_JOB_*, written out: a migration must not change when the models do.
LONG_JOB_SQLITE = "status = 'finished' AND end_at - start_at > 86400"
LONG_JOB_POSTGRESQL = "status = 'finished' AND end_at - start_at > interval '86400 seconds'"

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Rollups: the finished jobs summed per hour, filled from the jobs already recorded."""
    op.create_table(
        "rollup_hours",
        sa.Column("id", ID, nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("account", sa.String(), nullable=True),
        sa.Column("finished", sa.Integer(), nullable=False),
        sa.Column("timed", sa.Integer(), nullable=False),
        sa.Column("duration_sum", sa.Double(), nullable=False),
        sa.Column("duration_max", sa.Double(), nullable=True),
        sa.Column("wide", sa.Integer(), nullable=False),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("busy_s", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_rollup_hours_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_hours")),
    )
    op.create_index("ix_rollup_hours_hour", "rollup_hours", ["hour"], unique=False)
    op.create_table(
        "rollup_peaks",
        sa.Column("id", ID, nullable=False),
        sa.Column("scope", sa.SmallInteger(), nullable=False),
        sa.Column("hour", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=True),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("account", sa.String(), nullable=True),
        sa.Column("peak", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_rollup_peaks_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollup_peaks")),
    )
    op.create_index("ix_rollup_peaks_scope_hour", "rollup_peaks", ["scope", "hour"], unique=False)
    op.create_index(
        "ix_jobs_long",
        "jobs",
        ["end_at"],
        unique=False,
        sqlite_where=sa.text(LONG_JOB_SQLITE),
        postgresql_where=sa.text(LONG_JOB_POSTGRESQL),
    )
    # Each whole UTC day's percentiles are read at their rank from this index (recorder.stats).
    # An expression index, so written per backend. On PostgreSQL the day is a date, since
    # extracting epoch seconds from a timestamptz is not immutable, and the index includes
    # end_at: its planner reads an index alone only when it holds every column a query names.
    if op.get_bind().dialect.name == "sqlite":
        day, include = "CAST(end_at / 86400 AS INTEGER)", ""
    else:
        day, include = "((end_at AT TIME ZONE 'UTC')::date)", " INCLUDE (end_at)"
    op.execute(
        f"CREATE INDEX ix_jobs_finished_day ON jobs ({day}, duration_s){include}"
        " WHERE status = 'finished'"
    )
    # Existing databases get their rollups from the jobs they hold, by the recorder's own code
    # (recorder.rollups.rebuild), which writes the rollups' latest shape: the latest migration
    # that changes the rollups (0011) is the one that runs it.


def downgrade() -> None:
    """Undo: rollups."""
    op.drop_index("ix_jobs_finished_day", table_name="jobs")
    op.drop_index("ix_jobs_long", table_name="jobs")
    op.drop_index("ix_rollup_peaks_scope_hour", table_name="rollup_peaks")
    op.drop_table("rollup_peaks")
    op.drop_index("ix_rollup_hours_hour", table_name="rollup_hours")
    op.drop_table("rollup_hours")
