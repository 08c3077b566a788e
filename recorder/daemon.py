"""The recording daemon: an APScheduler loop that polls, records, backs off and logs changes."""

from __future__ import annotations

import itertools
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.exc import SQLAlchemyError

from recorder.clock import SteadyClock
from recorder.db import DatabaseGone, one_line
from recorder.gaps import gap_threshold
from recorder.inference import Closed, Opened, Reopened
from recorder.lease import LeaseLost, RecordingLease
from recorder.logs import about, reopen
from recorder.metrics import TargetMetrics
from recorder.output import human_duration
from recorder.overdue import REFRESH_S, OverdueWatch, age_floor
from recorder.pipeline import Pipeline, Recorded
from recorder.snapshot import Failure, Outcome, PollResult
from recorder.stopping import STOP

__all__ = [
    "Daemon",
    "Recording",
    "ReloadRefused",
    "Reloader",
    "SideTask",
    "TargetBusy",
    "gap_threshold",
    "lease_ttl",
    "poll_once",
    "run_daemons",
]

log = logging.getLogger("recorder")

# Longest pause after repeated 429/5xx answers; a Retry-After is honoured up to RETRY_AFTER_CAP_S.
MAX_BACKOFF_S = 120.0
RETRY_AFTER_CAP_S = 3600.0
# How often the monitor looks for a stop request, and what drift counts as a clock step.
_WATCH_S = 0.2
_CLOCK_STEP_S = 2.0
_BACKOFF_OUTCOMES = frozenset({Outcome.RATE_LIMITED, Outcome.SERVER})
_LOUD_OUTCOMES = frozenset({Outcome.AUTH, Outcome.PAYMENT, Outcome.UNSTORABLE})


class SideTask(Protocol):
    """Work beside a target's polls on an interval of its own (recorder.capacity's reader)."""

    @property
    def interval(self) -> float:
        """Seconds between runs."""
        ...

    def tick(self) -> object:
        """One run; never raises."""
        ...

    def abort(self) -> None:
        """Cut the run in flight short: the recorder is stopping."""
        ...


class _Stopping(Exception):
    """The recorder is stopping: the poll in flight is not recorded."""


@dataclass
class Health:
    """Whether polls and writes succeed, to log only when that changes."""

    failing: str | None = None  # the failure kind, or None when healthy
    failures: int = 0
    since: float = 0.0


class _TargetLog:
    """The daemon's log: every line about its target starts with the target's name (and
    carries it as the record's `target`, for the JSON log)."""

    def __init__(self, name: str | None) -> None:
        self._prefix = "" if name is None else f"[{name}] "
        self._extra = about(name)

    def log(self, level: int, message: str, *args: object) -> None:
        """Log `message % args`, tagged; the name goes in as an argument, so a % in it is safe."""
        log.log(level, "%s" + message, self._prefix, *args, extra=self._extra)

    def info(self, message: str, *args: object) -> None:
        """Log at INFO."""
        self.log(logging.INFO, message, *args)

    def warning(self, message: str, *args: object) -> None:
        """Log at WARNING."""
        self.log(logging.WARNING, message, *args)

    def error(self, message: str, *args: object) -> None:
        """Log at ERROR."""
        self.log(logging.ERROR, message, *args)


