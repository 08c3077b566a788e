"""The `recorder` command line: parses options, calls into the package, prints results."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.core import ParameterSource
from click.decorators import FC

from recorder import __version__, db
from recorder.config import (
    DEFAULT_INTERVAL_S,
    DEFAULT_OUTCOME_RATE,
    DEFAULT_TIMEOUT_S,
    DEFAULT_URL,
    ENV_TOKEN,
    INTERVAL_RANGE_S,
    OUTCOME_RATE_RANGE,
    TIMEOUT_RANGE_S,
    ConfigError,
    load_token,
)
from recorder.logs import LOG_FORMATS, LogFormat, about, setup
from recorder.output import FORMATS, default_format, iso, render
from recorder.params import DATABASE_URL, DAY, HOUR, JOB_KIND, SIM_SERVICE, WHEN, Number, Seconds
from recorder.stopping import STOP
from recorder.timespec import When

# What a command needs is imported inside it: `recorder --help` and a report load only their own
# share (tests/test_startup_imports.py), and no report loads Alembic.
if TYPE_CHECKING:
    from sqlalchemy import Engine

    from recorder.capacity import CapacityReader
    from recorder.client import SchedulerClient
    from recorder.config_file import TargetConfig
    from recorder.daemon import Daemon, Recording, SideTask
    from recorder.metrics import TargetMetrics
    from recorder.outcomes import OutcomeWorker
    from recorder.pipeline import Pipeline
    from recorder.secret import Secret
    from recorder.services import Service
    from recorder.simulator import JobKind

log = logging.getLogger("recorder")
METRICS_HOST = "127.0.0.1"  # metrics are for this host's scraper unless told otherwise


class State:
    """What every command shares: the database URL, opened on first use."""

    def __init__(self, db_url: str | None) -> None:
        self.db_url = db_url
        self._engine: Engine | None = None

    def engine(self, *, adopt: bool = False) -> Engine:
        """The database for writing, created or upgraded as needed."""
        if self._engine is None:
            try:
                self._engine = db.open_database(self.db_url, adopt=adopt)
            except db.DatabaseError as exc:
                raise click.ClickException(str(exc)) from None
        return self._engine

    def reader(self) -> Engine:
        """The existing database, for reading only: nothing is created or changed."""
        if self._engine is None:
            try:
                self._engine = db.open_readonly(self.db_url)
            except db.DatabaseError as exc:
                raise click.ClickException(str(exc)) from None
        return self._engine

    def close(self) -> None:
        """Close the database's connections."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


pass_state = click.make_pass_decorator(State)


def _setup_logging(verbosity: int, fmt: LogFormat, path: Path | None) -> None:
    try:
        setup(
            verbosity, fmt=fmt, path=path
        )  # one line (or JSON object) per event, API text escaped
    except OSError as exc:
        raise click.ClickException(f"cannot open the log file {path}: {exc.strerror}") from None


class ConfigFileError(click.ClickException):
    """A config file that cannot be used: its one line, and exit code 2 as for a bad option."""

    exit_code = 2


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
    type=DATABASE_URL,
    metavar="URL",
    envvar=db.ENV_DB,
    help="Database URL, e.g. sqlite:///recorder.db or postgresql+psycopg://user@host/db "
    f"[env {db.ENV_DB}; default: a SQLite file, see `recorder db path`].",
)
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="The log on stderr: text lines, or one JSON object per line (time, level, message, "
    "target).",
)
@click.option(
    "--log-file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="PATH",
    help="Append the log to this file instead of stderr; `recorder run` opens it again on "
    "SIGHUP (for logrotate).",
)
@click.version_option(__version__, prog_name="recorder")
@click.pass_context
def cli(
    ctx: click.Context,
    db_url: str | None,
    verbose: int,
    quiet: bool,
    log_format: LogFormat,
    log_file: Path | None,
) -> None:
    """Record the job history of a useapi.net scheduler endpoint.

    The endpoint lists only the jobs executing right now; recorder polls it, infers when each
    job started and ended (with honest bounds), and keeps the history in a database.

    Example:

        recorder demo
    """
    if ctx.invoked_subcommand != "run":
        # Only the daemon stops gracefully; every other command stops as any program does.
        STOP.release()
    _setup_logging(-1 if quiet else verbose, log_format, log_file)
    ctx.obj = State(db_url)
    ctx.call_on_close(ctx.obj.close)


