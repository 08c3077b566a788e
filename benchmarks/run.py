"""Run the benchmarks and print a table; write the results as JSON.

    python -m benchmarks.run [--size tiny|full] [--only SECTION,...] [--jobs N] [--targets K]
                             [--days D] [--repeat R] [--db-dir DIR] [--postgres URL] [--out FILE]

`tiny` (what CI runs, to keep the benchmarks working) takes seconds; `full` takes minutes and
produces the figures in docs/performance.md. Sections: startup, ingest, fill, reports (in
process), reports_cli (each report through the CLI against the plain table aggregate), storage,
prune, daemon and many_targets (one `recorder run --config` recording 8 simulated
endpoints); `--only reports_cli` runs just that one, e.g. on a bigger fill (`--jobs
10000000 --targets 10`). The report sections share one filled database (benchmarks/filled.py):
with `--db-dir DIR` it is kept there and reused by later runs that ask for the same fill; with
`--postgres URL` it is a database of its own beside URL's, kept likewise. `--only fill` makes
the database and measures nothing, so that a long fill can run under `nice` and the
measurements without.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import io
import json
import math
import os
import platform
import random
import re
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

from sqlalchemy import Engine, create_engine, event, func, select, text

import recorder
from benchmarks import filled as kept
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
        "stream": ((100, 1, 30),),
        "polls": 5,
        "jobs": 2_000,
        "days": 2,
        "daemon_s": 5,
        "many_targets_s": 5,
        "prune_days": 2,
        "startup_runs": 3,
    },
    "full": {
        "in_flight": (10, 1_000, 10_000),
        "fine_in_flight": (10, 1_000, 10_000),
        "stream": ((1_000, 10, 400), (10_000, 100, 100)),
        "polls": 50,
        "jobs": 1_000_000,
        "days": 30,
        "daemon_s": 300,
        "many_targets_s": 60,
        "prune_days": 1200,
        "startup_runs": 10,
    },
}
# `fill` only makes (or finds) the reports' database: `nice` it, then measure without.
SECTIONS = (
    "startup",
    "ingest",
    "fill",
    "reports",
    "reports_cli",
    "storage",
    "prune",
    "daemon",
    "many_targets",
)
PAGE = 4096  # SQLite's default page size
BASELINE = (
    "SELECT type, count(*), avg(duration_s) FROM job_history "
    "WHERE status = 'finished' GROUP BY type"
)
# The reference every report is measured against: the single-pass aggregate on the table.
TABLE_AGGREGATE = BASELINE.replace("job_history", "jobs")


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


def stream_listing(n: int, closes: int, k: int, start: float) -> PollResult:
    """Poll `k` of a steady stream 10 s apart: `n` jobs in flight, `closes` of them ending and
    as many starting between polls (each job runs ``n / closes`` polls)."""
    now = start + 10.0 * k
    items = []
    for j in range(k * closes, k * closes + n):
        began = start + (j - n) / closes * 10.0
        items.append(
            {
                "id": f"user:1-pixverse:a{j % 5}@example.com-video:{j}",
                "type": "video" if j % 3 else "image",
                "started": format_started(began),
                "elapsed": _elapsed(now - began),
            }
        )
    return PollResult(now, now + 0.01, 200, normalize_items(items))


def bench_ingest_stream(url: str, n: int, closes: int, polls: int) -> dict[str, Any]:
    """Per poll of a steady stream (`stream_listing`): what closing jobs costs, the rollups'
    upkeep included, as an hour of them fills up."""
    engine, wal = _ingest_engine(url)
    store = Store(engine)
    start = 1_700_002_800.0  # 47 minutes into an hour: the stream crosses an hour's edge
    pipeline = Pipeline(
        store, f"bench://stream/{n}", lambda: stream_listing(n, closes, 0, start), gap_s=60.0
    )
    pipeline.poll_once()
    results = {
        "in_flight": n,
        "closes_per_poll": closes,
        "polls": polls,
        "closing": _poll_costs(
            engine, wal, pipeline, (stream_listing(n, closes, k, start) for k in range(1, polls))
        ),
    }
    engine.dispose()
    return results


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


def bench_reports(filled: kept.Filled) -> dict[str, Any]:
    """The reports in process, on the filled database: the query and rendering, no start-up."""
    engine = db.open_database(filled.url)
    now = datetime.fromtimestamp(filled.end, UTC)
    whole = (now - timedelta(days=filled.spec.days + 1), now)
    day = (now - timedelta(hours=24), now)
    results: dict[str, Any] = {"jobs": filled.spec.jobs, "windows": {}}
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


def report_commands(filled: kept.Filled) -> dict[str, list[str]]:
    """Each report as `recorder` arguments, the reference (`table_aggregate`) first.

    The recent windows end where the history ends (`--until`), not at the present: a kept
    database is reused long after it was filled, when the last 24 hours hold none of its jobs.
    """
    until = math.ceil(filled.end)
    end, hour_before = _iso(until), _iso(until - 3600)
    return {
        "table_aggregate": ["sql", TABLE_AGGREGATE, "--format", "json"],
        "view_aggregate": ["sql", BASELINE, "--format", "json"],
        "stats_by_type_all": ["stats", "--by", "type", "--since", "3650d", "--format", "json"],
        "stats_by_day_all": ["stats", "--by", "day", "--since", "3650d", "--format", "json"],
        "stats_by_type_24h": ["stats", "--by", "type", "--until", end, "--format", "json"],
        "jobs_1h": ["jobs", "--since", hour_before, "--until", end, "--format", "json"],
    }


def shown(args: list[str]) -> str:
    """A command line to read (and paste into a shell): arguments with spaces in double quotes."""
    return " ".join(a if re.fullmatch(r"[\w.,:/=+-]+", a) else f'"{a}"' for a in args)


def _iso(ts: float) -> str:
    return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%dT%H:%M:%SZ}"


def bench_reports_cli(filled: kept.Filled, repeat: int = 3) -> dict[str, Any]:
    """Each report through the CLI, a fresh `python -m recorder` process, against the plain
    table aggregate run the same way: wall time, start-up included in both, best of `repeat`.

    Each command's runs follow one another, so that the best of them finds the database's
    pages in the OS cache, as the others' do: taking turns instead made the reference, run after
    the long whole-history reports, read its index from disk every time (the host reclaims
    pages left unused for a while), at 2 to 3 times its warm figure over 10,000,000 jobs.
    """
    commands = report_commands(filled)
    env = cli_env()
    times: dict[str, list[float]] = {name: [] for name in commands}
    out_bytes: dict[str, int] = {}
    for name, args in commands.items():
        for _ in range(repeat):
            command = [sys.executable, "-m", "recorder", "--db", filled.url, *args]
            began = time.perf_counter()
            done = subprocess.run(command, env=env, capture_output=True, check=False)
            times[name].append(time.perf_counter() - began)
            if done.returncode != 0:
                raise RuntimeError(
                    f"recorder --db {db.masked(filled.url)} {shown(args)} failed "
                    f"({done.returncode}): "
                    f"{done.stderr.decode(errors='replace').strip()}"
                )
            out_bytes[name] = len(done.stdout)
    reference = min(times["table_aggregate"])
    figures: dict[str, dict[str, Any]] = {
        name: {
            "command": shown(["recorder", *args]),
            "s": round(min(times[name]), 3),
            "ratio": round(min(times[name]) / reference, 2),
            "runs_s": [round(t, 3) for t in times[name]],
            "output_bytes": out_bytes[name],
        }
        for name, args in commands.items()
    }
    return {
        "jobs": filled.spec.jobs,
        "targets": filled.spec.targets,
        "days": filled.spec.days,
        "seed": filled.spec.seed,
        "database": db.describe_location(filled.url),
        "reused": filled.reused,
        "history_end": _iso(filled.end),
        "fill": filled.figures,
        "repeat": repeat,
        "reports": figures,
        "within_2x": all(f["ratio"] <= 2.0 for f in figures.values()),
    }


def print_reports_cli(backend: str, results: dict[str, Any]) -> None:
    """Each report's time and its ratio to the plain table aggregate, one line each."""
    fill_figures = results["fill"]
    steps = ", ".join(
        f"{key.removesuffix('_s')} {value} s"
        for key, value in fill_figures.items()
        if key.endswith("_s") and value
    )
    how = "reused; filled earlier" if results["reused"] else "filled"
    print(
        f"{backend} reports_cli: {results['jobs']:,} jobs on {results['targets']} target(s) over "
        f"{results['days']:g} days, {how} in {fill_figures['seconds']} s ({steps}), "
        f"at {results['database']}",
        flush=True,
    )
    for name, figure in results["reports"].items():
        print(
            f"  {name:<18} {figure['s']:8.3f} s {figure['ratio']:7.2f}x   {figure['command']}",
            flush=True,
        )


