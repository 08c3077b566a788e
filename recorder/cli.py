"""The `recorder` command line: parses options, calls into the package, prints results."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.decorators import FC
from sqlalchemy import Engine

from recorder import __version__, db
from recorder.config import DEFAULT_INTERVAL_S, DEFAULT_URL, ENV_TOKEN, ConfigError, load_token
from recorder.output import FORMATS, default_format, iso, render

if TYPE_CHECKING:
    from recorder.pipeline import Pipeline
    from recorder.simulator import JobKind

log = logging.getLogger("recorder")


class State:
    """What every command shares: the database URL, opened on first use."""

    def __init__(self, db_url: str | None) -> None:
        self.db_url = db_url
        self._engine: Engine | None = None

    def engine(self) -> Engine:
        """The database, created or upgraded as needed."""
        if self._engine is None:
            try:
                self._engine = db.open_database(self.db_url)
            except db.DatabaseError as exc:
                raise click.ClickException(str(exc)) from None
        return self._engine

    def close(self) -> None:
        """Close the database's connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


pass_state = click.make_pass_decorator(State)


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level)
    # APScheduler warns on every skipped or late run; the daemon reports what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Turn a user's mistake into one clear line and exit code 1, never a traceback."""
    try:
        yield
    except (ConfigError, ValueError, db.DatabaseError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
@click.option(
    "--db",
    "db_url",
    metavar="URL",
    envvar=db.ENV_DB,
    help="Database URL, e.g. sqlite:///recorder.db or postgresql+psycopg://user@host/db "
    f"[env {db.ENV_DB}; default: a SQLite file, see `recorder db path`].",
)
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.version_option(__version__, prog_name="recorder")
@click.pass_context
def cli(ctx: click.Context, db_url: str | None, verbose: int, quiet: bool) -> None:
    """Record the job history of a useapi.net scheduler endpoint.

    The endpoint lists only the jobs executing right now; recorder polls it, infers when each
    job started and ended (with honest bounds), and keeps the history in a database.

    Example:

        recorder demo
    """
    _setup_logging(-1 if quiet else verbose)
    ctx.obj = State(db_url)
    ctx.call_on_close(ctx.obj.close)


def _endpoint_options(func: FC) -> FC:
    """The options every command that talks to the API shares."""
    func = click.option(
        "--insecure",
        is_flag=True,
        help="Allow plain http:// to a host that is not loopback (sends the token unencrypted).",
    )(func)
    func = click.option(
        "--timeout",
        type=click.FloatRange(min=0.1),
        default=20.0,
        show_default=True,
        help="Seconds to wait for an answer.",
    )(func)
    func = click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help=f"File holding the API token [default: the {ENV_TOKEN} environment variable].",
    )(func)
    func = click.option(
        "--url", default=DEFAULT_URL, show_default=True, help="The scheduler endpoint to poll."
    )(func)
    return func


def _pipeline(
    state: State, url: str, token_file: Path | None, timeout: float, insecure: bool, interval: float
) -> tuple[Pipeline, Engine]:
    from recorder.client import SchedulerClient, check_url
    from recorder.daemon import gap_threshold
    from recorder.pipeline import Pipeline
    from recorder.store import Store

    with _user_errors():
        token = load_token(token_file)
        check_url(url, insecure=insecure)
    engine = state.engine()
    client = SchedulerClient(url, token, timeout=(min(5.0, timeout), timeout))
    return Pipeline(Store(engine), url, client.poll, gap_s=gap_threshold(interval)), engine


@cli.command()
@_endpoint_options
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=DEFAULT_INTERVAL_S,
    show_default=True,
    help="Seconds between polls (fractions such as 0.5 allowed).",
)
@pass_state
def run(
    state: State,
    url: str,
    token_file: Path | None,
    timeout: float,
    insecure: bool,
    interval: float,
) -> None:
    """Poll the endpoint every INTERVAL seconds and record it, until SIGINT or SIGTERM.

    Logs one line per job transition and per change of health.

    Example:

        USEAPI_TOKEN=... recorder run --interval 10
    """
    from recorder.daemon import Daemon, lease_ttl

    pipeline, engine = _pipeline(state, url, token_file, timeout, insecure, interval)
    log.info("recording %s every %gs into %s", url, interval, db.masked(str(engine.url)))
    Daemon(pipeline, interval, lease_ttl_s=lease_ttl(interval, timeout)).run()
    log.info("stopped")