def _endpoint_options(func: FC) -> FC:
    """The options every command that talks to the API shares."""
    func = click.option(
        "--config",
        "config_file",
        # Not checked here: recorder.config_file says what is wrong with it, as with its contents.
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="A TOML file of [targets.NAME] tables (service, url, token_env or token_file, "
        "interval, timeout, capacity_interval, outcomes, outcome_rate): every target in it, "
        "in one process. Not with --url, --token-file or --interval.",
    )(func)
    func = click.option(
        "--insecure",
        is_flag=True,
        help="Allow plain http:// to a host that is not loopback (sends the token unencrypted).",
    )(func)
    func = click.option(
        "--timeout",
        type=Seconds(*TIMEOUT_RANGE_S),
        default=DEFAULT_TIMEOUT_S,
        show_default=True,
        help="Seconds to wait for an answer, 0.1 to 3600 (30s, 2m also work); with --config, "
        "for the targets that set no timeout.",
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


def _targets(
    config_file: Path, timeout: float, insecure: bool, alone: tuple[str, ...]
) -> list[TargetConfig]:
    """The targets of `config_file`, all checked; a usage error if one of the options that
    only a single target takes (`alone`) was given too."""
    from recorder.config_file import load_targets

    ctx = click.get_current_context()
    for name in alone:
        if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None):
            option = "--" + name.replace("_", "-")
            raise click.UsageError(
                f"--config and {option} cannot be used together: a config file names each "
                "target's url, token and interval itself"
            )
    try:
        return load_targets(config_file, insecure=insecure, default_timeout=timeout)
    except ConfigError as exc:
        raise ConfigFileError(str(exc)) from None


def _pipeline(
    state: State,
    url: str,
    token_file: Path | None,
    timeout: float,
    insecure: bool,
    interval: float | None,
) -> tuple[Pipeline, SchedulerClient]:
    """The recording pipeline for the target --url; `interval` None: gaps from the observed
    cadence."""
    from recorder import services
    from recorder.client import check_url

    with _user_errors():
        token = load_token(token_file)
        check_url(url, insecure=insecure)
    return _recording(state, url, token, timeout, interval, services.for_url(url))


def _recording(
    state: State,
    url: str,
    token: Secret,
    timeout: float,
    interval: float | None,
    service: Service,
    name: str | None = None,
) -> tuple[Pipeline, SchedulerClient]:
    """The recording pipeline for one target, and its client (for the caller to close); `name`
    labels the target (a config file's), else the target keeps or gets its default name."""
    from recorder.client import SchedulerClient
    from recorder.gaps import gap_threshold
    from recorder.pipeline import Pipeline
    from recorder.store import Store

    with _user_errors():
        db.require_file(db.resolve_url(state.db_url))
    engine = state.engine()
    # --timeout bounds the whole answer: connect, headers and body together.
    client = SchedulerClient(url, token, timeout=(min(5.0, timeout), timeout), parse=service.parse)
    gap_s = gap_threshold(interval) if interval is not None else None
    pipeline = Pipeline(
        Store(engine), url, client.poll, gap_s=gap_s, name=name, service=service.name
    )
    return pipeline, client