def cli_env() -> dict[str, str]:
    """The environment for `python -m recorder`: the recorder imported here, no RECORDER_DB.

    The package is byte-compiled first, as an installed one is: with PYTHONDONTWRITEBYTECODE
    set (as on our machines), an editable install would otherwise compile every module of the
    recorder from source at each start, and start-up figures would include it.
    """
    root = str(Path(recorder.__file__).resolve().parent.parent)
    compileall.compile_dir(Path(recorder.__file__).resolve().parent, quiet=1)
    env = {k: v for k, v in os.environ.items() if k != db.ENV_DB}
    env["PYTHONPATH"] = os.pathsep.join(
        [root, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != root)]
    )
    found = subprocess.run(
        [sys.executable, "-c", "import recorder; print(recorder.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if Path(found).resolve() != Path(recorder.__file__).resolve():
        raise RuntimeError(f"the CLI would run {found}, not {recorder.__file__}")
    return env


def bench_storage(url: str) -> dict[str, Any]:
    """Bytes a no-change poll and a job add, measured on a database of their own."""
    engine = db.open_database(url)
    empty = size_bytes(engine)
    # A database of the benchmark's own: no syncs during the fills (no effect on PostgreSQL).
    fill(engine, 0, 5, durable=False)  # 43,200 polls and no job
    with_polls = size_bytes(engine)
    fill(engine, 50_000, 1, seed=2, durable=False)  # and 50,000 jobs (with 8,640 polls)
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
            command, env=cli_env() | {"USEAPI_TOKEN": "bench"}, stderr=subprocess.DEVNULL
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


def bench_many_targets(url: str, seconds: float, targets: int = 8) -> dict[str, Any]:
    """Peak RSS and CPU share of one `recorder run --config` recording `targets` simulated
    endpoints, each polled every second (issue 11's aim: under 100 MB and 5% of one core)."""
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as sims:
        lines = []
        for k in range(targets):
            sim = sims.enter_context(Simulator(SimConfig(seed=k, token="bench", initial_jobs=8)))
            lines += [f"[targets.t{k}]", 'service = "pixverse"', f'url = "{sim.url}"']
            lines += ['token_env = "USEAPI_TOKEN"', "interval = 1", ""]
        config = Path(tmp) / "targets.toml"
        config.write_text("\n".join(lines))
        command = [sys.executable, "-m", "recorder", "--db", url, "run", "--config", str(config)]
        process = subprocess.Popen(
            command, env=cli_env() | {"USEAPI_TOKEN": "bench"}, stderr=subprocess.DEVNULL
        )
        try:
            rss_kib, peak_kib, cpu_s = _watch_process(process.pid, seconds)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    engine = db.create(url)
    with engine.connect() as conn:
        polls = conn.execute(text("SELECT target_id, count(*) FROM polls GROUP BY target_id")).all()
    engine.dispose()
    return {
        "targets": targets,
        "seconds": seconds,
        "polls_per_target_min": min((n for _, n in polls), default=0),
        "polls_per_target_max": max((n for _, n in polls), default=0),
        "cpu_s": round(cpu_s, 2),
        "cpu_share": round(cpu_s / seconds, 4),
        "rss_mb_peak": round(peak_kib * 1024 / 1e6, 1),
        "rss_mb_end": round(rss_kib[-1] * 1024 / 1e6, 1),
    }


def _watch_process(pid: int, seconds: float) -> tuple[list[int], int, float]:
    """Process `pid` for `seconds`: its RSS each second (KiB), its peak RSS (KiB; a spike
    between two samples counts too) and its CPU seconds by the end."""
    rss = []
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        time.sleep(1.0)
        rss.append(_status_kib(pid, "VmRSS"))
    peak = _status_kib(pid, "VmHWM")
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of stat; the split above starts at field 3.
    return rss, peak, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith(field + ":")).split()[1])


