"""Outcomes: after a job vanished from the list, what the API says became of it.

Opt-in per target (``outcomes = true``, ``recorder run --outcomes``), for the services that
answer it (PixVerse: ``GET /v2/pixverse/videos/{id}``, ``/images/{id}``, beside the scheduler).

* The work queue is the database. Each tick adopts the jobs that vanished since the last tick
  (their ``vanished`` transitions) as pending rows of ``outcomes``; at its first tick, those that
  vanished within the last `HORIZON_S` (30 minutes), so that enabling outcomes on a long history
  asks about the last half hour only, never the years before. A pending row holds its attempt
  count and its next attempt's time: a restarted recorder resumes where the last one stopped,
  backoff included.
* An answer is final (``completed``, ``failed``, ``moderated``), or not yet: a 404 (PixVerse's
  "still processing"), a 200 that says QUEUED or GENERATING, or an answer that cannot be read
  (not JSON, wrong types, too large: logged for the job). Those are asked again after 15 s, 30 s,
  1 min… up to 5 min between attempts; the first such answer at or after `HORIZON_S` since the job
  vanished (its end's upper bound) records ``unknown``.
* Trouble of the API rather than of the job (401/403/402, 429, 5xx, network, timeout) pauses
  the target's asking (Retry-After, else 10 s doubling to 10 min), touches no job's row, and
  counts no job's attempt: an outage cannot turn outcomes into ``unknown`` by itself.
* At most `rate_per_min` requests in any 60 seconds per target (`RateLimit`, a sliding window).
* The times an answer carries (``created_at``; a finish time when it has one) are stored and
  compared with the job's inferred bounds: a contradiction beyond `TOLERANCE_S` is recorded in
  ``disagreement`` and logged. The bounds are never moved for it.
* The asking runs on a thread of its own beside the polls (a SideTask of recorder.daemon), and
  only while this process records the target.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol
from urllib.parse import quote, urlsplit, urlunsplit

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from recorder.clock import SteadyClock, storable, to_datetime
from recorder.config import DEFAULT_OUTCOME_RATE, OUTCOME_RATE_RANGE
from recorder.db import one_line
from recorder.logs import about
from recorder.models import (
    Job,
    JobOutcome,
    JobStatus,
    OutcomeKind,
    Poll,
    Transition,
    TransitionKind,
    has_status,
    succeeded,
)
from recorder.output import human_duration
from recorder.parse import PayloadError, decode_json, parse_started
from recorder.snapshot import Failure, Outcome

__all__ = [
    "DEFAULT_RATE",
    "HORIZON_S",
    "MAX_BODY_BYTES",
    "RATE_RANGE",
    "NotYet",
    "OutcomeWorker",
    "RateLimit",
    "Settled",
    "Unavailable",
    "cross_check",
    "outcome_url",
    "parse_outcome",
    "read_answer",
]

log = logging.getLogger("recorder")

HORIZON_S: Final = 1800.0  # no final answer this long after a job vanished: unknown
DEFAULT_RATE: Final = DEFAULT_OUTCOME_RATE  # requests per minute per target
RATE_RANGE: Final = OUTCOME_RATE_RANGE
TICK_S: Final = 1.0  # how often the pending rows are looked at
TOLERANCE_S: Final = 60.0  # how far the API's times may lie outside the bounds unremarked
FIRST_RETRY_S: Final = 15.0
MAX_RETRY_S: Final = 300.0
FIRST_PAUSE_S: Final = 10.0
MAX_PAUSE_S: Final = 600.0
AUTH_PAUSE_S: Final = 300.0  # a 401/402/403 needs a person; asking often won't help
RETRY_AFTER_CAP_S: Final = 3600.0
MAX_BODY_BYTES: Final = 1024 * 1024  # a job's page is a few KB
BATCH: Final = 50  # pending rows read per tick at most

# Which job types have a page, and where: PixVerse's first list had no type (videos only).
_PAGES: Final[dict[str | None, str]] = {"video": "videos", "image": "images", None: "videos"}
_FINAL_NAMES: Final = {
    "COMPLETED": OutcomeKind.COMPLETED,
    "FAILED": OutcomeKind.FAILED,
    "MODERATED": OutcomeKind.MODERATED,
}
_PROCESSING_NAMES: Final = frozenset({"QUEUED", "GENERATING"})
# PixVerse's status numbers (api-notes.md): 8 = FAILED is a guess from PixVerse's own API.
_FINAL_NUMBERS: Final = {1: OutcomeKind.COMPLETED, 7: OutcomeKind.MODERATED, 8: OutcomeKind.FAILED}
_PROCESSING_NUMBERS: Final = frozenset({5, 9, 10})
_CREATED_KEYS: Final = ("created_at",)
_FINISHED_KEYS: Final = ("finished_at", "completed_at", "updated_at")
# The API's trouble, not the job's: pause the target's asking, count no attempt.
_UNAVAILABLE: Final = frozenset(
    {
        Outcome.AUTH,
        Outcome.PAYMENT,
        Outcome.RATE_LIMITED,
        Outcome.SERVER,
        Outcome.NETWORK,
        Outcome.TIMEOUT,
    }
)
_SHOWN_CHARS: Final = 40


# --- answers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settled:
    """A final answer: the outcome, and the times it carried (epoch seconds, None if none)."""

    outcome: OutcomeKind
    created_at: float | None = None
    finished_at: float | None = None
    dropped: tuple[str, ...] = ()  # fields present but unusable, for the log


@dataclass(frozen=True, slots=True)
class NotYet:
    """No final answer for this job yet: still processing, or an answer that cannot be read
    (`unusable`); asked again later, ``unknown`` after the horizon."""

    why: str
    unusable: bool = False


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The API's trouble, not the job's (401, 429, 5xx, network): pause, count no attempt."""

    why: str
    kind: Outcome
    retry_after_s: float | None = None