@cli.command()
@_endpoint_options
@click.option(
    "--interval",
    type=Seconds(*INTERVAL_RANGE_S),
    default=DEFAULT_INTERVAL_S,
    show_default=True,
    help="Seconds between polls, 0.05 to 86400 (a day); 0.5, 30s, 5m, 1h also work.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (0: any free port, logged).",
)
@click.option(
    "--metrics-host",
    default=METRICS_HOST,
    show_default=True,
    metavar="HOST",
    help="The address --metrics-port listens on.",
)
@click.option(
    "--outcomes",
    is_flag=True,
    help="After a job vanishes, ask the API what became of it (completed, failed, moderated; "
    "PixVerse only). With --config: `outcomes = true` per target instead.",
)
@click.option(
    "--outcome-rate",
    type=click.IntRange(*OUTCOME_RATE_RANGE),
    default=DEFAULT_OUTCOME_RATE,
    show_default=True,
    metavar="N",
    help="At most N outcome requests a minute (with --outcomes).",
)
@pass_state
def run(
    state: State,
    url: str,
    token_file: Path | None,
    timeout: float,
    insecure: bool,
    config_file: Path | None,
    interval: float,
    metrics_port: int | None,
    metrics_host: str,
    outcomes: bool,
    outcome_rate: int,
) -> None:
    """Poll the endpoint every INTERVAL seconds and record it, until SIGINT or SIGTERM.

    With --config, every target of the file, each on its own schedule: a slow or failing
    target never delays another. Logs one line per job transition and per change of health,
    each starting with the target's [name] (its URL without --config). SIGHUP opens --log-file
    again and reloads the --config file: added targets start, removed ones stop, changed ones
    restart, and the others poll on untouched; a file that fails its checks changes nothing.

    With --outcomes (or `outcomes = true` in the config file), a thread beside the polls asks
    each vanished job's outcome and stores it (see Job outcomes).

    Example:

        USEAPI_TOKEN=... recorder run --interval 10 --metrics-port 9464 --outcomes
    """
    from recorder.daemon import Recording, run_daemons

    ctx = click.get_current_context()
    if metrics_port is None and ctx.get_parameter_source("metrics_host") != ParameterSource.DEFAULT:
        raise click.UsageError("--metrics-host needs --metrics-port")
    if not outcomes and ctx.get_parameter_source("outcome_rate") != ParameterSource.DEFAULT:
        raise click.UsageError("--outcome-rate needs --outcomes")
    with ExitStack() as clients:
        # Each daemon's figures join this list as it is made (on SIGHUP too).
        exported: list[TargetMetrics] | None = [] if metrics_port is not None else None
        reloader: _ConfigTargets | None = None
        if config_file is None:
            if outcomes:
                _check_outcomes(url)
            daemon = _url_daemon(state, url, token_file, timeout, insecure, interval, clients)
            if exported is not None:
                daemon.metrics = _metrics(exported)
            side: list[SideTask] = []
            if outcomes:
                with _user_errors():
                    token = load_token(token_file)
                worker = _outcome_worker(daemon, url, token, timeout, outcome_rate, url, clients)
                _log_outcomes(worker)
                side.append(worker)
            recordings: list[Daemon | Recording] = [Recording(daemon, side)]
        else:
            alone = ("url", "token_file", "interval", "outcomes", "outcome_rate")
            targets = _targets(config_file, timeout, insecure, alone)
            reloader = _ConfigTargets(state, config_file, timeout, insecure, exported)
            engine = db.masked(str(state.engine().url))
            log.info("recording %d target(s) of %s into %s", len(targets), config_file, engine)
            recordings = []
            for target in targets:
                recording = reloader.build(target.name, target)
                clients.callback(recording.close)
                recordings.append(recording)
        if metrics_port is not None and exported is not None:
            _serve_metrics(exported, metrics_host, metrics_port, clients)
        try:
            run_daemons(recordings, reloader=reloader)
        except db.DatabaseError as exc:
            raise click.ClickException(str(exc)) from None
    log.info("stopped")


class _ConfigTargets:
    """The targets of a --config file, read again on SIGHUP (recorder.daemon.Reloader)."""

    def __init__(
        self,
        state: State,
        path: Path,
        timeout: float,
        insecure: bool,
        exported: list[TargetMetrics] | None,
    ) -> None:
        self.state, self.path, self.timeout, self.insecure = state, path, timeout, insecure
        self.exported = exported

    def targets(self) -> dict[str, object]:
        """Each target of the file as it is now, by name; ReloadRefused if it is unusable."""
        from recorder.config_file import load_targets
        from recorder.daemon import ReloadRefused

        try:
            found = load_targets(self.path, insecure=self.insecure, default_timeout=self.timeout)
        except ConfigError as exc:
            raise ReloadRefused(str(exc)) from None
        return {target.name: target for target in found}

    def build(self, name: str, settings: object) -> Recording:
        """The daemon of one target and its capacity reader, not started; logs what it will do."""
        from recorder.config_file import TargetConfig
        from recorder.daemon import Recording

        assert isinstance(settings, TargetConfig)
        assert settings.name == name
        target = settings
        with ExitStack() as clients:
            daemon = _target_daemon(self.state, target, clients)
            reader = _capacity_reader(target, daemon, clients, self.insecure)
            owned = clients.pop_all()
        if self.exported is not None:
            daemon.metrics = _metrics(self.exported)
        log.info(
            "[%s] recording %s (%s) every %gs",
            target.name,
            target.url,
            target.service.name,
            target.interval,
            extra=about(target.name),
        )
        if reader is not None:
            log.info(
                "[%s] reading %s every %gs",
                reader.name,
                reader.client.url,
                reader.interval,
                extra=about(reader.name),
            )
        side: list[SideTask] = [] if reader is None else [reader]
        if target.outcomes:
            with ExitStack() as clients:
                worker = _outcome_worker(
                    daemon,
                    target.url,
                    target.token,
                    target.timeout,
                    target.outcome_rate,
                    target.name,
                    clients,
                )
                owned.push(clients.pop_all())
            _log_outcomes(worker)
            side.append(worker)
        return Recording(daemon, side, settings=target, close=owned.close)


