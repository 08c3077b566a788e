"""Leases: one recording daemon per target

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 16:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Times: timestamptz on PostgreSQL, epoch seconds (REAL) on SQLite (recorder.models.UTCDateTime).
TIMESTAMP = sa.DateTime(timezone=True).with_variant(sa.Double(), "sqlite")

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Leases: one recording daemon per target."""
    op.create_table(
        "leases",
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("holder", sa.String(), nullable=False),
        sa.Column("acquired_at", TIMESTAMP, nullable=False),
        sa.Column("renewed_at", TIMESTAMP, nullable=False),
        sa.Column("ttl_s", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_leases_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("target_id", name=op.f("pk_leases")),
    )


def downgrade() -> None:
    """Undo: leases: one recording daemon per target."""
    op.drop_table("leases")
