"""Smaller jobs: partial indexes of running and finished jobs, transitions keyed by job and poll

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 10:00:00

* ``ix_jobs_target_status (target_id, status)`` held an entry for every job, although only the
  running ones are ever looked up by it: it becomes ``ix_jobs_running (target_id) WHERE
  status = 'running'``.
* ``ix_jobs_status_type_duration (status, type, duration_s)`` serves the percentiles' seeks,
  which read finished jobs only: it becomes ``ix_jobs_finished_type_duration (type,
  duration_s) WHERE status = 'finished'``, and the queries on running jobs name
  ``ix_jobs_running`` (SQLite's INDEXED BY) rather than find them by this index's prefix.
* ``ix_observations_job_poll (job_id, poll_id)`` becomes ``ix_observations_job (job_id)``: a
  job has one observation or a few, and the latest at or before a poll is picked among them.
* ``transitions`` had a surrogate ``id`` that nothing refers to, and an index on ``(job_id,
  poll_id)``, which is unique (a poll changes a job's listing at most once): that pair becomes
  the primary key, and on SQLite the table is the key's own B-tree (``WITHOUT ROWID``).

No value is dropped but the surrogate ids of transitions; a downgrade numbers the transitions
anew, in the order of their polls.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RUNNING = "status = 'running'"
FINISHED = "status = 'finished'"
OLD_TRANSITIONS = "transitions_before_0008"


def _transitions(*, surrogate_id: bool) -> None:
    """Copy every transition into a new table: keyed by (job_id, poll_id), or (for the
    downgrade) by a surrogate id, as revision 0001 created it."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.drop_index("ix_transitions_poll", table_name="transitions")
    if not surrogate_id:
        op.drop_index("ix_transitions_job_poll", table_name="transitions")
    if postgresql:  # the key's index, named pk_transitions, would clash with the new table's
        op.drop_constraint("pk_transitions", "transitions", type_="primary")
    op.rename_table("transitions", OLD_TRANSITIONS)
    columns = [
        sa.Column("job_id", ID, nullable=False),
        sa.Column("poll_id", ID, nullable=False),
        sa.Column("kind", sa.String(length=12), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_transitions_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["poll_id"], ["polls.id"], name=op.f("fk_transitions_poll_id_polls")
        ),
    ]
    if surrogate_id:
        op.create_table(
            "transitions",
            sa.Column("id", ID, nullable=False),
            *columns,
            sa.PrimaryKeyConstraint("id", name=op.f("pk_transitions")),
        )
    else:
        op.create_table(
            "transitions",
            *columns,
            sa.PrimaryKeyConstraint("job_id", "poll_id", name=op.f("pk_transitions")),
            sqlite_with_rowid=False,
        )
    # In key order, so that the new key fills its pages; the surrogate ids in poll order.
    order = "poll_id, job_id" if surrogate_id else "job_id, poll_id"
    op.execute(
        f"INSERT INTO transitions (job_id, poll_id, kind) "
        f"SELECT job_id, poll_id, kind FROM {OLD_TRANSITIONS} ORDER BY {order}"
    )
    op.drop_table(OLD_TRANSITIONS)
    with op.batch_alter_table("transitions", schema=None) as batch_op:
        if surrogate_id:
            batch_op.create_index("ix_transitions_job_poll", ["job_id", "poll_id"], unique=False)
        batch_op.create_index("ix_transitions_poll", ["poll_id"], unique=False)


def upgrade() -> None:
    """Smaller jobs: partial indexes of jobs, transitions keyed by job and poll."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_target_status")
        batch_op.create_index(
            "ix_jobs_running",
            ["target_id"],
            unique=False,
            sqlite_where=sa.text(RUNNING),
            postgresql_where=sa.text(RUNNING),
        )
        batch_op.drop_index("ix_jobs_status_type_duration")
        batch_op.create_index(
            "ix_jobs_finished_type_duration",
            ["type", "duration_s"],
            unique=False,
            sqlite_where=sa.text(FINISHED),
            postgresql_where=sa.text(FINISHED),
        )
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index("ix_observations_job_poll")
        batch_op.create_index("ix_observations_job", ["job_id"], unique=False)
    _transitions(surrogate_id=False)


def downgrade() -> None:
    """Undo: smaller jobs: partial indexes of jobs, transitions keyed by job and poll."""
    _transitions(surrogate_id=True)
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index("ix_observations_job")
        batch_op.create_index("ix_observations_job_poll", ["job_id", "poll_id"], unique=False)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_finished_type_duration")
        batch_op.create_index(
            "ix_jobs_status_type_duration", ["status", "type", "duration_s"], unique=False
        )
        batch_op.drop_index("ix_jobs_running")
        batch_op.create_index("ix_jobs_target_status", ["target_id", "status"], unique=False)