def _log_outcomes(worker: OutcomeWorker) -> None:
    log.info(
        "[%s] asking the outcome of each vanished job, at most %d a minute",
        worker.name,
        worker.limit.per_minute,
        extra=about(worker.name),
    )


def _serve_metrics(exported: list[TargetMetrics], host: str, port: int, clients: ExitStack) -> None:
    """Serve the figures in `exported` (each daemon's, appended as it is made) on
    `host`:`port` until `clients` closes."""
    # Imported here: only `run --metrics-port` loads prometheus_client.
    from recorder.exporter import Exporter

    try:
        exporter = Exporter(exported, host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot serve metrics on {host}:{port}: {exc}") from None
    clients.callback(exporter.close)
    log.info("serving metrics at http://%s:%d/metrics", host, exporter.port)


def _metrics(exported: list[TargetMetrics]) -> TargetMetrics:
    """A daemon's figures, added to those exported (a stopped daemon's are forgotten)."""
    from recorder.metrics import TargetMetrics

    metrics = TargetMetrics()
    exported.append(metrics)
    return metrics


def _url_daemon(
    state: State,
    url: str,
    token_file: Path | None,
    timeout: float,
    insecure: bool,
    interval: float,
    clients: ExitStack,
) -> Daemon:
    """The daemon for the one target of --url; its client is closed with `clients`."""
    from recorder.daemon import Daemon, lease_ttl

    pipeline, client = _pipeline(state, url, token_file, timeout, insecure, interval)
    clients.callback(client.close)
    engine = pipeline.store.engine
    log.info("recording %s every %gs into %s", url, interval, db.masked(str(engine.url)))
    return Daemon(
        pipeline,
        interval,
        lease_ttl_s=lease_ttl(interval, timeout),
        abort=client.abort,
        name=url,
    )


def _target_daemon(state: State, target: TargetConfig, clients: ExitStack) -> Daemon:
    """The daemon for one target of a config file; its client is closed with `clients`."""
    from recorder.daemon import Daemon, lease_ttl

    pipeline, client = _recording(
        state,
        target.url,
        target.token,
        target.timeout,
        target.interval,
        target.service,
        target.name,
    )
    clients.callback(client.close)
    return Daemon(
        pipeline,
        target.interval,
        lease_ttl_s=lease_ttl(target.interval, target.timeout),
        abort=client.abort,
        name=target.name,
    )


def _check_outcomes(url: str) -> None:
    """Refuse --outcomes for a URL whose jobs have no outcome to ask (a usage error)."""
    from recorder import services
    from recorder.outcomes import outcome_url

    service = services.for_url(url)
    if not service.has_outcomes:
        raise click.UsageError(
            f"--outcomes: {service.name} has no job outcomes to ask; only pixverse has"
        )
    if outcome_url(url, "id", "video") is None:
        raise click.UsageError("--outcomes: the URL has no /scheduler segment")


def _outcome_worker(
    daemon: Daemon,
    url: str,
    token: Secret,
    timeout: float,
    rate: int,
    name: str,
    clients: ExitStack,
) -> OutcomeWorker:
    """The asker of the outcomes of the jobs of `daemon`'s target; its client (on the target's
    URL, with its token and timeout) is closed with `clients`. It asks only while the daemon
    records the target."""
    from recorder.client import SchedulerClient
    from recorder.outcomes import MAX_BODY_BYTES, OutcomeWorker

    client = SchedulerClient(
        url, token, timeout=(min(5.0, timeout), timeout), max_body_bytes=MAX_BODY_BYTES
    )
    clients.callback(client.close)
    pipeline = daemon.pipeline

    def target_id() -> int | None:
        return pipeline.target_id if daemon.holding else None

    return OutcomeWorker(
        pipeline.store.engine, client, url, target_id, name=name, rate_per_min=rate
    )


def _capacity_reader(
    target: TargetConfig, daemon: Daemon, clients: ExitStack, insecure: bool
) -> CapacityReader | None:
    """The reader of a config file target's /scheduler/available, if it is to be read; its
    client is closed with `clients`. It records only while the target's daemon does."""
    from recorder.capacity import CapacityReader
    from recorder.client import SchedulerClient, check_url

    url = target.service.available_url(target.url)
    if url is None or target.capacity_interval <= 0:
        return None
    check_url(url, insecure=insecure)  # the list URL passed: same scheme and host
    timeout = target.timeout
    client = SchedulerClient(url, target.token, timeout=(min(5.0, timeout), timeout))
    clients.callback(client.close)
    pipeline = daemon.pipeline

    def target_id() -> int | None:
        return pipeline.target_id if daemon.holding else None

    return CapacityReader(
        target.service,
        client,
        pipeline.store,
        target_id,
        target.capacity_interval,
        name=target.name,
    )


@cli.command()
@_endpoint_options
@click.option(
    "--expect-every",
    type=Seconds(*INTERVAL_RANGE_S),
    metavar="SECONDS",
    help="How often this poll runs (cron: 60s), for telling gaps from the usual silence "
    "[default: the spacing of the target's recent polls].",
)
@pass_state
def poll(
    state: State,
    url: str,
    token_file: Path | None,
    timeout: float,
    insecure: bool,
    config_file: Path | None,
    expect_every: float | None,
) -> None:
    """Poll the endpoint once, record it, and exit (non-zero when the poll failed).

    For cron or a timer: a silence longer than three times the usual spacing between polls
    (observed, or --expect-every) is recorded as a gap. With --config, every target of the
    file once, side by side, with one line each; non-zero when any failed.

    Example:

        USEAPI_TOKEN=... recorder poll --expect-every 60s
    """
    if config_file is not None:
        targets = _targets(config_file, timeout, insecure, ("url", "token_file"))
        _poll_targets(state, targets, expect_every)
        return
    pipeline, client = _pipeline(state, url, token_file, timeout, insecure, expect_every)
    ok, summary = _poll_and_close(pipeline, client, timeout)
    if not ok:
        raise click.ClickException(summary)
    click.echo(summary)


def _poll_targets(state: State, targets: list[TargetConfig], expect_every: float | None) -> None:
    """Poll every target once, side by side; one line each, in the file's order."""
    from concurrent.futures import ThreadPoolExecutor

    polls = []
    for target in targets:
        pipeline, client = _recording(
            state,
            target.url,
            target.token,
            target.timeout,
            expect_every,
            target.service,
            target.name,
        )
        polls.append((pipeline, client, target.timeout))
    # Side by side: a target whose server hangs for its whole timeout holds up no other.
    with ThreadPoolExecutor(max_workers=len(polls), thread_name_prefix="recorder-poll") as pool:
        results = list(pool.map(lambda p: _poll_and_close(*p), polls))
    failed = []
    for target, (ok, summary) in zip(targets, results, strict=True):
        click.echo(f"[{target.name}] {summary}")
        if not ok:
            failed.append(target.name)
    if failed:
        raise click.ClickException(
            f"{len(failed)} of {len(targets)} target(s) failed: {', '.join(failed)}"
        )


def _poll_and_close(
    pipeline: Pipeline, client: SchedulerClient, timeout: float
) -> tuple[bool, str]:
    """Poll once and record it, then close the client: whether it went well, and one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from recorder.daemon import TargetBusy, poll_once
    from recorder.snapshot import Failure

    pipeline.set_aside_after = 1  # one try only: a poll the database refuses is kept aside
    try:
        recorded = poll_once(pipeline, timeout)
    except TargetBusy as exc:
        return False, str(exc)
    except (SQLAlchemyError, db.DatabaseError) as exc:
        return False, f"cannot write to the database: {db.one_line(exc)}"
    finally:
        client.close()
    answer = recorded.result.answer
    if isinstance(answer, Failure):
        return False, f"poll failed ({answer.outcome.value}): {answer.message}"
    change = recorded.change
    return True, (
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
        "--until", type=WHEN, help="End of the window [default: now]. WHEN as for --since."
    )(func)
    func = click.option(
        "--since",
        type=WHEN,
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
@click.option(
    "--overdue",
    "status",
    flag_value="overdue",
    help="Only running jobs older than the p95 duration of their type (see Overdue jobs).",
)
@click.option("--type", "types", multiple=True, metavar="TYPE", help="Only this type (repeatable).")
@click.option(
    "--account", "accounts", multiple=True, metavar="EMAIL", help="Only this account (repeatable)."
)
@click.option(
    "--service",
    "services",
    multiple=True,
    metavar="SERVICE",
    help="Only the targets of this service: pixverse, kling, …, generic (repeatable).",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    metavar="NAME|URL",
    help="Only this target, by name or polled URL (repeatable).",
)
@_window_options
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000_000),
    help="At most this many jobs.",
)
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
    services: tuple[str, ...],
    targets: tuple[str, ...],
    since: When | None,
    until: When | None,
    limit: int | None,
    order: str,
) -> None:
    """List recorded jobs, oldest first; with --since/--until, those overlapping the window.

    JSON has one object per job with id, type, account, status, started_at, ended_at,
    duration_s, duration_min_s, duration_max_s, first_seen_at, last_seen_at, target (the URL
    polled), service, target_name and more.

    Example:

        recorder jobs --finished --service pixverse --since 24h --order -duration --limit 10
    """
    from recorder import reports
    from recorder.timespec import parse_when

    with _user_errors():
        now = _now()
        overdue = status == "overdue"
        query = reports.JobQuery(
            status="running" if overdue else status,
            types=types,
            accounts=accounts,
            services=services,
            targets=targets,
            since=parse_when(since, now) if since else None,
            until=parse_when(until, now) if until else None,
            limit=limit,
            order=order,
            overdue_at=now if overdue else None,
        )
        rows = reports.jobs(state.reader(), query)
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
    type=click.Choice(("type", "account", "hour", "day", "service", "target", "outcome")),
    help="Group by this key (repeatable: --by type --by day); outcome: completed, failed, "
    "moderated, unknown, or none.",
)
@_format_option(("table", "json", "csv"))
@click.option("--histogram", is_flag=True, help="Add a text histogram of durations per group.")
@click.option(
    "--target", metavar="NAME|URL", help="Only this target, by name or polled URL [default: all]."
)
@pass_state
def stats(
    state: State,
    since: When | None,
    until: When | None,
    by: tuple[str, ...],
    fmt: str | None,
    histogram: bool,
    target: str | None,
) -> None:
    """Durations, throughput, concurrency and coverage over a window (default: the last 24 h).

    Per group: jobs finished, started and running; the finished jobs' durations (count, mean,
    p50, p90, p95, p99, max; percentiles are nearest-rank) and how many are known only within
    wide bounds; finished per hour; peak and mean concurrency; the share of the window
    covered by successful polls, with its gaps; and with job outcomes recorded, the success
    rate (completed among completed, failed and moderated).

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
        report = stats_module.compute(state.reader(), query)
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
@click.option(
    "--timeout",
    "timeout_s",
    type=Seconds(0, DAY),
    default=600.0,
    show_default=True,
    help="Stop the query after this many seconds (0: no limit); 30s, 5m also work.",
)
@pass_state
def sql(state: State, query: str, fmt: str | None, timeout_s: float) -> None:
    """Run one read-only SQL query; the views job_history, poll_log and poll_gaps are for this.

    A statement that would write is refused by the database and changes nothing, whatever
    the text says. See docs/sql.md.

    Example:

        recorder sql "SELECT type, COUNT(*) AS n FROM job_history GROUP BY type" --format json
    """
    from recorder import readonly

    engine = readonly.readonly_engine(state.reader())
    try:
        with readonly.query(engine, query, timeout_s or None) as (columns, rows):
            render(rows, fmt or default_format(), sys.stdout, columns)
    except readonly.QueryError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command()
