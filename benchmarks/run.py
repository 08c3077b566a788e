"""Run the benchmarks and print a table; write the results as JSON.

    python -m benchmarks.run [--db-dir DIR] [--postgres URL] [--size tiny|full] [--out FILE]

`tiny` (what CI runs, to keep the benchmarks working) takes seconds; `full` takes minutes and
produces the figures in docs/performance.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, func, select, text

from benchmarks.fill import fill
from recorder import db, readonly, reports, stats
from recorder.models import Base
from recorder.output import render
from recorder.parse import normalize_items
from recorder.pipeline import Pipeline
from recorder.retention import prune
from recorder.simulator import Account, JobKind, SimConfig, Simulator, format_started
from recorder.snapshot import PollResult
from recorder.store import Store

SIZES = {
    "tiny": {
        "in_flight": (10, 100),
        "fine_in_flight": (10, 1_000),
        "polls": 5,
        "jobs": (2_000,),
        "days": 2,
        "daemon_s": 5,
        "prune_days": 2,
        "startup_runs": 3,
    },
    "full": {
        "in_flight": (10, 1_000, 10_000),
        "fine_in_flight": (10, 1_000, 10_000),
        "polls": 50,
        "jobs": (1_000_000,),
        "days": 30,
        "daemon_s": 300,
        "prune_days": 1200,
        "startup_runs": 10,
    },
}
PAGE = 4096  # SQLite's default page size
BASELINE = (
    "SELECT type, count(*), avg(duration_s) FROM job_history "
    "WHERE status = 'finished' GROUP BY type"
)


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    """The best wall time of `repeat` runs, seconds."""
    best = float("inf")
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - began)
    return best


def rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return sum(
            conn.scalar(select(func.count()).select_from(t)) or 0
            for t in Base.metadata.tables.values()
        )


def size_bytes(engine: Engine) -> int:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return int(
                conn.exec_driver_sql("PRAGMA page_count").scalar()
                * conn.exec_driver_sql("PRAGMA page_size").scalar()
            )
        return int(conn.execute(text("SELECT pg_database_size(current_database())")).scalar() or 0)


def listing(
    n: int, now: float, vanish: int = 0, offset: int = 0, *, fine: bool = False
) -> PollResult:
    """A poll sent at `now` that lists `n` jobs (from number `offset` on), started 10 ms apart.

    The server's clock is ours, and it takes the list when the poll is sent. With `fine`, its
    clock is finer than the millisecond that `started` shows: job k started a fraction of a
    millisecond after its millisecond (`started` shows it rounded, `elapsed` is truncated
    from the exact age), and the list is taken 3.7 ms after the poll is sent.
    """
    listed_at = now + (0.0037 if fine else 0.0)
    items = []
    for k in range(offset, offset + n):
        fraction = ((k * 7919) % 10007) / 1e6 if fine else 0.0  # 0 to 10 ms, in microseconds
        items.append(
            {
                "id": f"user:1-pixverse:a{k % 5}@example.com-video:{k}",
                "type": "video",
                "started": format_started(1_700_000_000.0 + k * 0.01 + fraction),
                "elapsed": _elapsed(listed_at - 1_700_000_000.0 - k * 0.01 - fraction),
            }
        )
    return PollResult(now, now + 0.01, 200, normalize_items(items[vanish:]))


def _elapsed(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 60:02d}:{whole % 60:02d}"


def _ingest_engine(url: str) -> tuple[Engine, Path | None]:
    """A database for an ingest benchmark, and its WAL file on SQLite (else None)."""
    engine = db.open_database(url)
    if engine.dialect.name != "sqlite":
        return engine, None
    # Pages written per poll, read off the WAL: no checkpoint may rewind it meanwhile.
    engine.dispose()
    event.listen(engine, "connect", lambda c, _r: c.execute("PRAGMA wal_autocheckpoint=0"))
    return engine, Path(str(engine.url.database) + "-wal")


def _poll_costs(
    engine: Engine, wal: Path | None, pipeline: Pipeline, results: Iterable[PollResult]
) -> dict[str, Any]:
    """Time, rows and pages (SQLite) of recording each of `results`: medians, and the worst."""
    times, written, pages = [], [], []
    for result in results:
        before_rows = rows(engine)
        before_wal = wal.stat().st_size if wal and wal.exists() else 0
        began = time.perf_counter()
        pipeline.record(result)
        times.append(time.perf_counter() - began)
        written.append(rows(engine) - before_rows)
        if wal is not None:
            pages.append((wal.stat().st_size - before_wal) / (PAGE + 24))
    return {
        "ms_per_poll": round(statistics.median(times) * 1000, 2),
        "ms_per_poll_max": round(max(times) * 1000, 2),
        "rows_per_poll": statistics.median(written),
        "rows_per_poll_max": max(written),
        "pages_per_poll": statistics.median(pages) if pages else None,
    }


def bench_ingest(url: str, n: int, polls: int) -> dict[str, Any]:
    """Per poll with `n` jobs in flight: no change, and 1% of the jobs changing."""
    engine, wal = _ingest_engine(url)
    store = Store(engine)
    now = 1_700_100_000.0
    pipeline = Pipeline(store, f"bench://ingest/{n}", lambda: listing(n, now), gap_s=60.0)
    pipeline.poll_once()
    results: dict[str, Any] = {"in_flight": n}

    def polled(churn: int) -> Iterator[PollResult]:
        nonlocal now
        for k in range(polls):
            now += 10.0
            yield listing(n, now, offset=(k + 1) * churn if churn else 0)

    for label, churn in (("no_change", 0), ("one_percent", max(1, n // 100))):
        results[label] = _poll_costs(engine, wal, pipeline, polled(churn))
        if churn:
            # The next listings continue from the shifted window.
            pipeline.record(listing(n, now + 5.0, offset=polls * churn))
    engine.dispose()
    return results


def bench_ingest_fine_clock(url: str, n: int, polls: int) -> dict[str, Any]:
    """Per poll with `n` jobs in flight and no change, from an upstream whose clock is finer
    than the millisecond `started` shows (`listing`'s `fine`), polled every 10 s and up to
    50 ms more, as a daemon's timer drifts: each job's age crosses its second at another
    instant of every poll, and sometimes within a millisecond of the server time."""
    engine, wal = _ingest_engine(url)
    store = Store(engine)
    now = 1_700_100_000.0
    pipeline = Pipeline(store, f"bench://fine/{n}", lambda: listing(n, now, fine=True), gap_s=60.0)
    pipeline.poll_once()
    drift = random.Random(n)

    def polled() -> Iterator[PollResult]:
        nonlocal now
        for _ in range(polls):
            now += 10.0 + drift.uniform(0.0, 0.05)
            yield listing(n, now, fine=True)

    results = {"in_flight": n, "no_change": _poll_costs(engine, wal, pipeline, polled())}
    engine.dispose()
    return results


def bench_reports(url: str, jobs: int, days: int) -> dict[str, Any]:
    engine = db.open_database(url)
    end = time.time()
    filled = fill(engine, jobs, days, end=end)
    now = datetime.now(UTC)
    whole = (now - timedelta(days=days + 1), now)
    day = (now - timedelta(hours=24), now)
    results: dict[str, Any] = {"jobs": jobs, "fill_s": round(filled["seconds"], 1), "windows": {}}
    ro = readonly.readonly_engine(engine)

    def baseline(window: tuple[datetime, datetime]) -> None:
        where = "" if window is whole else f" AND ended_at >= '{window[0]:%Y-%m-%dT%H:%M:%S}'"
        sql = BASELINE.replace(" GROUP BY", where + " GROUP BY")
        with readonly.query(ro, sql) as (_, result_rows):
            list(result_rows)

    def report(window: tuple[datetime, datetime], by: tuple[str, ...]) -> None:
        stats.compute(engine, stats.StatsQuery(window[0], window[1], now, by))

    for name, window in (("whole", whole), ("24h", day)):
        figures = {
            "baseline_s": timed(lambda w=window: baseline(w)),  # type: ignore[misc]
            "stats_by_type_s": timed(lambda w=window: report(w, ("type",))),  # type: ignore[misc]
            "stats_by_day_s": timed(lambda w=window: report(w, ("day",))),  # type: ignore[misc]
        }
        figures["ratio_by_type"] = round(figures["stats_by_type_s"] / figures["baseline_s"], 2)
        results["windows"][name] = {k: round(v, 4) for k, v in figures.items()}
    query = reports.JobQuery(since=now - timedelta(hours=1), until=now)
    results["jobs_since_1h_s"] = round(
        timed(lambda: render(reports.jobs(engine, query), "json", io.StringIO())), 4
    )
    engine.dispose()
    ro.dispose()
    return results


def bench_storage(url: str) -> dict[str, Any]:
    """Bytes a no-change poll and a job add, measured on a database of their own."""
    engine = db.open_database(url)
    empty = size_bytes(engine)
    fill(engine, 0, 5)  # 43,200 polls and no job
    with_polls = size_bytes(engine)
    fill(engine, 50_000, 1, seed=2)  # and 50,000 jobs (with 8,640 polls)
    with_jobs = size_bytes(engine)
    engine.dispose()
    per_poll = (with_polls - empty) / 43_200
    return {
        "bytes_per_poll": round(per_poll, 1),
        "bytes_per_job": round((with_jobs - with_polls - 8_640 * per_poll) / 50_000, 1),
    }


def bench_daemon(url: str, seconds: float) -> dict[str, Any]:
    """CPU time and RSS of `recorder run` polling 1,000 jobs in flight every second."""
    accounts = tuple(Account(f"a{k}@example.com", "1", 100) for k in range(12))
    config = SimConfig(
        seed=3,
        token="bench",
        kinds=(JobKind("video", 20.0, 3000.0),),
        accounts=accounts,
        initial_jobs=1000,
    )
    with Simulator(config) as sim:
        command = [
            sys.executable,
            "-m",
            "recorder",
            "--db",
            url,
            "run",
            "--url",
            sim.url,
            "--interval",
            "1",
        ]
        process = subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": "bench"}, stderr=subprocess.DEVNULL
        )
        rss = []
        began = time.monotonic()
        while time.monotonic() - began < seconds:
            time.sleep(1.0)
            status = Path(f"/proc/{process.pid}/status").read_text()
            line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
            rss.append(int(line.split()[1]))
        stat = Path(f"/proc/{process.pid}/stat").read_text().split()
        cpu = (int(stat[13]) + int(stat[14])) / os.sysconf("SC_CLK_TCK")
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    settled = rss[len(rss) // 3 :]
    return {
        "seconds": seconds,
        "cpu_s": round(cpu, 2),
        "cpu_share": round(cpu / seconds, 4),
        "rss_mib_start": round(settled[0] / 1024, 1),
        "rss_mib_end": round(rss[-1] / 1024, 1),
        "rss_mib_peak": round(max(rss) / 1024, 1),
    }


def bench_prune(url: str, days: int) -> dict[str, Any]:
    """`recorder prune --polls-older-than` half the history, on a history of mostly idle polls."""
    engine = db.open_database(url)
    filled = fill(engine, 1_000, days)
    began = time.perf_counter()
    result = prune(engine, datetime.now(UTC) - timedelta(days=days / 2))
    took = time.perf_counter() - began
    engine.dispose()
    return {
        "polls": filled["polls"],
        "deleted": result.deleted,
        "kept_old": result.kept_old,
        "seconds": round(took, 1),
    }


def bench_startup(url: str, runs: int) -> dict[str, Any]:
    """A command's fixed cost: the best wall time of `runs` fresh `python -m recorder` processes.

    `python` alone is the interpreter's own start-up, included in every other figure; the
    reports run on a small recorded database (at the newest schema), so their queries are cheap
    and what remains is start-up: imports, opening the database, checking its schema.
    """
    engine = db.open_database(url)
    fill(engine, 1_000, 1)
    engine.dispose()
    recorder = [sys.executable, "-m", "recorder"]
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "help": [*recorder, "--help"],
        "jobs_limit_1": [*recorder, "--db", url, "jobs", "--limit", "1", "--format", "json"],
        "stats_24h": [*recorder, "--db", url, "stats", "--format", "json"],
    }
    env = {k: v for k, v in os.environ.items() if k != "RECORDER_DB"}

    def run(command: list[str]) -> None:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)

    return {"runs": runs} | {
        f"{name}_s": round(timed(lambda c=command: run(c), runs), 3)  # type: ignore[misc]
        for name, command in commands.items()
    }


def main() -> None:
    """Run everything for one size on SQLite (and PostgreSQL when given), print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--postgres", help="a database URL to run the database benchmarks on too")
    parser.add_argument("--out", default="benchmark-results.json")
    args = parser.parse_args()
    size = SIZES[args.size]
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        "size": args.size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        results["startup"] = bench_startup(f"sqlite:///{tmp}/startup.db", size["startup_runs"])
        print("startup", json.dumps(results["startup"]), flush=True)
        backends = {"sqlite": lambda name: f"sqlite:///{tmp}/{name}.db"}
        if args.postgres:
            backends["postgresql"] = lambda name: args.postgres
        for backend, url_for in backends.items():
            out: dict[str, Any] = {}
            out["ingest"] = [
                bench_ingest(url_for(f"ingest{n}"), n, size["polls"]) for n in size["in_flight"]
            ]
            print(backend, "ingest", json.dumps(out["ingest"]), flush=True)
            out["ingest_fine_clock"] = [
                bench_ingest_fine_clock(url_for(f"fine{n}"), n, size["polls"])
                for n in size["fine_in_flight"]
            ]
            print(backend, "ingest_fine_clock", json.dumps(out["ingest_fine_clock"]), flush=True)
            out["reports"] = [
                bench_reports(url_for(f"reports{n}"), n, size["days"]) for n in size["jobs"]
            ]
            print(backend, "reports", json.dumps(out["reports"]), flush=True)
            out["storage"] = bench_storage(url_for("storage"))
            print(backend, "storage", json.dumps(out["storage"]), flush=True)
            if backend == "sqlite":
                out["prune"] = bench_prune(url_for("prune"), size["prune_days"])
                print(backend, "prune", json.dumps(out["prune"]), flush=True)
                out["daemon"] = bench_daemon(url_for("daemon"), size["daemon_s"])
                print(backend, "daemon", json.dumps(out["daemon"]), flush=True)
            results[backend] = out
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


if __name__ == "__main__":
    main()
