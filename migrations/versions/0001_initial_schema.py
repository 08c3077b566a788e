"""Initial schema: targets, polls, jobs, transitions, observations

Revision ID: 0001
Revises:
Create Date: 2026-11-29 15:44:17.211439
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


# Times: timestamptz on PostgreSQL, epoch seconds (REAL) on SQLite (recorder.models.UTCDateTime).
TIMESTAMP = sa.DateTime(timezone=True).with_variant(sa.Double(), "sqlite")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Initial schema: targets, polls, jobs, transitions, observations."""
    op.create_table(
        "targets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_targets")),
        sa.UniqueConstraint("url", name=op.f("uq_targets_url")),
    )
    op.create_table(
        "polls",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("sent_at", TIMESTAMP, nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.Column("latency_s", sa.Double(), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("http_status", sa.SmallInteger(), nullable=True),
        sa.Column("item_count", sa.Integer(), nullable=True),
        sa.Column("dropped_values", sa.Integer(), nullable=True),
        sa.Column("server_time", sa.Double(), nullable=True),
        sa.Column("after_gap", sa.Boolean(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_polls_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_polls")),
    )
    with op.batch_alter_table("polls", schema=None) as batch_op:
        batch_op.create_index(
            "ix_polls_target_outcome_id", ["target_id", "outcome", "id"], unique=False
        )
        batch_op.create_index("ix_polls_target_sent", ["target_id", "sent_at"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("api_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("account", sa.String(), nullable=True),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("reply_url", sa.Text(), nullable=True),
        sa.Column("reply_ref", sa.Text(), nullable=True),
        sa.Column("started_raw", sa.String(), nullable=True),
        sa.Column("elapsed_origin", sa.Double(), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column(
            "first_poll_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "last_poll_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("start_at", TIMESTAMP, nullable=False),
        sa.Column("start_min", TIMESTAMP, nullable=True),
        sa.Column("start_max", TIMESTAMP, nullable=True),
        sa.Column("start_source", sa.String(length=8), nullable=False),
        sa.Column("end_at", TIMESTAMP, nullable=True),
        sa.Column("end_min", TIMESTAMP, nullable=True),
        sa.Column("end_max", TIMESTAMP, nullable=True),
        sa.Column("duration_s", sa.Double(), nullable=True),
        sa.Column("duration_min_s", sa.Double(), nullable=True),
        sa.Column("duration_max_s", sa.Double(), nullable=True),
        sa.Column("closed_across_gap", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["first_poll_id"], ["polls.id"], name=op.f("fk_jobs_first_poll_id_polls")
        ),
        sa.ForeignKeyConstraint(
            ["last_poll_id"], ["polls.id"], name=op.f("fk_jobs_last_poll_id_polls")
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["targets.id"], name=op.f("fk_jobs_target_id_targets")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("target_id", "api_id", name="uq_jobs_target_api_id"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_end_at", ["end_at"], unique=False)
        batch_op.create_index("ix_jobs_start_at", ["start_at"], unique=False)
        batch_op.create_index("ix_jobs_target_status", ["target_id", "status"], unique=False)

    op.create_table(
        "observations",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("poll_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("type", sa.String(), nullable=True),
        sa.Column("started_raw", sa.String(), nullable=True),
        sa.Column("reply_url", sa.Text(), nullable=True),
        sa.Column("reply_ref", sa.Text(), nullable=True),
        sa.Column("elapsed_s", sa.Integer(), nullable=True),
        sa.Column("elapsed_origin", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_observations_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["poll_id"], ["polls.id"], name=op.f("fk_observations_poll_id_polls")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_observations")),
    )
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.create_index("ix_observations_job_poll", ["job_id", "poll_id"], unique=False)

    op.create_table(
        "transitions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("job_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("poll_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_transitions_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["poll_id"], ["polls.id"], name=op.f("fk_transitions_poll_id_polls")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transitions")),
    )
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.create_index("ix_transitions_job_poll", ["job_id", "poll_id"], unique=False)
        batch_op.create_index("ix_transitions_poll", ["poll_id"], unique=False)


def downgrade() -> None:
    """Undo: Initial schema: targets, polls, jobs, transitions, observations."""
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        batch_op.drop_index("ix_transitions_poll")
        batch_op.drop_index("ix_transitions_job_poll")

    op.drop_table("transitions")
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index("ix_observations_job_poll")

    op.drop_table("observations")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_target_status")
        batch_op.drop_index("ix_jobs_start_at")
        batch_op.drop_index("ix_jobs_end_at")

    op.drop_table("jobs")
    with op.batch_alter_table("polls", schema=None) as batch_op:
        batch_op.drop_index("ix_polls_target_sent")
        batch_op.drop_index("ix_polls_target_outcome_id")

    op.drop_table("polls")
    op.drop_table("targets")