@_window_options
@_format_option()
@click.option(
    "--target", metavar="NAME|URL", help="Only this target, by name or polled URL [default: all]."
)
@pass_state
def gaps(
    state: State, since: When | None, until: When | None, fmt: str | None, target: str | None
) -> None:
    """List the periods with no successful poll in a window (default: the last 24 h).

    Example:

        recorder gaps --since 7d
    """
    from recorder import reports
    from recorder.timespec import window

    with _user_errors():
        start, end = window(since, until, _now())
        rows = reports.gaps(state.reader(), start, end, target)
    render(rows, fmt or default_format(), sys.stdout, reports.GAP_FIELDS)


def _share_option(name: str, help_text: str) -> Callable[[FC], FC]:
    """An option for the share (0 to 1) of the simulator's answers that misbehave one way."""
    return click.option(
        name, type=Number(0, 1), metavar="SHARE", default=0.0, show_default=True, help=help_text
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
    "--service",
    "services",
    multiple=True,
    type=SIM_SERVICE,
    metavar="NAME",
    help="A service whose scheduler to fake, in its shape at its real path (repeatable: one "
    "server, each service its own world, seeded --seed, --seed + 1, …) [default: pixverse].",
)
@click.option(
    "--kind",
    "kinds",
    multiple=True,
    type=JOB_KIND,
    metavar="TYPE:PER_MIN:MEAN_S",
    help="A job type, its arrivals per minute and mean duration (repeatable) "
    "[default: video:2:90, image:4:20].",
)
@click.option("--initial-jobs", type=click.IntRange(min=0), default=0, show_default=True)
@_share_option("--server-errors", "Share of answers that are 5xx.")
@_share_option("--rate-limits", "Share of answers that are 429.")
@click.option(
    "--retry-after",
    type=click.IntRange(0, 86400),
    default=2,
    show_default=True,
    help="Retry-After seconds on 429.",
)
@_share_option("--slow", "Share of answers delayed by --slow-seconds.")
@click.option(
    "--slow-seconds",
    type=Seconds(0, HOUR),
    default=2.0,
    show_default=True,
    help="How long a slow answer is delayed, 0 to 3600 seconds.",
)
@_share_option("--garbage", "Share of answers with a garbage body.")
@_share_option("--empty", "Share of answers with an empty list although jobs run.")
@click.option(
    "--skew",
    type=Seconds(-DAY, DAY),
    default=0.0,
    show_default=True,
    help="Seconds the server clock is ahead of the true time (negative: behind), up to a day.",
)
@click.option(
    "--outcome-delay",
    type=Seconds(0, 86400),
    default=20.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a finished video's page (/videos/ID) stays 404 before it shows its outcome.",
)
def simulate(
    port: int,
    host: str,
    token: str,
    seed: int,
    services: tuple[str, ...],
    kinds: tuple[JobKind, ...],
    initial_jobs: int,
    server_errors: float,
    rate_limits: float,
    retry_after: int,
    slow: float,
    slow_seconds: float,
    garbage: float,
    empty: float,
    skew: float,
    outcome_delay: float,
) -> None:
    """Serve a simulated scheduler endpoint (seeded) until Ctrl-C.

    PixVerse also serves each job's page (/videos/ID, /images/ID) for `recorder run
    --outcomes`.

    Example:

        recorder simulate --port 8765 --token test-token --server-errors 0.05 --skew 30

        recorder simulate --port 8765 --token test-token --service pixverse --service kling
    """
    from recorder import simulator

    twice = [name for i, name in enumerate(services) if name in services[:i]]
    if twice:
        # Each service is served at its real path: a second world there could not be reached.
        raise click.BadParameter(f"{twice[0]!r} is given twice", param_hint="'--service'")
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
        configs = [
            simulator.SimConfig(
                seed=seed + i,
                token=token,
                faults=faults,
                initial_jobs=initial_jobs,
                service=name,
                outcome_delay_s=outcome_delay,
            )
            for i, name in enumerate(services or ("pixverse",))
        ]
        if kinds:
            configs = [dataclasses.replace(config, kinds=kinds) for config in configs]
    seeds = iter(config.seed for config in configs)  # on_ready gets the URLs in config order

    def ready(url: str) -> None:
        click.echo(f"simulating {url} (seed {next(seeds)}); Ctrl-C to stop", err=True)

    simulator.serve_forever(configs, host, port, on_ready=ready)