Answer = Settled | NotYet | Unavailable


def outcome_url(scheduler_url: str, api_id: str, job_type: str | None) -> str | None:
    """The page of job `api_id` beside the scheduler list at `scheduler_url`
    (``…/v2/pixverse/scheduler/`` → ``…/v2/pixverse/videos/<id>``, ``/images/<id>`` for an
    image); None when its type has no page or the URL has no ``scheduler`` segment."""
    page = _PAGES.get(job_type)
    if page is None:
        return None
    parts = urlsplit(scheduler_url)
    segments = parts.path.rstrip("/").split("/")
    if "scheduler" not in segments:
        return None
    base = segments[: len(segments) - 1 - segments[::-1].index("scheduler")]
    path = "/".join([*base, page, quote(api_id, safe="")])
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def read_answer(status: int | None, body: bytes | Failure, job_type: str | None) -> Answer:
    """What one GET of a job's page said: `body` as the client returned it."""
    if not isinstance(body, Failure):
        return parse_outcome(body, job_type)
    if status == 404:
        return NotYet("HTTP 404: still processing")
    if body.outcome in _UNAVAILABLE:
        return Unavailable(body.message, body.outcome, body.retry_after_s)
    return NotYet(body.message, unusable=True)  # a 3xx, another 4xx, a body too large


def parse_outcome(body: bytes, job_type: str | None) -> Settled | NotYet:
    """A 200 answer of a job's page: final, or not yet (processing, or unusable: every byte of
    it is the API's, so nothing in it may do more than make this one answer unusable)."""
    try:
        data = decode_json(body)
    except PayloadError as exc:
        return NotYet(str(exc), unusable=True)
    if not isinstance(data, dict):
        return NotYet(f"answer is {_kind(data)}, not a JSON object", unusable=True)
    kind = "image" if job_type == "image" else "video"
    status = _status(data, kind)
    if not isinstance(status, OutcomeKind):
        return status
    dropped: list[str] = []
    created = _time(data, _CREATED_KEYS, dropped)
    finished = _time(data, _FINISHED_KEYS, dropped)
    return Settled(status, created, finished, tuple(dropped))


def _status(data: dict[Any, Any], kind: str) -> OutcomeKind | NotYet:
    name_key, number_key, final_key = (
        f"{kind}_status_name",
        f"{kind}_status",
        f"{kind}_status_final",
    )
    name = data.get(name_key)
    if name is not None:
        if not isinstance(name, str):
            return NotYet(f"{name_key} is {_kind(name)}, not a string", unusable=True)
        word = name.strip().upper()
        if word in _FINAL_NAMES:
            return _FINAL_NAMES[word]
        if word in _PROCESSING_NAMES:
            return NotYet(f"{name_key} {word}: still processing")
        return NotYet(f"unknown {name_key} {_show(name)}", unusable=True)
    number = data.get(number_key)
    if number is not None:
        if isinstance(number, bool) or not isinstance(number, int):
            return NotYet(f"{number_key} is {_kind(number)}, not an integer", unusable=True)
        if number in _FINAL_NUMBERS:
            return _FINAL_NUMBERS[number]
        if number in _PROCESSING_NUMBERS:
            return NotYet(f"{number_key} {number}: still processing")
        return NotYet(f"unknown {number_key} {_show(str(number))}", unusable=True)
    if data.get(final_key) is False:
        return NotYet(f"{final_key} false: still processing")
    return NotYet(f"no {name_key} or {number_key} in the answer", unusable=True)