class Daemon:
    """Polls one target on an interval until told to stop."""

    def __init__(
        self,
        pipeline: Pipeline,
        interval: float,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        on_poll: Callable[[Recorded | None], None] | None = None,
        lease_ttl_s: float | None = None,
        wall_clock: Callable[[], float] = time.time,
        abort: Callable[[], None] | None = None,
        name: str | None = None,
        metrics: TargetMetrics | None = None,
        overdue_refresh_s: float = REFRESH_S,
    ) -> None:
        """Prepare to poll every `interval` seconds; `on_poll` sees each tick's outcome.

        With `lease_ttl_s`, the daemon records only while it holds the target's lease: a second
        daemon on the same target stands by, and takes over the moment the first one's process
        lock is free (it stopped or died). `abort` cuts the poll in flight short on stop. `name`
        starts every log line about the target, as [name] (the CLI gives the config's name, or
        the URL), so that the lines of several targets in one log can be told apart. `metrics`
        keeps the target's figures for recorder.exporter, from the polls this daemon records.
        The p95 durations that make a job overdue (recorder.overdue) are read again at most
        every `overdue_refresh_s`.
        """
        if interval <= 0:
            raise ValueError("the interval must be positive")
        self.pipeline = pipeline
        self._source = pipeline.source
        pipeline.source = self._poll  # a poll that returns after a stop request is not recorded
        self.abort = abort
        self.name = name
        self.log = _TargetLog(name)
        self._stopped = False  # told to stop alone (its target left the config), see stop()
        self.fatal: Exception | None = None  # why the daemon stopped on its own, if it did
        self.interval = interval
        self.monotonic = monotonic
        self.wall_clock = wall_clock
        self.on_poll = on_poll
        self.lease_ttl_s = lease_ttl_s
        self.health = Health()
        self.polls = 0
        self.holding = lease_ttl_s is None
        self._lease: RecordingLease | None = None
        self._standing_by = False
        self._told_dropped = False
        self._last_write = monotonic()
        self._not_before = 0.0
        self._backoff_level = 0
        self.metrics = metrics
        self.overdue = OverdueWatch(overdue_refresh_s)

    def tick(self) -> Recorded | None:
        """One scheduled run: poll and record, unless standing by or backing off. Never raises."""
        if self._stopped or not self._hold():
            return None
        self._load_metrics()
        if self.monotonic() < self._not_before:
            self._renew_if_quiet()
            return None
        recorded: Recorded | None = None
        try:
            batch = self.pipeline.collect()
        except _Stopping:
            return None
        except LeaseLost as exc:
            self._lose(str(exc))
        except DatabaseGone as exc:
            self._stop_for(exc)
        except Exception as exc:  # a write that fails must never stop the polling
            waiting = len(self.pipeline.pending)
            self._set_health(
                "database",
                f"cannot write to the database ({waiting} poll(s) kept, to be written in order "
                f"when it is back): {_describe(exc)}",
            )
            self._report_dropped()
        else:
            self.polls += len(batch)
            self._last_write = self.monotonic()
            for each in batch:
                self._log_changes(each)
                if self.metrics is not None:
                    self.metrics.record(each)
            recorded = batch[-1]
            self._after(recorded)
            self._watch_running()
        if self.on_poll is not None:
            self.on_poll(recorded)
        return recorded

    def _poll(self) -> PollResult:
        result = self._source()
        if STOP.requested or self._stopped:
            raise _Stopping
        return result

    def stop(self) -> None:
        """Stop this daemon alone: no more polls, and the one in flight is cut short and not
        recorded. Safe from any thread; `release` the lease once its tick has returned."""
        self._stopped = True
        if self.abort is not None:
            self.abort()

    def _lose(self, why: str) -> None:
        self.log.warning("stopped recording: %s; standing by", why)
        self.pipeline.pending.clear()  # the new holder records from now on
        if self.metrics is not None:
            self.metrics.forget()  # read again on taking over: the holder counts meanwhile
        self.holding, self._standing_by = False, True
        if self._lease is not None:
            self._lease.lock.release()  # let the holder have the lock too

    def _stop_for(self, exc: Exception) -> None:
        lost = len(self.pipeline.pending)
        self.log.error("stopping: %s (%d poll(s) not written)", exc, lost)
        self.fatal = exc
        STOP.requested.append("database gone")

    def _load_metrics(self) -> None:
        """Start the figures from the database's counts, once, before recording."""
        if self.metrics is None or self.metrics.loaded:
            return
        try:
            target_id = self.pipeline.attach(self.wall_clock())
            with self.pipeline.store.engine.connect() as conn:
                self.metrics.load(conn, target_id)
        except Exception as exc:  # tried again at the next tick; the figures wait, polls don't
            self.log.log(logging.DEBUG, "cannot read the starting counts: %s", _describe(exc))

    def _watch_running(self) -> None:
        """Log the jobs that became overdue, and update the running jobs' figures."""
        target_id = self.pipeline.target_id
        if target_id is None:
            return
        now = self.wall_clock()
        watch = self.overdue
        if watch.due(now):
            try:
                with self.pipeline.store.engine.connect() as conn:
                    watch.refresh(conn, target_id, now)
            except Exception as exc:  # the p95s are kept as they were; polling goes on
                watch.postpone(now)
                self.log.warning("cannot read the p95 durations: %s", _describe(exc))
        open_jobs = self.pipeline.state.open_jobs.values()
        new, counts = watch.check(target_id, open_jobs, now)
        for job, figures in new:
            self.log.info(
                "overdue   %s type=%s running for %s (p95 of its type %s)",
                job.api_id,
                job.type or "?",
                human_duration(age_floor(now, job.start_at, job.start_max)),
                human_duration(figures.p95_s),
            )
        if self.metrics is not None:
            self.metrics.set_running(open_jobs, counts)

    def _hold(self) -> bool:
        """True when this daemon may record: it holds the lease, or just took it."""
        try:
            if self.holding:
                if self._still_holding():
                    return True
                self._lose("another recorder holds the target's lock")
                return False
            return self._take()
        except DatabaseGone as exc:
            self._stop_for(exc)
        except (SQLAlchemyError, OSError) as exc:
            self._set_health("database", f"cannot reach the database: {_describe(exc)}")
        return False

    def _still_holding(self) -> bool:
        if self._lease is None:
            return True
        try:
            return self._lease.keep()
        except (SQLAlchemyError, OSError):
            # The database is unreachable, so nobody can take the target over meanwhile: poll
            # on, and let the polls wait in the buffer (the lease is checked as they are written).
            return True

    def _take(self) -> bool:
        assert self.lease_ttl_s is not None
        if self._lease is None:
            target_id = self.pipeline.attach(self.wall_clock())
            self._lease = RecordingLease(
                self.pipeline.store.engine, target_id, self.lease_ttl_s, clock=self.wall_clock
            )
            self.pipeline.lease = self._lease
        holding = self._lease.acquire()
        if not holding.acquired:
            if not self._standing_by:
                self.log.warning(
                    "standby: %s is recorded by %s (last poll %s ago); taking over when it stops",
                    self.pipeline.url,
                    holding.holder,
                    human_duration(holding.silent_s),
                )
                self._standing_by = True
            return False
        if holding.previous is not None:
            self.log.warning(
                "took over %s from %s, which is no longer running",
                self.pipeline.url,
                holding.previous,
            )
        elif self._standing_by:
            self.log.info("recording %s: the lease is free", self.pipeline.url)
        self.pipeline.reload()  # the other recorder may have written since we last read
        self.holding, self._standing_by = True, False
        self._last_write = self.monotonic()
        return True

    def _report_dropped(self) -> None:
        if self.pipeline.dropped and not self._told_dropped:
            self.log.error(
                "%d poll(s) kept while the database is down: newer polls are dropped, and the "
                "record will show a gap",
                self.pipeline.max_pending,
            )
            self._told_dropped = True

    def _renew_if_quiet(self) -> None:
        if self._lease is None or self.lease_ttl_s is None:
            return
        if self.monotonic() - self._last_write < self.lease_ttl_s / 3:
            return
        try:
            self._lease.renew()
            self._last_write = self.monotonic()
        except LeaseLost as exc:
            self._lose(str(exc))
        except DatabaseGone as exc:
            self._stop_for(exc)
        except SQLAlchemyError as exc:
            self._set_health("database", f"cannot write to the database: {one_line(exc)}")

    def release(self) -> None:
        """Give up the lease, if held, so that a standby takes over at once."""
        if self._lease is not None and self.holding:
            try:
                self._lease.release()
            except (SQLAlchemyError, DatabaseGone) as exc:
                self.log.warning("could not release the lease: %s", _describe(exc))
            self.holding = False

    def _after(self, recorded: Recorded) -> None:
        answer = recorded.result.answer
        if isinstance(answer, Failure):
            self._set_health(
                answer.outcome.value, answer.message, loud=answer.outcome in _LOUD_OUTCOMES
            )
            if answer.outcome in _BACKOFF_OUTCOMES:
                self._back_off(answer.retry_after_s)
            return
        self._backoff_level = 0
        self._set_health(None, "")

    def _back_off(self, retry_after: float | None) -> None:
        self._backoff_level += 1
        if retry_after is not None:
            pause = min(max(retry_after, 0.0), RETRY_AFTER_CAP_S)
        else:
            pause = min(self.interval * 2 ** (self._backoff_level - 1), MAX_BACKOFF_S)
        # The next tick at or after this instant polls; ticks before it are skipped.
        self._not_before = self.monotonic() + pause - self.interval * 0.5
        if pause > self.interval:
            self.log.info("backing off: next poll in %s", human_duration(pause))

    def _set_health(self, failing: str | None, message: str, *, loud: bool = False) -> None:
        health = self.health
        if failing is None:
            if health.failing is not None:
                self.log.info(
                    "recovered after %d failed poll(s) over %s",
                    health.failures,
                    human_duration(self.monotonic() - health.since),
                )
            self.health = Health()
            return
        if health.failing != failing:
            level = logging.ERROR if loud else logging.WARNING
            self.log.log(level, "failing (%s): %s", failing, message)
            since = health.since if health.failing else self.monotonic()
            self.health = Health(failing, health.failures + 1, since)
        else:
            health.failures += 1

    def _log_changes(self, recorded: Recorded) -> None:
        change = recorded.change
        for opened in change.opened:
            self.log.info("appeared   %s", _describe_opened(opened))
        for reopened in change.reopened:
            self.log.info(
                "reappeared %s (its earlier end is withdrawn)", _describe_reopened(reopened)
            )
        for closed in change.closed:
            self.log.info("vanished   %s", _describe_closed(closed))

    def run(self, stop_after: float | None = None) -> None:
        """Poll until SIGINT or SIGTERM (or `stop_after` seconds): see run_daemons.

        Raises the error that made the daemon stop on its own (the database file vanished).
        """
        run_daemons([self], stop_after)