@cli.command()
@click.option(
    "--seconds",
    type=Seconds(1, DAY),
    default=30.0,
    show_default=True,
    help="How long to record, 1 to 86400 seconds (2m, 1h also work).",
)
@click.option(
    "--interval",
    type=Seconds(0.05, DAY),
    default=1.0,
    show_default=True,
    help="Seconds between polls, 0.05 to 86400.",
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
    type=Seconds(0, 7 * DAY),
    default=300.0,
    show_default=True,
    help="Seconds after which a target's latest poll is too old to call it healthy (up to 7d).",
)
@pass_state
def status(state: State, fmt: str | None, max_age: float) -> None:
    """Show each target's health; exit 1 when any target is unhealthy (for monitoring).

    A target is healthy when its latest poll succeeded and is at most --max-age seconds old.
    Per target: its name and service, the age of its latest successful poll, its failure
    streak and last error, its running and overdue jobs, the server clock's offset, and which
    recorder holds it. JSON adds the URL (target), the latest poll's time and outcome.

    Example:

        recorder status --format json
    """
    from recorder import reports

    rows = reports.status(state.reader(), _now(), max_age)
    fmt = fmt or default_format()
    if fmt == "table":
        shown = [reports.status_table_row(row) for row in rows]
        render(shown, fmt, sys.stdout, reports.STATUS_TABLE_COLUMNS)
    else:
        render(rows, fmt, sys.stdout, reports.STATUS_FIELDS)
    if not rows or not all(row["healthy"] for row in rows):
        sys.exit(1)