def _time(data: dict[Any, Any], keys: tuple[str, ...], dropped: list[str]) -> float | None:
    """The first of `keys` present, as epoch seconds a database can hold; an unusable value is
    dropped (and named in `dropped`): a time is only a cross-check, never worth the outcome."""
    for key in keys:
        value = data.get(key)
        if value is None:
            continue
        moment = storable(parse_started(value))
        if moment is None:
            dropped.append(key)
        return moment
    return None


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"


def _show(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "…")


# --- the cross-check -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Bounds:
    """A finished job's inferred bounds, epoch seconds (None: unbounded on that side)."""

    start_min: float | None
    start_max: float | None
    end_min: float | None
    end_max: float | None


def cross_check(bounds: Bounds, answer: Settled, tolerance_s: float = TOLERANCE_S) -> str | None:
    """How the times of `answer` contradict `bounds` by more than `tolerance_s`, or None.

    ``created_at`` should fall within the start's bounds, a finish time within the end's.
    """
    problems = []
    for label, moment, low, high in (
        ("created_at", answer.created_at, bounds.start_min, bounds.start_max),
        ("finished", answer.finished_at, bounds.end_min, bounds.end_max),
    ):
        if moment is None:
            continue
        what = "start" if label == "created_at" else "end"
        if high is not None and moment > high + tolerance_s:
            late = human_duration(moment - high)
            problems.append(f"{label} {_iso(moment)} is {late} after the {what}'s upper bound")
        elif low is not None and moment < low - tolerance_s:
            early = human_duration(low - moment)
            problems.append(f"{label} {_iso(moment)} is {early} before the {what}'s lower bound")
    return "; ".join(problems) or None


