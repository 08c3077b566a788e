"""Rollups: each hour's share of the missed-jobs estimate, and its duration histogram

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 23:00:00

* ``rollup_hours.missed``: the sum, over the finished jobs that started in the hour, of their
  shares of the missed-jobs estimate (``1 / p - 1``; recorder.missed, docs/stats.md).
* ``rollup_hours.bin_00`` .. ``bin_14``: the finished jobs that ended in the hour, per
  duration bin of ``recorder stats --histogram`` (recorder.models.HISTOGRAM_EDGES).

Existing databases get it by a rebuild of every rollup from the jobs they hold: this is the
migration that last changed the rollups, so it is the one that rebuilds them (0007 leaves them
to it).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BINS = tuple(f"bin_{index:02d}" for index in range(15))  # as recorder.models.BIN_COLUMNS


def upgrade() -> None:
    """Add rollup_hours.missed and the bins, and rebuild the rollups."""
    op.add_column(
        "rollup_hours", sa.Column("missed", sa.Double(), nullable=False, server_default="0")
    )
    for column in BINS:
        op.add_column(
            "rollup_hours", sa.Column(column, sa.Integer(), nullable=False, server_default="0")
        )
    # The recorder's own code (imported here, as 0007 did): the rollups as it computes them.
    from recorder import rollups

    rollups.rebuild(op.get_bind())


def downgrade() -> None:
    """Undo: drop rollup_hours.missed and the bins (the other rollups stay as they are)."""
    with op.batch_alter_table("rollup_hours") as batch:
        for column in ("missed", *BINS):
            batch.drop_column(column)