@cli.command()
@click.option(
    "--polls-older-than",
    "older_than",
    required=True,
    type=WHEN,
    metavar="AGE",
    help="Delete poll rows older than this (30d, 12h, or an ISO-8601 date).",
)
@pass_state
def prune(state: State, older_than: When) -> None:
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


@cli.command()
@_format_option()
@click.option(
    "--clear",
    is_flag=True,
    help="Delete the polls listed (after you have kept what you need of them).",
)
@pass_state
def quarantine(state: State, fmt: str | None, clear: bool) -> None:
    """List the polls set aside because the database would not store them.

    Such a poll is recorded as a failed poll (outcome unstorable) and kept whole, as JSON, in
    the quarantine table; `recorder status` is unhealthy until they are cleared.

    Example:

        recorder quarantine --format json > set-aside.json && recorder quarantine --clear
    """
    from recorder import reports
    from recorder.retention import clear_quarantine

    engine = state.engine() if clear else state.reader()
    rows = reports.quarantine(engine)
    fmt = fmt or default_format()
    if fmt == "table":  # the poll itself is for files; people see how big it is
        shown = [row | {"payload": f"{len(row['payload']):,} chars of JSON"} for row in rows]
        render(shown, fmt, sys.stdout, reports.QUARANTINE_FIELDS)
    else:
        render(rows, fmt, sys.stdout, reports.QUARANTINE_FIELDS)
    if clear:
        deleted = clear_quarantine(engine, [row["id"] for row in rows])
        click.echo(f"cleared {deleted} quarantined poll(s)", err=True)


