"""Missed jobs: a Horvitz-Thompson estimate of the jobs that ran unseen between two polls.

A job shorter than the spacing of the polls may start and end between two of them. Every job
that was seen *in covered time* (first listed by a successful poll that follows another with
no gap between them) stands for ``1 / p`` jobs, p being the probability that it was to be
counted, and the estimate is ``sum(1 / p) - seen``, never below 0 (docs/stats.md):

* A job at least as long as the gap it started in (its duration's lower bound plus the
  listing poll's latency) could not slip between the two polls: p = 1.
* A shorter one is *sampled by its start*: it is in the sample when it was listed within
  `MISSED_AGE_S` of its start, which a job whose start fell anywhere in the gap does with
  probability ``(MISSED_AGE_S + latency / 2) / gap``, whatever its duration.
* Any other seen job is not in the sample (p = 0): it stands for no job, but counts as seen.

Each seen job's share of the estimate, ``1 / p - 1`` (`contribution`), is fixed once its lower
bound is: the rollups sum it per hour of the jobs' starts, the reports add the few running and
edge-of-window jobs exactly, and the clamp at 0 is applied per group (`estimate`). The
functions here are pure; `contribution_sql` is the same definition in SQL.
"""

from __future__ import annotations

from recorder.dialect import Dialect
from recorder.models import latest_ok_sql

# The sampling age: a short job first listed less than this after its start stands for
# gap / (MISSED_AGE_S + latency / 2) jobs. Longer: less noise, but more undercounting of the
# jobs shorter than it; 2 s is 1/15 of a 30 s spacing.
MISSED_AGE_S = 2.0


def seen_probability(lower_s: float, age_s: float, gap_s: float, latency_s: float) -> float:
    """The probability that a job seen in covered time was to be counted (0: not sampled).

    `lower_s` is the job's duration lower bound, `age_s` its age when first listed (that poll's
    sent time less its start), `gap_s` that poll's spacing after the previous successful one,
    `latency_s` that poll's latency.
    """
    if gap_s <= 0 or lower_s + latency_s >= gap_s:
        return 1.0
    if age_s >= MISSED_AGE_S:
        return 0.0
    return min(1.0, (MISSED_AGE_S + latency_s / 2) / gap_s)


def contribution(lower_s: float, age_s: float, gap_s: float, latency_s: float) -> float:
    """A seen job's share of the estimate: the jobs it stands for, less itself."""
    p = seen_probability(lower_s, age_s, gap_s, latency_s)
    return (1.0 / p if p > 0 else 0.0) - 1.0


def estimate(total: float) -> float:
    """A group's estimate from the sum of its jobs' contributions: never below 0."""
    return max(0.0, total)


def contribution_sql(d: Dialect, lower: str, job: str = "j") -> str:
    """SQL: `contribution` of job `job`, 0 unless it was seen in covered time.

    `lower` is the SQL of its duration's lower bound. The query must join the polls ``f`` (the
    one that first listed the job) and ``prev`` (its target's previous successful poll, by
    `previous_poll_join`) with LEFT JOINs.
    """
    gap = f"({d.epoch('f.sent_at')} - {d.epoch('prev.sent_at')})"
    age = f"({d.epoch('f.sent_at')} - {d.epoch(f'{job}.start_at')})"
    sampled = f"({MISSED_AGE_S} + f.latency_s / 2)"
    return f"""(CASE WHEN prev.id IS NULL OR f.after_gap THEN 0.0
                WHEN {gap} <= 0 OR ({lower}) + f.latency_s >= {gap} THEN 0.0
                WHEN {age} >= {MISSED_AGE_S} THEN -1.0
                WHEN {sampled} >= {gap} THEN 0.0
                ELSE {gap} / {sampled} - 1.0 END)"""


def previous_poll_join(job: str = "j") -> str:
    """SQL: LEFT JOINs of the polls ``f`` and ``prev`` that `contribution_sql` reads."""
    return (
        f" LEFT JOIN polls f ON f.id = {job}.first_poll_id"
        f" LEFT JOIN polls prev ON prev.id = {latest_ok_sql(f'{job}.target_id', before='f.id')}"
    )