def bench_prune(url: str, days: int) -> dict[str, Any]:
    """`recorder prune --polls-older-than` half the history, on a history of mostly idle polls."""
    engine = db.open_database(url)
    filled = fill(engine, 1_000, days, durable=False)
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
    fill(engine, 1_000, 1, durable=False)
    engine.dispose()
    recorder = [sys.executable, "-m", "recorder"]
    commands = {
        "python": [sys.executable, "-c", "pass"],
        "help": [*recorder, "--help"],
        "jobs_limit_1": [*recorder, "--db", url, "jobs", "--limit", "1", "--format", "json"],
        "stats_24h": [*recorder, "--db", url, "stats", "--format", "json"],
    }
    env = cli_env()

    def run(command: list[str]) -> None:
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)

    return {"runs": runs} | {
        f"{name}_s": round(timed(lambda c=command: run(c), runs), 3)  # type: ignore[misc]
        for name, command in commands.items()
    }


def main() -> None:
    """Run the sections asked for on SQLite (and PostgreSQL when given), print, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument(
        "--only",
        type=_sections,
        default=SECTIONS,
        metavar="SECTION,...",
        help=f"run only these sections, of: {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--jobs",
        type=_positive,
        help="jobs in the reports' database [default: 2,000 tiny, 1,000,000 full]",
    )
    parser.add_argument(
        "--targets",
        type=_positive,
        default=1,
        help="targets the jobs are shared among [default: 1]",
    )
    parser.add_argument(
        "--repeat",
        type=_positive,
        default=3,
        help="reports_cli: runs of each command, the best counts [default: 3]",
    )
    parser.add_argument("--days", type=float, help="days of history [default: 2 tiny, 30 full]")
    parser.add_argument(
        "--db-dir",
        type=Path,
        help="keep the reports' SQLite database here, and reuse one that holds the same fill",
    )
    parser.add_argument(
        "--postgres",
        help="run the database benchmarks on PostgreSQL too, each in a database of its own "
        "beside this URL's (created, and dropped at the end but for the kept fill)",
    )
    parser.add_argument("--out", default="benchmark-results.json")
    args = parser.parse_args()
    size = SIZES[args.size]
    spec = kept.Spec(
        jobs=args.jobs if args.jobs is not None else size["jobs"],
        targets=args.targets,
        days=args.days if args.days is not None else size["days"],
    )
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}",
        "size": args.size,
        "sections": list(args.only),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if "startup" in args.only:
            results["startup"] = bench_startup(f"sqlite:///{tmp}/startup.db", size["startup_runs"])
            print("startup", json.dumps(results["startup"]), flush=True)
        kept_dir = args.db_dir or Path(tmp)
        backends: dict[str, Callable[[str], str]] = {
            "sqlite": lambda name: f"sqlite:///{tmp}/{name}.db"
        }
        filled_for = {"sqlite": lambda: kept.sqlite(spec, kept_dir)}
        scratch: list[str] = []  # PostgreSQL's throwaway databases, dropped at the end
        if args.postgres:

            def pg_scratch(name: str) -> str:
                scratch.append(name)
                return kept.recreate_postgres(args.postgres, name)

            backends["postgresql"] = pg_scratch
            filled_for["postgresql"] = lambda: kept.postgres(spec, args.postgres)
            results["postgresql_version"] = _server_version(args.postgres)
        for backend, url_for in backends.items():
            out: dict[str, Any] = {}
            if "ingest" in args.only:
                out["ingest"] = [
                    bench_ingest(url_for(f"ingest{n}"), n, size["polls"]) for n in size["in_flight"]
                ]
                print(backend, "ingest", json.dumps(out["ingest"]), flush=True)
                out["ingest_fine_clock"] = [
                    bench_ingest_fine_clock(url_for(f"fine{n}"), n, size["polls"])
                    for n in size["fine_in_flight"]
                ]
                print(
                    backend, "ingest_fine_clock", json.dumps(out["ingest_fine_clock"]), flush=True
                )
                out["ingest_stream"] = [
                    bench_ingest_stream(url_for(f"stream{n}"), n, closes, polls)
                    for n, closes, polls in size["stream"]
                ]
                print(backend, "ingest_stream", json.dumps(out["ingest_stream"]), flush=True)
            if {"fill", "reports", "reports_cli"} & set(args.only):
                filled = filled_for[backend]()
                out["fill"] = {
                    "database": db.describe_location(filled.url),
                    "reused": filled.reused,
                    **filled.figures,
                }
                print(backend, "fill", json.dumps(out["fill"]), flush=True)
                if "reports" in args.only:
                    out["reports"] = bench_reports(filled)
                    print(backend, "reports", json.dumps(out["reports"]), flush=True)
                if "reports_cli" in args.only:
                    out["reports_cli"] = bench_reports_cli(filled, args.repeat)
                    print_reports_cli(backend, out["reports_cli"])
            if "storage" in args.only:
                out["storage"] = bench_storage(url_for("storage"))
                print(backend, "storage", json.dumps(out["storage"]), flush=True)
            if backend == "sqlite" and "prune" in args.only:
                out["prune"] = bench_prune(url_for("prune"), size["prune_days"])
                print(backend, "prune", json.dumps(out["prune"]), flush=True)
            if backend == "sqlite" and "daemon" in args.only:
                out["daemon"] = bench_daemon(url_for("daemon"), size["daemon_s"])
                print(backend, "daemon", json.dumps(out["daemon"]), flush=True)
            if backend == "sqlite" and "many_targets" in args.only:
                out["many_targets"] = bench_many_targets(
                    url_for("many_targets"), size["many_targets_s"]
                )
                print(backend, "many_targets", json.dumps(out["many_targets"]), flush=True)
            results[backend] = out
        for name in scratch:
            kept.drop_postgres(args.postgres, name)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.out}")


def _sections(value: str) -> tuple[str, ...]:
    chosen = tuple(name.strip() for name in value.split(",") if name.strip())
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(
            f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SECTIONS)}"
        )
    return chosen


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive whole number")
    return number


def _server_version(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


if __name__ == "__main__":
    main()
