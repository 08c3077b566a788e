"""Build a realistic finished history of N jobs on K targets, fast, on the recorder's own schema.

    python -m benchmarks.fill --db URL --jobs N [--targets K] [--days D] [--seed S] [--no-sync]

Each target is polled every 10 s over the same D days (the targets' polls a fraction of the
interval apart and interleaved, as K recorders writing at once leave them), and the jobs are
shared out among the targets. Each target's jobs are written in the order the recorder writes
them, by the poll that first saw them, so their rows lie in time order as a recorder's do (a
fill in random order would make every read of a time range a random read of the whole file).
Jobs of two types (video about 90 s, image about 20 s, lognormal) on five accounts, each seen
by the polls around it: an `appeared` and a `vanished` transition, one observation, and start
and end bounds exactly as the inference would give them from the polls.

Fast: polls and jobs go in through the database driver with their ids given (executemany on
SQLite, binary COPY on PostgreSQL), the transitions and observations are derived from the jobs by
INSERT ... SELECT, and SQLite gets a large page cache for the fill. With one target the jobs
are those that the earlier fill through the models wrote (times on SQLite to the microsecond
those went through a datetime), in time order and numbered in it.
After the fill, the rollup tables are rebuilt when the recorder has them (`rebuild_rollups`).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import math
import random
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, insert, text

from recorder import db
from recorder.models import JobStatus, Target, TransitionKind
from recorder.snapshot import Outcome
from recorder.urls import GENERIC, same_target_key

INTERVAL = 10.0
TYPES = (("video", 90.0, 0.6), ("image", 20.0, 0.5))
ACCOUNTS = tuple(f"account{k}@example.com" for k in range(5))
# Bump when the rows a fill writes change in meaning: run.py then refills its kept databases.
FILL_VERSION = 3  # 3: jobs in time order
# SQLite's page cache during the fill, KiB (the default is 2 MiB): the jobs' seven indexes are
# inserted into in random order, and a cache that holds them saves rereading their pages.
SQLITE_CACHE_KIB = 1 << 20

POLL_COLUMNS = (
    "id",
    "target_id",
    "sent_at",
    "received_at",
    "latency_s",
    "outcome",
    "http_status",
    "item_count",
    "server_time",
    "after_gap",
)
JOB_COLUMNS = (
    "id",
    "target_id",
    "api_id",
    "type",
    "account",
    "user_id",
    "status",
    "first_poll_id",
    "last_poll_id",
    "start_at",
    "start_min",
    "start_max",
    "start_source",
    "end_at",
    "end_min",
    "end_max",
    "duration_s",
    "duration_min_s",
    "duration_max_s",
    "closed_across_gap",
)
_FIRST_POLL = JOB_COLUMNS.index("first_poll_id")
# Columns of type UTCDateTime: epoch seconds on SQLite (what the type stores), datetimes for
# PostgreSQL's timestamptz.
TIME_COLUMNS = frozenset(
    ("sent_at", "received_at", "start_at", "start_min", "start_max", "end_at", "end_min", "end_max")
)


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


def fill(
    engine: Engine,
    jobs: int,
    days: float,
    seed: int = 1,
    end: float | None = None,
    *,
    targets: int = 1,
    durable: bool = True,
) -> dict[str, Any]:
    """Insert `jobs` finished jobs on `targets` new targets over `days` days ending at `end`.

    `durable=False` (a file that only the benchmark uses) turns SQLite's syncs off during the
    fill: a crash may then leave the file corrupt. Returns the counts and the seconds taken,
    in total and per step.
    """
    end = end if end is not None else time.time()
    start = end - days * 86400
    n_polls = int(days * 86400 / INTERVAL)
    began = time.perf_counter()
    steps: dict[str, float] = {}
    with engine.connect() as conn, _fast(conn, durable=durable):
        with conn.begin():
            target_ids = [
                conn.execute(
                    insert(Target)
                    .values(created_at=_dt(start), **_target(seed, jobs, targets, t))
                    .returning(Target.id)
                ).scalar_one()
                for t in range(targets)
            ]
            first_poll = _next_id(conn, "polls")
            _load(conn, "polls", POLL_COLUMNS, _polls(first_poll, target_ids, start, n_polls))
            next_job = _next_id(conn, "jobs")
        steps["polls_s"] = time.perf_counter() - began
        for t, target_id in enumerate(target_ids):
            n = jobs // targets + (1 if t < jobs % targets else 0)
            rng = random.Random(seed if t == 0 else f"{seed}/{t}")
            lo, hi = next_job, next_job + n - 1
            with conn.begin():
                began_step = time.perf_counter()
                # Target t's i-th poll: id first_poll + t + i * targets, made at its start + 10 i.
                polls = (first_poll + t, targets, start + t * INTERVAL / targets, n_polls)
                _load(
                    conn, "jobs", JOB_COLUMNS, _in_time_order(_jobs(rng, lo, target_id, polls, n))
                )
                steps["jobs_s"] = steps.get("jobs_s", 0.0) + time.perf_counter() - began_step
                began_step = time.perf_counter()
                _link(conn, lo, hi, targets)
                steps["links_s"] = steps.get("links_s", 0.0) + time.perf_counter() - began_step
            next_job += n
        if conn.dialect.name == "postgresql":
            with conn.begin():
                _catch_up_sequences(conn)
    rebuilt = rebuild_rollups(engine)
    return {
        "polls": n_polls * targets,
        "jobs": jobs,
        "targets": targets,
        "seconds": time.perf_counter() - began,
        **{k: round(v, 2) for k, v in steps.items()},
        "rollups_s": None if rebuilt is None else round(rebuilt, 2),  # None: no rollups yet
    }


def settle(engine: Engine) -> float:
    """After a big fill, leave the database as a long-running one would be; return seconds.

    SQLite: the WAL checkpointed into the file and truncated (no statistics: the recorder's
    SQLite databases have none). PostgreSQL: VACUUM ANALYZE, as autovacuum would have done by
    the time a report runs (statistics, and the visibility map for index-only scans).
    """
    began = time.perf_counter()
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:  # on the driver's connection: outside any transaction
            raw: Any = conn.connection.driver_connection
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE)")
    return time.perf_counter() - began


# The rollup tables (issue 10, item 2) are being added in another branch: while this tree has
# no recorder.rollups, there is nothing to rebuild. Looked up by name rather than imported, so
# that an ImportError inside the module, once it exists, is not mistaken for its absence.
ROLLUPS_MODULE = "recorder.rollups"


def rollups_stamp() -> str | None:
    """What a rebuild of the rollups depends on besides the jobs: the schema revision and the
    rollups module's source (a change of either calls for a rebuild); None without rollups."""
    spec = importlib.util.find_spec(ROLLUPS_MODULE)
    if spec is None or spec.origin is None:
        return None
    source = hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()[:12]
    return f"{db.HEAD_REVISION}:{source}"


