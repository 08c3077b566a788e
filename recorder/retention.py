"""`recorder prune`: delete old poll rows, keeping every poll the history still refers to.

Kept, whatever their age: failed polls (the record of outages); the polls a job's bounds
refer to (its first and last listing polls, and every poll with a transition or an
observation); the polls that end a gap and the successful poll before each (so `poll_gaps`,
`closed_across_gap` and coverage stay the same); the successful poll before each poll that
first listed a job (the missed-jobs estimate reads the gap between them); and each target's
latest successful poll (a restarted daemon continues from it). What goes is the record of
successful polls that changed nothing: they can no longer be listed or rebuilt one by one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Engine, delete, exists, func, or_, select

from recorder.models import (
    Job,
    Observation,
    Poll,
    Quarantine,
    Transition,
    latest_ok_id,
    latest_ok_per_target,
    succeeded,
)
from recorder.store import chunks

# Deleting in batches keeps each transaction short, so a running daemon is never held up long.
BATCH = 20_000


@dataclass(frozen=True, slots=True)
class Pruned:
    """What a prune removed and kept."""

    deleted: int
    kept_old: int


def _keepers(engine: Engine, cutoff: datetime) -> set[int]:
    """Old polls that must stay although nothing else refers to them: gap edges, latest ok."""
    keep: set[int] = set()
    with engine.connect() as conn:
        gap_polls = conn.execute(
            select(Poll.id, Poll.target_id).where(Poll.after_gap, Poll.sent_at < cutoff)
        ).all()
        for gap in gap_polls:
            keep.add(gap.id)
            before = conn.scalar(select(latest_ok_id(gap.target_id, before=gap.id)))
            if before is not None:
                keep.add(before)
        keep.update(conn.scalars(select(latest_ok_per_target().c.poll_id)))
    return keep


def prune(engine: Engine, cutoff: datetime) -> Pruned:
    """Delete the polls sent before `cutoff` that no job, transition, observation or gap needs."""
    keep = _keepers(engine, cutoff)
    deleted, after = 0, 0
    while True:
        with engine.begin() as conn:
            candidates = conn.scalars(
                select(Poll.id)
                .where(
                    Poll.sent_at < cutoff,
                    Poll.id > after,
                    succeeded(),
                    ~_referenced(),
                )
                .order_by(Poll.id)
                .limit(BATCH)
            ).all()
            if not candidates:
                break
            after = candidates[-1]
            doomed = [poll_id for poll_id in candidates if poll_id not in keep]
            if doomed:
                conn.execute(delete(Poll).where(Poll.id.in_(doomed)))
                deleted += len(doomed)
    with engine.connect() as conn:
        kept_old = conn.scalar(select(func.count()).select_from(Poll).where(Poll.sent_at < cutoff))
    return Pruned(deleted, int(kept_old or 0))


def _referenced() -> ColumnElement[bool]:
    """SQL: this poll is referred to by a job, a transition or an observation, or is the
    successful poll before one that first listed a job (recorder.missed reads their gap)."""
    later = Poll.alias()
    next_ok = (
        select(func.min(later.id))
        .where(later.target_id == Poll.target_id, later.id > Poll.id, succeeded(later))
        .correlate(Poll)
        .scalar_subquery()
    )
    return or_(
        exists().where(Transition.poll_id == Poll.id),
        exists().where(Observation.poll_id == Poll.id),
        exists().where(Job.first_poll_id == Poll.id),
        exists().where(Job.last_poll_id == Poll.id),
        exists().where(Job.first_poll_id == next_ok),
    )


def clear_quarantine(engine: Engine, ids: list[int]) -> int:
    """Delete these quarantined polls (their failed poll rows stay); returns how many went."""
    deleted = 0
    with engine.begin() as conn:
        for chunk in chunks(ids):
            deleted += conn.execute(delete(Quarantine).where(Quarantine.id.in_(chunk))).rowcount
    return deleted