@dataclass(eq=False)
class Recording:
    """One target's work under run_daemons: its daemon, the tasks beside it (a capacity reader),
    the settings it runs with, and what to close once it has stopped (its clients)."""

    daemon: Daemon
    side_tasks: Sequence[SideTask] = ()
    settings: object = None  # compared on reload: equal settings leave the target running
    close: Callable[[], None] = field(default=lambda: None)


class ReloadRefused(Exception):
    """The config file cannot be used as it is now: one line, never a token."""


class Reloader(Protocol):
    """Where SIGHUP reads the targets again (recorder.cli: the --config file)."""

    def targets(self) -> Mapping[str, object]:
        """Each target's settings by name, as the file says now; ReloadRefused if unusable."""
        ...

    def build(self, name: str, settings: object) -> Recording:
        """The recording of the target `name`, not started."""
        ...


def run_daemons(
    daemons: Sequence[Daemon | Recording],
    stop_after: float | None = None,
    side_tasks: Sequence[SideTask] = (),
    reloader: Reloader | None = None,
) -> None:
    """Poll every daemon's target on its own schedule until SIGINT or SIGTERM (or `stop_after`
    seconds).

    Each daemon ticks on an executor of its own, one thread: a target whose server is slow or
    down holds up only its own polls, never another's. A signal is only recorded by its handler
    (see recorder.stopping); a monitor thread notices it within a fraction of a second, aborts
    every poll in flight (which is then not recorded) and shuts the scheduler down from outside
    the handler. Writing stops after the writes in progress, and every daemon gives up its
    lease. A signal that came during start-up stops the daemons at once. Raises the error that
    made a daemon stop them all on its own (the database file vanished).

    Each of `side_tasks` (and of a recording's) runs on an executor of its own too, so that a
    slow one delays no poll; it first runs a second after the start, and is cut short with the
    polls on stop.

    SIGHUP, noticed by the same monitor, opens the log file again (recorder.logs.reopen) and,
    with a `reloader`, applies the targets it reads now (see _Fleet.reload): a target whose
    settings are unchanged keeps running untouched, its schedule and its lease.
    """
    scheduler = BlockingScheduler(timezone=UTC)
    fleet = _Fleet(scheduler, side_tasks)
    for each in daemons:
        fleet.start(each if isinstance(each, Recording) else Recording(each))

    def hangup() -> None:
        try:
            reopened = reopen()
        except OSError as exc:
            log.error("SIGHUP: cannot open the log file again: %s", exc)
        else:
            if reopened:
                log.info("SIGHUP: log file opened again")
        if reloader is not None:
            fleet.reload(reloader)

    done = threading.Event()
    monitor = threading.Thread(
        target=_monitor,
        args=(scheduler, fleet.abort_all, done),
        kwargs={"on_hangup": hangup},
        name="recorder-monitor",
        daemon=True,
    )
    STOP.install((signal.SIGALRM,) if stop_after else ())
    if stop_after:
        signal.setitimer(signal.ITIMER_REAL, stop_after)
    monitor.start()
    try:
        if not STOP.requested:
            scheduler.start()
        log.info("stopping (%s): finishing the write in progress", ", ".join(STOP.requested))
        fleet.shutdown()
    finally:
        done.set()
        monitor.join()
        if stop_after:
            signal.setitimer(signal.ITIMER_REAL, 0)
        STOP.uninstall()
    fatal = next((daemon.fatal for daemon in fleet.daemons if daemon.fatal is not None), None)
    if fatal is not None:
        raise fatal