def rebuild_rollups(engine: Engine) -> float | None:
    """Rebuild the rollup tables from the jobs, if the recorder has them; return seconds."""
    if importlib.util.find_spec(ROLLUPS_MODULE) is None:
        return None
    rollups = importlib.import_module(ROLLUPS_MODULE)
    began = time.perf_counter()
    with engine.begin() as conn:
        rollups.rebuild(conn)
    return time.perf_counter() - began


def _target(seed: int, jobs: int, targets: int, t: int) -> dict[str, str]:
    """A filled target's URL, its identity, its name (unique as the URL is) and its service."""
    url = f"bench://fill/{seed}/{jobs}" + (f"/{t}" if targets > 1 else "")
    name = url.removeprefix("bench://")
    return {"url": url, "url_key": same_target_key(url), "name": name, "service": GENERIC}


@contextmanager
def _fast(conn: Connection, *, durable: bool) -> Iterator[None]:
    """SQLite: a large page cache, and without `durable` no syncs, for the fill only."""
    if conn.dialect.name != "sqlite":
        yield
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    cache = raw.execute("PRAGMA cache_size").fetchone()[0]
    synchronous = raw.execute("PRAGMA synchronous").fetchone()[0]
    raw.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    if not durable:
        raw.execute("PRAGMA synchronous=OFF")
    try:
        yield
    finally:  # the connection goes back to the engine's pool as it came
        raw.execute(f"PRAGMA cache_size={int(cache)}")
        raw.execute(f"PRAGMA synchronous={int(synchronous)}")