def _iso(moment: float) -> str:
    return to_datetime(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- the rate limit ------------------------------------------------------------------------------


class RateLimit:
    """At most `per_minute` requests in any 60 seconds: the times of the latest `per_minute`
    requests, a request allowed when the oldest of them is a minute old."""

    def __init__(self, per_minute: int, clock: Callable[[], float]) -> None:
        """Allow `per_minute` requests per minute by `clock` (seconds)."""
        if per_minute < 1:
            raise ValueError("the rate must be at least 1 request per minute")
        self.per_minute = per_minute
        self.clock = clock
        self._sent: deque[float] = deque()

    def available(self) -> int:
        """How many requests may be made now."""
        horizon = self.clock() - 60.0
        while self._sent and self._sent[0] <= horizon:
            self._sent.popleft()
        return self.per_minute - len(self._sent)

    def take(self) -> bool:
        """Count one request now, if one may be made; False (and nothing counted) if not."""
        if self.available() <= 0:
            return False
        self._sent.append(self.clock())
        return True


# --- the worker ----------------------------------------------------------------------------------


class Fetcher(Protocol):
    """What the worker asks through: recorder.client.SchedulerClient."""

    def fetch(self, url: str | None = None) -> tuple[int | None, bytes | Failure]:
        """GET `url`; the status and the 2xx body, or the Failure."""
        ...

    def abort(self) -> None:
        """Cut the request in flight short, and fail every later one."""
        ...


@dataclass(frozen=True, slots=True)
class _Pending:
    job_id: int
    api_id: str
    type: str | None
    attempts: int
    bounds: Bounds
    vanished_by: float  # the end's upper bound (else its estimate): the horizon counts from it


class OutcomeWorker:
    """Asks one target's vanished jobs' outcomes and stores them (a SideTask)."""

    def __init__(
        self,
        engine: Engine,
        client: Fetcher,
        scheduler_url: str,
        target_id: Callable[[], int | None],
        *,
        name: str,
        rate_per_min: int = DEFAULT_RATE,
        clock: Callable[[], float] | None = None,
        interval: float = TICK_S,
        horizon_s: float = HORIZON_S,
    ) -> None:
        """Prepare to ask through `client` (on the target's scheduler URL, `scheduler_url`).

        `target_id` says which target's jobs to ask about, or None while this process must not
        (the pipeline has not attached yet, or another recorder holds the target).
        """
        if interval <= 0:
            raise ValueError("the interval must be positive")
        self.engine = engine
        self.client = client
        self.scheduler_url = scheduler_url
        self.target_id = target_id
        self.name = name
        self.clock = clock if clock is not None else SteadyClock()
        self.limit = RateLimit(rate_per_min, self.clock)
        self._interval = interval
        self.horizon_s = horizon_s
        self.requests = 0  # requests made
        self.failing: str | None = None  # why the asking is paused, if it is
        self._cursor: int | None = None  # the latest poll whose vanished jobs were adopted
        self._not_before = 0.0
        self._pauses = 0
        self._since = 0.0

    @property
    def interval(self) -> float:
        """Seconds between ticks."""
        return self._interval

    def abort(self) -> None:
        """Cut the request in flight, if any, and fail every later one (the recorder stops)."""
        self.client.abort()

    def tick(self) -> int:
        """Adopt the newly vanished jobs, then ask about those due, as the rate allows; returns
        the requests made. Never raises."""
        target_id = self.target_id()
        if target_id is None:
            return 0
        sent = 0
        try:
            self._adopt(target_id, self.clock())
            if self.clock() < self._not_before:
                return 0
            for job in self._due(target_id, self.clock(), min(BATCH, self.limit.available())):
                url = outcome_url(self.scheduler_url, job.api_id, job.type)
                if url is None:
                    continue  # its type has no page (adopted by an older rule): left pending
                if not self.limit.take():
                    break
                status, body = self.client.fetch(url)
                sent += 1
                self.requests += 1
                answer = read_answer(status, body, job.type)
                if isinstance(answer, Unavailable):
                    self._pause(answer)
                    return sent
                self._settle(job, answer, self.clock())
            self._recover()
        except SQLAlchemyError as exc:
            self._fail("database", f"cannot use the database: {one_line(exc)}", FIRST_PAUSE_S)
        except Exception as exc:  # the asking must never stop the recording, nor itself
            self._fail("error", f"{type(exc).__name__}: {one_line(exc)}", FIRST_PAUSE_S)
        return sent

    # the queue

    def _adopt(self, target_id: int, now: float) -> None:
        """Pending rows for the jobs that vanished since the last tick (at the first tick:
        within the horizon) and have none."""
        try:
            latest = self._adopt_since(target_id, now)
        except IntegrityError:
            return  # adopted meanwhile, by a recorder that held the target a moment ago
        if latest is not None:
            self._cursor = latest

    def _adopt_since(self, target_id: int, now: float) -> int | None:
        """_adopt in one transaction; the latest poll it looked at, if any."""
        with self.engine.begin() as conn:
            latest = conn.scalar(select(func.max(Poll.id)).where(Poll.target_id == target_id))
            if latest is None:
                return None
            query = (
                select(Transition.job_id, Job.type)
                .join(Poll, Poll.id == Transition.poll_id)
                .join(Job, Job.id == Transition.job_id)
                .where(
                    Poll.target_id == target_id,
                    succeeded(),
                    Poll.id <= latest,
                    Transition.kind == TransitionKind.VANISHED.value,
                    has_status(JobStatus.FINISHED),
                    ~select(JobOutcome.job_id)
                    .where(JobOutcome.job_id == Transition.job_id)
                    .exists(),
                )
            )
            if self._cursor is None:
                query = query.where(Poll.sent_at >= to_datetime(now - self.horizon_s))
            else:
                query = query.where(Poll.id > self._cursor)
            rows = [
                {"job_id": row.job_id, "attempts": 0, "next_attempt_at": to_datetime(now)}
                for row in conn.execute(query)
                if row.type is None or row.type in _PAGES
            ]
            if rows:
                conn.execute(insert(JobOutcome), list({r["job_id"]: r for r in rows}.values()))
        return int(latest)

    def _due(self, target_id: int, now: float, limit: int) -> list[_Pending]:
        if limit <= 0:
            return []
        query = (
            select(
                JobOutcome.job_id,
                JobOutcome.attempts,
                Job.api_id,
                Job.type,
                Job.start_min,
                Job.start_max,
                Job.end_at,
                Job.end_min,
                Job.end_max,
            )
            .join(Job, Job.id == JobOutcome.job_id)
            .where(
                JobOutcome.outcome.is_(None),
                JobOutcome.next_attempt_at <= to_datetime(now),
                Job.target_id == target_id,
                has_status(JobStatus.FINISHED),
            )
            .order_by(JobOutcome.next_attempt_at, JobOutcome.job_id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_pending(row) for row in conn.execute(query)]

    def _settle(self, job: _Pending, answer: Settled | NotYet, now: float) -> None:
        """Store what one answer says about `job`, and log it."""
        values: dict[str, Any] = {"attempts": job.attempts + 1, "checked_at": to_datetime(now)}
        if isinstance(answer, Settled):
            disagreement = cross_check(job.bounds, answer)
            values |= {
                "outcome": answer.outcome.value,
                "next_attempt_at": None,
                "api_created_at": _datetime(answer.created_at),
                "api_finished_at": _datetime(answer.finished_at),
                "disagreement": disagreement,
            }
            self._write(job, values)
            self._log(logging.INFO, "outcome    %s %s", job.api_id, answer.outcome.value)
            if answer.dropped:
                self._log(
                    logging.WARNING,
                    "outcome    %s: ignored the answer's unusable %s",
                    job.api_id,
                    ", ".join(answer.dropped),
                )
            if disagreement is not None:
                self._log(
                    logging.WARNING,
                    "outcome    %s: the API's times disagree with the recorded bounds "
                    "(kept as they are): %s",
                    job.api_id,
                    disagreement,
                )
            return
        if now >= job.vanished_by + self.horizon_s:
            values |= {"outcome": OutcomeKind.UNKNOWN.value, "next_attempt_at": None}
            self._write(job, values)
            self._log(
                logging.INFO,
                "outcome    %s unknown: not final %s after it vanished (%s)",
                job.api_id,
                human_duration(now - job.vanished_by),
                answer.why,
            )
            return
        wait = min(FIRST_RETRY_S * 2 ** min(job.attempts, 16), MAX_RETRY_S)
        due = min(now + wait, job.vanished_by + self.horizon_s)
        values["next_attempt_at"] = to_datetime(due)
        self._write(job, values)
        if answer.unusable:
            self._log(
                logging.WARNING,
                "outcome    %s: unusable answer (%s); asking again in %s",
                job.api_id,
                answer.why,
                human_duration(due - now),
            )

    def _write(self, job: _Pending, values: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            _update(conn, job.job_id, values)

    # the target's health

    def _pause(self, answer: Unavailable) -> None:
        self._pauses += 1
        if answer.retry_after_s is not None:
            pause = min(max(answer.retry_after_s, 0.0), RETRY_AFTER_CAP_S)
        elif answer.kind in (Outcome.AUTH, Outcome.PAYMENT):
            pause = AUTH_PAUSE_S
        else:
            pause = min(FIRST_PAUSE_S * 2 ** min(self._pauses - 1, 16), MAX_PAUSE_S)
        self._fail(answer.kind.value, answer.why, pause)

    def _fail(self, kind: str, message: str, pause: float) -> None:
        self._not_before = self.clock() + pause
        if self.failing != kind:
            if self.failing is None:
                self._since = self.clock()
            self._log(
                logging.WARNING,
                "outcomes: failing (%s): %s; asking again in %s",
                kind,
                message,
                human_duration(pause),
            )
            self.failing = kind

    def _recover(self) -> None:
        if self.failing is not None:
            self._log(
                logging.INFO,
                "outcomes: recovered after %s",
                human_duration(self.clock() - self._since),
            )
        self.failing, self._pauses = None, 0

    def _log(self, level: int, message: str, *args: object) -> None:
        log.log(level, "[%s] " + message, self.name, *args, extra=about(self.name))


def _pending(row: Any) -> _Pending:
    def ts(value: datetime | None) -> float | None:
        return None if value is None else value.timestamp()

    bounds = Bounds(ts(row.start_min), ts(row.start_max), ts(row.end_min), ts(row.end_max))
    vanished = bounds.end_max if bounds.end_max is not None else row.end_at.timestamp()
    return _Pending(row.job_id, row.api_id, row.type, int(row.attempts), bounds, vanished)


def _update(conn: Connection, job_id: int, values: dict[str, Any]) -> None:
    # Only a pending row changes: a final one is never asked about again.
    conn.execute(
        update(JobOutcome)
        .where(JobOutcome.job_id == job_id, JobOutcome.outcome.is_(None))
        .values(**values)
    )


def _datetime(moment: float | None) -> datetime | None:
    if moment is None or not math.isfinite(moment):
        return None
    return to_datetime(moment)