@cli.command()
@_endpoint_options
@pass_state
def poll(state: State, url: str, token_file: Path | None, timeout: float, insecure: bool) -> None:
    """Poll the endpoint once, record it, and exit (non-zero when the poll failed).

    Example:

        USEAPI_TOKEN=... recorder poll
    """
    from recorder.daemon import TargetBusy, poll_once
    from recorder.snapshot import Failure

    pipeline, _ = _pipeline(state, url, token_file, timeout, insecure, DEFAULT_INTERVAL_S)
    try:
        recorded = poll_once(pipeline, timeout)
    except TargetBusy as exc:
        raise click.ClickException(str(exc)) from None
    answer = recorded.result.answer
    if isinstance(answer, Failure):
        raise click.ClickException(f"poll failed ({answer.outcome.value}): {answer.message}")
    change = recorded.change
    click.echo(
        f"ok: {len(answer.items)} job(s) listed; {len(change.opened)} appeared, "
        f"{len(change.reopened)} reappeared, {len(change.closed)} vanished"
    )


def _format_option(choices: tuple[str, ...] = FORMATS) -> Callable[[FC], FC]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        help="Output format [default: table on a terminal, else json].",
    )


def _window_options(func: FC) -> FC:
    func = click.option(
        "--until", metavar="WHEN", help="End of the window [default: now]. WHEN as for --since."
    )(func)
    func = click.option(
        "--since",
        metavar="WHEN",
        help="Start of the window: an ISO-8601 date or time (UTC unless it says otherwise), "
        "or an age such as 30m, 24h, 7d.",
    )(func)
    return func


def _now() -> datetime:
    return datetime.now(UTC)


@cli.command()
@_format_option()
@click.option("--running", "status", flag_value="running", help="Only jobs still running.")
@click.option("--finished", "status", flag_value="finished", help="Only finished jobs.")
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only this type (repeatable).")
@click.option(
    "--account", "accounts", multiple=True, metavar="EMAIL", help="Only this account (repeatable)."
)
@_window_options
@click.option("--limit", type=click.IntRange(min=1), help="At most this many jobs.")
@click.option(
    "--order",
    default="started",
    show_default=True,
    metavar="KEY",
    help="started, ended, duration or id; a leading - sorts descending (-duration).",
)
@pass_state
def jobs(
    state: State,
    fmt: str | None,
    status: str | None,
    types: tuple[str, ...],
    accounts: tuple[str, ...],
    since: str | None,
    until: str | None,
    limit: int | None,
    order: str,
) -> None:
    """List recorded jobs, oldest first; with --since/--until, those overlapping the window.

    JSON has one object per job with id, type, account, status, started_at, ended_at,
    duration_s, duration_min_s, duration_max_s, first_seen_at, last_seen_at and more.

    Example:

        recorder jobs --finished --type video --since 24h --order -duration --limit 10
    """
    from recorder import reports
    from recorder.timespec import parse_when

    with _user_errors():
        now = _now()
        query = reports.JobQuery(
            status=status,
            types=types,
            accounts=accounts,
            since=parse_when(since, now) if since else None,
            until=parse_when(until, now) if until else None,
            limit=limit,
            order=order,
        )
        rows = reports.jobs(state.engine(), query)
        fmt = fmt or default_format()
        if fmt == "table":
            render((reports.table_row(r) for r in rows), fmt, sys.stdout, reports.TABLE_COLUMNS)
        else:
            render(rows, fmt, sys.stdout, reports.JOB_FIELDS)


