"""Build a realistic finished history of N jobs, fast, on the recorder's own schema.

    python -m benchmarks.fill --db URL --jobs N [--days D]

Polls every 10 s over D days; jobs of two types (video about 90 s, image about 20 s, lognormal)
on five accounts, each seen by the polls around it: an `appeared` and a `vanished` transition,
one observation, and start and end bounds exactly as the inference would give them from the
polls. Rows go in through the recorder's models, in large batches.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, insert

from recorder import db
from recorder.models import Job, JobStatus, Observation, Poll, Target, Transition, TransitionKind

INTERVAL = 10.0
BATCH = 50_000
TYPES = (("video", 90.0, 0.6), ("image", 20.0, 0.5))
ACCOUNTS = tuple(f"account{k}@example.com" for k in range(5))


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def fill(
    engine: Engine, jobs: int, days: float, seed: int = 1, end: float | None = None
) -> dict[str, float]:
    """Insert `jobs` finished jobs over `days` days ending at `end`; return counts and seconds."""
    rng = random.Random(seed)
    end = end if end is not None else time.time()
    start = end - days * 86400
    n_polls = int(days * 86400 / INTERVAL)
    began = time.perf_counter()
    with engine.begin() as conn:
        target_id = conn.execute(
            insert(Target)
            .values(url=f"bench://fill/{seed}/{jobs}", created_at=_dt(start))
            .returning(Target.id)
        ).scalar_one()
        first_poll = None
        for chunk in _chunks(_polls(target_id, start, n_polls), BATCH):
            conn.execute(insert(Poll), chunk)
        first_poll = conn.exec_driver_sql(
            f"SELECT MIN(id) FROM polls WHERE target_id = {int(target_id)}"
        ).scalar_one()
    with engine.begin() as conn:
        job_rows = list(_jobs(rng, target_id, first_poll, start, n_polls, jobs))
        for chunk in _chunks(job_rows, BATCH):
            conn.execute(insert(Job), [row for row, _ in chunk])
        ids = (
            conn.exec_driver_sql(
                f"SELECT id FROM jobs WHERE target_id = {int(target_id)} ORDER BY id"
            )
            .scalars()
            .all()
        )
        transitions, observations = [], []
        for job_id, (_, (first, closing)) in zip(ids, job_rows, strict=True):
            transitions.append(
                {"job_id": job_id, "poll_id": first, "kind": TransitionKind.APPEARED}
            )
            transitions.append(
                {"job_id": job_id, "poll_id": closing, "kind": TransitionKind.VANISHED}
            )
            observations.append({"job_id": job_id, "poll_id": first, "type": None, "elapsed_s": 0})
        for chunk in _chunks(transitions, BATCH):
            conn.execute(insert(Transition), chunk)
        for chunk in _chunks(observations, BATCH):
            conn.execute(insert(Observation), chunk)
    return {"polls": n_polls, "jobs": jobs, "seconds": time.perf_counter() - began}


def _chunks(rows: Any, size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _polls(target_id: int, start: float, n: int) -> Iterator[dict[str, Any]]:
    for k in range(n):
        sent = start + k * INTERVAL
        yield {
            "target_id": target_id,
            "sent_at": _dt(sent),
            "received_at": _dt(sent + 0.05),
            "latency_s": 0.05,
            "outcome": "ok",
            "http_status": 200,
            "item_count": 3,
            "server_time": sent + 0.025,
            "after_gap": False,
        }


def _jobs(
    rng: random.Random, target_id: int, first_poll: int, start: float, n_polls: int, n: int
) -> Iterator[tuple[dict[str, Any], tuple[int, int]]]:
    for k in range(n):
        kind, mean, sigma = TYPES[0] if rng.random() < 0.6 else TYPES[1]
        duration = max(1.0, rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma))
        first = rng.randrange(1, n_polls - math.ceil(duration / INTERVAL) - 2)
        last = first + max(0, int(duration // INTERVAL))
        closing = last + 1
        t_first, t_last, t_close = (start + i * INTERVAL for i in (first, last, closing))
        start_at = t_first - rng.uniform(0, INTERVAL)  # as `elapsed` would place it
        end_at = (t_last + t_close + 0.05) / 2
        row = {
            "target_id": target_id,
            "api_id": f"user:1-pixverse:{ACCOUNTS[k % 5]}-{kind}:{k}",
            "type": kind,
            "account": ACCOUNTS[k % 5],
            "user_id": "1",
            "status": JobStatus.FINISHED,
            "first_poll_id": first_poll + first,
            "last_poll_id": first_poll + last,
            "start_at": _dt(start_at),
            "start_min": _dt(start_at - 0.5),
            "start_max": _dt(start_at + 0.5),
            "start_source": "elapsed",
            "end_at": _dt(end_at),
            "end_min": _dt(t_last),
            "end_max": _dt(t_close + 0.05),
            "duration_s": end_at - start_at,
            "duration_min_s": t_last - start_at - 0.5,
            "duration_max_s": t_close + 0.05 - start_at + 0.5,
            "closed_across_gap": False,
        }
        yield row, (first_poll + first, first_poll + closing)


def main() -> None:
    """Fill a database from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--days", type=float, default=30.0)
    args = parser.parse_args()
    engine = db.open_database(args.db)
    result = fill(engine, args.jobs, args.days)
    engine.dispose()
    print(f"filled {result['jobs']} jobs and {result['polls']} polls in {result['seconds']:.1f}s")


if __name__ == "__main__":
    main()
