"""Indexes for pruning old polls and for reports over long histories

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Indexes for pruning old polls and for reports over long histories."""
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.create_index("ix_observations_poll", ["poll_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_first_poll", ["first_poll_id"], unique=False)
        batch_op.create_index("ix_jobs_last_poll", ["last_poll_id"], unique=False)
        batch_op.create_index(
            "ix_jobs_status_type_duration", ["status", "type", "duration_s"], unique=False
        )


def downgrade() -> None:
    """Undo: indexes for pruning old polls and for reports over long histories."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_status_type_duration")
        batch_op.drop_index("ix_jobs_last_poll")
        batch_op.drop_index("ix_jobs_first_poll")
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index("ix_observations_poll")