@cli.command()
@_window_options
@click.option(
    "--by",
    "by",
    multiple=True,
    type=click.Choice(("type", "account", "hour", "day")),
    help="Group by this key (repeatable: --by type --by day).",
)
@_format_option(("table", "json", "csv"))
@click.option("--histogram", is_flag=True, help="Add a text histogram of durations per group.")
@click.option("--target", metavar="URL", help="Only this polled URL [default: all].")
@pass_state
def stats(
    state: State,
    since: str | None,
    until: str | None,
    by: tuple[str, ...],
    fmt: str | None,
    histogram: bool,
    target: str | None,
) -> None:
    """Durations, throughput, concurrency and coverage over a window (default: the last 24 h).

    Per group: jobs finished, started and running; the finished jobs' durations (count, mean,
    p50, p90, p95, p99, max; percentiles are nearest-rank) and how many are known only within
    wide bounds; finished per hour; peak and mean concurrency; and the share of the window
    covered by successful polls, with its gaps.

    Example:

        recorder stats --since 7d --by type --by day --format json
    """
    from recorder import stats as stats_module
    from recorder import stats_format
    from recorder.timespec import window

    with _user_errors():
        now = _now()
        start, end = window(since, until, now)
        query = stats_module.StatsQuery(start, end, now, by, target, histogram)
        report = stats_module.compute(state.engine(), query)
    fmt = fmt or default_format()
    if fmt == "json":
        click.echo(json.dumps(stats_format.report_json(report, histogram), indent=2))
    elif fmt == "csv":
        render(stats_format.csv_rows(report), "csv", sys.stdout)
    else:
        stats_format.write_table(report, sys.stdout, histogram)


@cli.command()
@click.argument("query")
@_format_option()
@pass_state
def sql(state: State, query: str, fmt: str | None) -> None:
    """Run one read-only SQL query; the views job_history, poll_log and poll_gaps are for this.

    A statement that would write is refused and changes nothing. See docs/sql.md.

    Example:

        recorder sql "SELECT type, COUNT(*) AS n FROM job_history GROUP BY type" --format json
    """
    from recorder import readonly

    engine = readonly.readonly_engine(state.engine())
    try:
        with readonly.query(engine, query) as (columns, rows):
            render(rows, fmt or default_format(), sys.stdout, columns)
    except readonly.QueryError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@_window_options
@_format_option()
@click.option("--target", metavar="URL", help="Only this polled URL [default: all].")
@pass_state
def gaps(
    state: State, since: str | None, until: str | None, fmt: str | None, target: str | None
) -> None:
    """List the periods with no successful poll in a window (default: the last 24 h).

    Example:

        recorder gaps --since 7d
    """
    from recorder import reports
    from recorder.timespec import window

    with _user_errors():
        start, end = window(since, until, _now())
    rows = reports.gaps(state.engine(), start, end, target)
    render(rows, fmt or default_format(), sys.stdout, reports.GAP_FIELDS)


def _share_option(name: str, help_text: str) -> Callable[[FC], FC]:
    """An option for the share (0 to 1) of the simulator's answers that misbehave one way."""
    return click.option(
        name, type=click.FloatRange(0, 1), default=0.0, show_default=True, help=help_text
    )


@cli.command()
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--token",
    required=True,
    help="The bearer token the simulator accepts (a test value, not your API token).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    metavar="TYPE:PER_MIN:MEAN_S",
    help="A job type, its arrivals per minute and mean duration (repeatable) "
    "[default: video:2:90, image:4:20].",
)
@click.option("--initial-jobs", type=click.IntRange(min=0), default=0, show_default=True)
@_share_option("--server-errors", "Share of answers that are 5xx.")
@_share_option("--rate-limits", "Share of answers that are 429.")
@click.option(
    "--retry-after",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Retry-After seconds on 429.",
)
@_share_option("--slow", "Share of answers delayed by --slow-seconds.")
@click.option("--slow-seconds", type=click.FloatRange(min=0), default=2.0, show_default=True)
@_share_option("--garbage", "Share of answers with a garbage body.")
@_share_option("--empty", "Share of answers with an empty list although jobs run.")
@click.option(
    "--skew",
    type=float,
    default=0.0,
    show_default=True,
    help="Seconds the server clock is ahead of the true time.",
)
def simulate(
    port: int,
    host: str,
    token: str,
    seed: int,
    kinds: tuple[str, ...],
    initial_jobs: int,
    server_errors: float,
    rate_limits: float,
    retry_after: int,
    slow: float,
    slow_seconds: float,
    garbage: float,
    empty: float,
    skew: float,
) -> None:
    """Serve a simulated scheduler endpoint (seeded) until Ctrl-C.

    Example:

        recorder simulate --port 8765 --token test-token --server-errors 0.05 --skew 30
    """
    from recorder import simulator

    with _user_errors():
        faults = simulator.Faults(
            server_error=server_errors,
            rate_limit=rate_limits,
            retry_after_s=retry_after,
            slow=slow,
            slow_s=slow_seconds,
            garbage=garbage,
            empty=empty,
            skew_s=skew,
        )
        config = simulator.SimConfig(
            seed=seed, token=token, faults=faults, initial_jobs=initial_jobs
        )
        if kinds:
            config = dataclasses.replace(config, kinds=tuple(_parse_kind(k) for k in kinds))

    def ready(url: str) -> None:
        click.echo(f"simulating {url} (seed {seed}); Ctrl-C to stop", err=True)

    simulator.serve_forever(config, host, port, on_ready=ready)


