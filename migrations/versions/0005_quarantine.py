"""Quarantine: polls the database would not take, kept whole

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 14:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Times: timestamptz on PostgreSQL, epoch seconds (REAL) on SQLite (recorder.models.UTCDateTime).
TIMESTAMP = sa.DateTime(timezone=True).with_variant(sa.Double(), "sqlite")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Quarantine: polls the database would not take, kept whole."""
    op.create_table(
        "quarantine",
        sa.Column("id", ID, nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("poll_id", ID, nullable=False),
        sa.Column("set_aside_at", TIMESTAMP, nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_quarantine_target_id_targets")
        ),
        sa.ForeignKeyConstraint(
            ["poll_id"], ["polls.id"], name=op.f("fk_quarantine_poll_id_polls")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantine")),
    )
    op.create_index("ix_quarantine_target", "quarantine", ["target_id"], unique=False)


def downgrade() -> None:
    """Undo: quarantine: polls the database would not take, kept whole."""
    op.drop_index("ix_quarantine_target", table_name="quarantine")
    op.drop_table("quarantine")