@dataclass
class _Slot:
    """Where a recording runs on the scheduler: its executors' aliases and its jobs' ids."""

    executors: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


class _Fleet:
    """The recordings on one scheduler, by target name: each started on executors of its own,
    and each stopped alone (SIGHUP) or with all the others (stop)."""

    def __init__(self, scheduler: BlockingScheduler, side_tasks: Sequence[SideTask]) -> None:
        """Nothing recorded yet; `side_tasks`, of no target, run from the start to the stop."""
        self.scheduler = scheduler
        self.recordings: dict[str, Recording] = {}
        self.daemons: list[Daemon] = []  # every one that ran, for the error that stopped one
        self.side_tasks = side_tasks
        self._slots: dict[str | None, _Slot] = {None: _Slot()}  # by name; None: side_tasks'
        self._numbers = itertools.count()
        self._add_side_tasks(side_tasks, self._slots[None], "x")

    def start(self, recording: Recording) -> None:
        """Poll the recording's target from now on, and run its side tasks."""
        daemon = recording.daemon
        number = next(self._numbers)
        name = daemon.name if daemon.name is not None else f"#{number}"
        slot = self._slots[name] = _Slot()
        alias = self._executor(slot, f"target-{number}", f"recorder-poll-{number}")
        self.scheduler.add_job(
            daemon.tick,
            IntervalTrigger(seconds=daemon.interval, timezone=UTC),
            id=f"poll-{number}",
            executor=alias,
            next_run_time=datetime.now(UTC),
            max_instances=1,
            coalesce=True,
            misfire_grace_time=max(1, int(daemon.interval)),
        )
        slot.jobs.append(f"poll-{number}")
        self.recordings[name] = recording
        self.daemons.append(daemon)
        self._add_side_tasks(recording.side_tasks, slot, str(number))

    def _add_side_tasks(self, tasks: Sequence[SideTask], slot: _Slot, prefix: str) -> None:
        for index, task in enumerate(tasks):
            key = f"{prefix}-{index}"
            alias = self._executor(slot, f"side-{key}", f"recorder-side-{key}")
            self.scheduler.add_job(
                task.tick,
                IntervalTrigger(seconds=task.interval, timezone=UTC),
                id=f"side-{key}",
                executor=alias,
                # Soon after the start, when the first polls have found their targets' ids.
                next_run_time=datetime.now(UTC) + timedelta(seconds=min(task.interval, 1.0)),
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(task.interval)),
            )
            slot.jobs.append(f"side-{key}")

    def _executor(self, slot: _Slot, alias: str, thread_name: str) -> str:
        pool = {"thread_name_prefix": thread_name}
        self.scheduler.add_executor(ThreadPoolExecutor(max_workers=1, pool_kwargs=pool), alias)
        slot.executors.append(alias)
        return alias

    def abort_all(self) -> None:
        """Cut every poll and side task in flight short: the recorder is stopping."""
        for recording in self.recordings.values():
            if recording.daemon.abort is not None:
                recording.daemon.abort()
            for task in recording.side_tasks:
                task.abort()
        for task in self.side_tasks:
            task.abort()

    def stop(self, name: str) -> None:
        """Stop one target alone: its jobs leave the schedule, its poll in flight is cut short
        and not recorded, the write in progress finishes, and its lease is released."""
        recording = self.recordings.pop(name)
        recording.daemon.stop()
        for task in recording.side_tasks:
            task.abort()
        slot = self._slots.pop(name)
        for job in slot.jobs:
            with suppress(Exception):  # JobLookupError: it was removed already
                self.scheduler.remove_job(job)
        for alias in slot.executors:
            self.scheduler.remove_executor(alias, shutdown=True)  # waits for the run in flight
        recording.daemon.release()
        if recording.daemon.metrics is not None:
            recording.daemon.metrics.forget()  # no longer exported
        recording.close()

    def reload(self, reloader: Reloader) -> None:
        """Apply the targets the reloader reads now: the removed and the changed ones stop (and
        release their leases), then the changed and the added ones start; the others run on
        untouched, not one poll lost or delayed. A file that cannot be used changes nothing."""
        try:
            wanted = reloader.targets()
        except ReloadRefused as exc:
            log.error("SIGHUP: config file not reloaded, the targets run on as they were: %s", exc)
            return
        running = self.recordings
        changed = [n for n in running if n in wanted and wanted[n] != running[n].settings]
        removed = [n for n in running if n not in wanted]
        added = [n for n in wanted if n not in running]
        unchanged = len(running) - len(changed) - len(removed)
        for name in [*removed, *changed]:
            self.stop(name)
            why = "removed from" if name in removed else "changed in"
            log.info("[%s] stopped: %s the config file", name, why, extra=about(name))
        for name in [n for n in wanted if n in changed or n in added]:
            try:
                self.start(reloader.build(name, wanted[name]))
            except Exception as exc:  # one target that cannot start stops no other
                log.error("[%s] cannot start: %s", name, _describe(exc), extra=about(name))
        log.info(
            "SIGHUP: config file reloaded: %d target(s) added, %d changed, %d removed, "
            "%d unchanged",
            len(added),
            len(changed),
            len(removed),
            unchanged,
        )

    def shutdown(self) -> None:
        """After the scheduler stopped: let the runs in flight finish, then give up the leases
        and close the clients."""
        for slot in self._slots.values():
            for alias in slot.executors:
                with suppress(Exception):  # KeyError: never started (a stop during start-up)
                    self.scheduler.remove_executor(alias, shutdown=True)
        for recording in self.recordings.values():
            recording.daemon.release()
            recording.close()