def _parse_kind(text: str) -> JobKind:
    from recorder.simulator import JobKind

    try:
        type_, rate, mean = text.split(":")
        return JobKind(type_, float(rate), float(mean))
    except ValueError:
        raise ValueError(
            f"--kind wants TYPE:PER_MIN:MEAN_S, e.g. video:2:90 (got {text!r})"
        ) from None


@cli.command()
@click.option(
    "--seconds",
    type=click.FloatRange(min=1),
    default=30.0,
    show_default=True,
    help="How long to record.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between polls.",
)
@click.option("--seed", type=int, default=8, show_default=True)
@click.option(
    "--keep",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the database in this file.",
)
def demo(seconds: float, interval: float, seed: int, keep: Path | None) -> None:
    """Record the built-in simulator for a while, then show what was recorded.

    Runs the simulator (with faults and a skewed server clock) and the daemon on a temporary
    SQLite database: a first look that needs no API token.

    Example:

        recorder demo --seconds 30
    """
    from recorder.demo import run_demo

    with _user_errors():
        run_demo(seconds=seconds, interval=interval, seed=seed, keep=keep, out=sys.stdout)


@cli.command()
@_format_option()
@click.option(
    "--max-age",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="Seconds after which a target's latest poll is too old to call it healthy.",
)
@pass_state
def status(state: State, fmt: str | None, max_age: float) -> None:
    """Show each target's health; exit 1 when any target is unhealthy (for monitoring).

    A target is healthy when its latest poll succeeded and is at most --max-age seconds old.

    Example:

        recorder status --format json
    """
    from recorder import reports

    rows = reports.status(state.engine(), _now(), max_age)
    render(rows, fmt or default_format(), sys.stdout, reports.STATUS_FIELDS)
    if not rows or not all(row["healthy"] for row in rows):
        sys.exit(1)


@cli.command()
@click.option(
    "--polls-older-than",
    "older_than",
    required=True,
    metavar="AGE",
    help="Delete poll rows older than this (30d, 12h, or an ISO-8601 date).",
)
@pass_state
def prune(state: State, older_than: str) -> None:
    """Delete old poll rows, keeping every poll that a job's bounds or a gap refers to.

    Jobs, their transitions and their bounds are untouched, and so are the figures of
    `recorder stats`; what goes is the row-by-row record of polls that changed nothing.

    Example:

        recorder prune --polls-older-than 30d
    """
    from recorder.retention import prune as prune_polls
    from recorder.timespec import parse_when

    with _user_errors():
        cutoff = parse_when(older_than, _now())
    result = prune_polls(state.engine(), cutoff)
    click.echo(
        f"deleted {result.deleted} poll(s) sent before {iso(cutoff)}; "
        f"kept {result.kept_old} older poll(s) that jobs or gaps refer to"
    )


@cli.group(name="db")
def db_group() -> None:
    """Manage the database: its location and schema."""


@db_group.command()
@pass_state
def upgrade(state: State) -> None:
    """Create the database, or upgrade its schema to this version's.

    Example:

        recorder --db sqlite:///recorder.db db upgrade
    """
    engine = state.engine()  # opening creates and upgrades
    click.echo(
        f"{db.masked(str(engine.url))}: schema at revision {db.current_revision(engine)} (newest)"
    )


@db_group.command()
@pass_state
def path(state: State) -> None:
    """Print where the database is: the SQLite file, or the masked URL.

    Example:

        recorder db path
    """
    click.echo(db.describe_location(db.resolve_url(state.db_url)))