def _next_id(conn: Connection, table: str) -> int:
    return int(conn.exec_driver_sql(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}").scalar_one())


def _load(
    conn: Connection, table: str, columns: Sequence[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Insert `rows` (epoch seconds in TIME_COLUMNS) through the driver, in the transaction."""
    raw: Any = conn.connection.driver_connection
    names = ", ".join(columns)
    if conn.dialect.name == "sqlite":
        marks = ", ".join("?" * len(columns))
        raw.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
        return
    times = [k for k, name in enumerate(columns) if name in TIME_COLUMNS]
    # Binary COPY (a third of the client's time of text COPY) needs each column's exact type.
    types: dict[str, int] = dict(
        conn.exec_driver_sql(
            "SELECT attname, atttypid FROM pg_attribute "
            f"WHERE attrelid = '{table}'::regclass AND attnum > 0 AND NOT attisdropped"
        ).all()
    )
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types([int(types[name]) for name in columns])
        for row in rows:
            values = list(row)
            for k in times:
                values[k] = _dt(values[k])
            copy.write_row(values)


def _link(conn: Connection, lo: int, hi: int, targets: int) -> None:
    """The transitions and the observation of jobs `lo` to `hi`, from their rows: appeared at
    the first poll, vanished at the target's poll after the last one, seen at the first."""
    bounds = {"lo": lo, "hi": hi}
    if conn.dialect.name == "postgresql":  # sorted in memory rather than in files
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    conn.execute(
        text(
            "INSERT INTO transitions (job_id, poll_id, kind) "
            "SELECT job_id, poll_id, kind FROM ("
            " SELECT id AS job_id, first_poll_id AS poll_id, :appeared AS kind"
            " FROM jobs WHERE id BETWEEN :lo AND :hi"
            " UNION ALL"
            " SELECT id, last_poll_id + :step, :vanished FROM jobs WHERE id BETWEEN :lo AND :hi"
            ") AS t ORDER BY job_id, poll_id"
        ),
        bounds
        | {
            "step": targets,
            "appeared": TransitionKind.APPEARED.value,
            "vanished": TransitionKind.VANISHED.value,
        },
    )
    conn.execute(
        text(
            "INSERT INTO observations (job_id, poll_id, type, elapsed_s) "
            "SELECT id, first_poll_id, NULL, 0 FROM jobs WHERE id BETWEEN :lo AND :hi ORDER BY id"
        ),
        bounds,
    )


def _catch_up_sequences(conn: Connection) -> None:
    """PostgreSQL: the id sequences past the ids given explicitly."""
    for table in ("polls", "jobs"):
        conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), MAX(id)) FROM {table} "
            "HAVING MAX(id) IS NOT NULL"
        )


def _polls(
    first_id: int, target_ids: Sequence[int], start: float, n: int
) -> Iterator[tuple[Any, ...]]:
    """The targets' polls, in time order: target t's i-th one has id first_id + i * K + t."""
    k = len(target_ids)
    for i in range(n):
        for t, target_id in enumerate(target_ids):
            sent = start + t * INTERVAL / k + i * INTERVAL
            yield (
                first_id + i * k + t,
                target_id,
                sent,
                sent + 0.05,
                0.05,
                Outcome.OK.value,
                200,
                3,
                sent + 0.025,
                False,
            )


def _in_time_order(rows: Iterable[tuple[Any, ...]]) -> Iterator[tuple[Any, ...]]:
    """Jobs sorted by the poll that first saw them, renumbered from the first one's id."""
    ordered = sorted(rows, key=lambda row: (row[_FIRST_POLL], row[0]))
    if not ordered:
        return
    first_id = min(row[0] for row in ordered)
    for k, row in enumerate(ordered):
        yield (first_id + k, *row[1:])


def _jobs(
    rng: random.Random,
    first_id: int,
    target_id: int,
    polls: tuple[int, int, float, int],
    n: int,
) -> Iterator[tuple[Any, ...]]:
    """`n` jobs of one target, whose `polls` are (the first's id, the step between ids, the
    first's time, how many): its i-th poll has id first + i * step and was made at time + 10 i."""
    first_poll, step, start, n_polls = polls
    for k in range(n):
        kind, mean, sigma = TYPES[0] if rng.random() < 0.6 else TYPES[1]
        duration = max(1.0, rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma))
        first = rng.randrange(1, n_polls - math.ceil(duration / INTERVAL) - 2)
        last = first + max(0, int(duration // INTERVAL))
        closing = last + 1
        t_first, t_last, t_close = (start + i * INTERVAL for i in (first, last, closing))
        start_at = t_first - rng.uniform(0, INTERVAL)  # as `elapsed` would place it
        end_at = (t_last + t_close + 0.05) / 2
        account = ACCOUNTS[k % 5]
        yield (
            first_id + k,
            target_id,
            f"user:1-pixverse:{account}-{kind}:{k}",
            kind,
            account,
            "1",
            JobStatus.FINISHED.value,
            first_poll + first * step,
            first_poll + last * step,
            start_at,
            start_at - 0.5,
            start_at + 0.5,
            "elapsed",
            end_at,
            t_last,
            t_close + 0.05,
            end_at - start_at,
            t_last - start_at - 0.5,
            t_close + 0.05 - start_at + 0.5,
            False,
        )


def main() -> None:
    """Fill a database from the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--targets", type=int, default=1)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-sync",
        action="store_true",
        help="SQLite: no syncs during the fill (only for a scratch file: a crash may corrupt it)",
    )
    args = parser.parse_args()
    engine = db.open_database(args.db)
    result = fill(
        engine, args.jobs, args.days, args.seed, targets=args.targets, durable=not args.no_sync
    )
    settled = settle(engine)
    engine.dispose()
    print(
        f"filled {result['jobs']} jobs on {result['targets']} targets and {result['polls']} "
        f"polls in {result['seconds']:.1f} s (and {settled:.1f} s to settle)"
    )


if __name__ == "__main__":
    main()