def _monitor(
    scheduler: BlockingScheduler,
    on_stop: Callable[[], None],
    done: threading.Event,
    steady_clock: Callable[[], SteadyClock] = SteadyClock,
    on_hangup: Callable[[], None] | None = None,
) -> None:
    """Stop the scheduler when a signal asked for it; call `on_hangup` (on this thread, never
    in the handler) after each SIGHUP; re-time the scheduler when the host clock steps.

    APScheduler times its runs on the wall clock: after a step back of an hour it would wait an
    hour for the next poll. Waiting here is on the monotonic clock, so a step shows as drift.
    """
    steady = steady_clock()
    stopping = False
    hangups = 0  # a SIGHUP during start-up is applied at once
    while not done.wait(_WATCH_S):
        if STOP.requested:
            if not stopping:
                on_stop()
                stopping = True
            if scheduler.running:
                scheduler.shutdown(wait=False)
                return
            continue  # asked before the scheduler started: it may be starting right now
        if STOP.hangups != hangups and on_hangup is not None and scheduler.running:
            hangups = STOP.hangups
            on_hangup()
            continue
        drift = steady.drift()
        if abs(drift) > _CLOCK_STEP_S and scheduler.running:
            log.warning("the host clock stepped by %+.1fs; polling again now", drift)
            steady = steady_clock()
            now = datetime.now(UTC)
            for job in scheduler.get_jobs():
                scheduler.modify_job(job.id, next_run_time=now)