@cli.command()
@click.option(
    "--html",
    "html_file",
    required=True,
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    metavar="FILE",
    help="Write the report to FILE: one self-contained HTML page (replaced whole).",
)
@_window_options
@click.option(
    "--by",
    type=click.Choice(("type", "account", "service", "target")),
    help="Group the figures and charts by this key [default: every job together].",
)
@click.option(
    "--target", metavar="NAME|URL", help="Only this target, by name or polled URL [default: all]."
)
@pass_state
def report(
    state: State,
    html_file: Path,
    since: When | None,
    until: When | None,
    by: str | None,
    target: str | None,
) -> None:
    """Write an HTML report of a window (default: the last 24 h): the stats table, each
    group's duration histogram, finished jobs per hour, concurrency over time with the gaps
    in polling shaded, and the longest jobs with their bounds. The page loads nothing from
    anywhere and needs no JavaScript; its figures are also inside it as JSON
    (<script id="stats">), exactly what `recorder stats --format json` prints.

    Example:

        recorder report --html week.html --since 7d --by type
    """
    from recorder import html_report
    from recorder.timespec import window

    with _user_errors():
        now = _now()
        start, end = window(since, until, now)
        query = html_report.ReportQuery(start, end, now, by, target)
        page = html_report.render(state.reader(), query)
    _write_whole(html_file, page)
    click.echo(f"wrote {html_file} ({len(page.encode()):,} bytes)", err=True)


def _write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file beside it: never half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise click.ClickException(f"cannot write {path}: {exc.strerror or exc}") from None


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
    engine = state.engine(adopt=True)  # opening creates and upgrades
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