class TargetBusy(Exception):
    """Another recorder holds the target; the message says which."""


def lease_ttl(interval: float, timeout: float) -> float:
    """How long a recorder may be silent before another takes its target over."""
    return 3 * interval + timeout


def poll_once(
    pipeline: Pipeline, timeout: float, clock: Callable[[], float] = time.time
) -> Recorded:
    """One poll, recorded, unless a daemon is recording the target (then TargetBusy)."""
    lease = RecordingLease(
        pipeline.store.engine, pipeline.attach(clock()), timeout + 5.0, clock=clock
    )
    holding = lease.acquire()
    if not holding.acquired:
        raise TargetBusy(
            f"{pipeline.url} is being recorded by {holding.holder} (last sign of life "
            f"{human_duration(holding.silent_s)} ago); not polling"
        )
    pipeline.lease = lease
    try:
        return pipeline.poll_once()
    finally:
        lease.release()


def _describe(exc: BaseException) -> str:
    text = one_line(exc)
    return text if isinstance(exc, SQLAlchemyError) else f"{type(exc).__name__}: {text}"


def _describe_opened(event: Opened) -> str:
    job, item = event.job, event.item
    parts = [job.api_id, f"type={item.type or '?'}"]
    if item.account:
        parts.append(f"account={item.account}")
    parts.append(f"start_source={job.start_source.value}")
    return " ".join(parts)


def _describe_reopened(event: Reopened) -> str:
    return event.job.api_id


def _describe_closed(event: Closed) -> str:
    duration = event.duration
    low = human_duration(duration.lo)
    high = human_duration(duration.hi) if duration.hi is not None else "?"
    text = f"{event.api_id} after {human_duration(duration.at)} ({low}..{high})"
    return text + (" across a gap in the polls" if event.across_gap else "")
