"""A seeded, realistic fake of the useapi.net scheduler endpoints, in every service's shape.

The world (which job runs on which account, and when) is a pure function of the seed and of the
clock's first reading: arrivals are generated lazily in time order, so polling often, rarely or not
at all never changes the ground truth. Faults are drawn per request from a separate RNG, so turning
them on never changes the world either. Standard library only.

`SimConfig.service` picks the answer's shape (PixVerse by default): the ids, keys and envelope of
that service's real answer, at its real path, with /scheduler/available beside it where the
service has one. The shape is only a rendering: the same seed gives the same jobs (starts, ends,
types, accounts) for every service, whose ids alone are spelled the service's way. The shapes are
written here from the upstream documentation, not taken from recorder.services: this is the
independent truth the adapters are tested against. `SimulatorGroup` serves several services from
one server, each at its own path with its own world.

PixVerse also answers each job's page, as the outcome of a job is asked after it left the list:
``/v2/pixverse/videos/{id}`` is 404 while the video runs and for `SimConfig.outcome_delay_s`
after it ended, then the video with its final status; ``/images/{id}`` answers at once (still
GENERATING while the image runs). A job's outcome is drawn from the seed and its number (mostly
COMPLETED, some FAILED or MODERATED), never from the world's RNG streams; an id the world never
ran is 404 forever.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType, TracebackType
from typing import Any, Final, cast
from urllib.parse import unquote, urlsplit

__all__ = [
    "FAULT_KINDS",
    "SERVICE_PATHS",
    "Account",
    "Faults",
    "JobKind",
    "ManualClock",
    "SimConfig",
    "Simulator",
    "SimulatorGroup",
    "TrueJob",
    "format_elapsed",
    "format_started",
    "serve_forever",
]

Clock = Callable[[], float]

FAULT_KINDS: Final = ("server_error", "rate_limit", "slow", "garbage", "empty")
SERVER_ERROR_CODES: Final = (500, 502, 503, 504, 596)
DURATION_SIGMA: Final = 0.5
MIN_DURATION_S: Final = 1.0
REPLY_REF_P: Final = 0.3
REPLY_URL_P: Final = 0.2
REPLY_URL: Final = "https://hooks.example.com/useapi/{service}"
UNAUTHORIZED_BODY: Final = {"error": "Unauthorized", "code": 401}
NOT_FOUND_BODY: Final = {"error": "Not Found", "code": 404}
JSON_TYPE: Final = "application/json"
HTML_TYPE: Final = "text/html; charset=UTF-8"
# The outcomes of PixVerse's jobs (name, status number), drawn per job with these weights.
OUTCOMES: Final = (("COMPLETED", 1, 0.85), ("FAILED", 8, 0.10), ("MODERATED", 7, 0.05))
OUTCOME_DELAY_S: Final = 20.0


# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobKind:
    """A job type, its Poisson arrival rate and its mean (lognormal) duration."""

    type: str
    rate_per_min: float
    mean_duration_s: float

    def __post_init__(self) -> None:
        if self.rate_per_min < 0:
            raise ValueError(f"rate_per_min must be >= 0, got {self.rate_per_min}")
        if self.mean_duration_s <= 0:
            raise ValueError(f"mean_duration_s must be > 0, got {self.mean_duration_s}")


@dataclass(frozen=True, slots=True)
class Account:
    """An account configured at useapi.net, with its concurrency limit.

    `email` is the account's name in the answers: an email for most services; TemPolor and
    Riffusion name theirs by a user id, which can be given here instead.
    """

    email: str
    user_id: str
    max_jobs: int

    def __post_init__(self) -> None:
        if self.max_jobs < 1:
            raise ValueError(f"max_jobs must be >= 1, got {self.max_jobs}")


@dataclass(frozen=True, slots=True)
class Faults:
    """Per-request fault probabilities, and the server clock's skew."""

    server_error: float = 0
    rate_limit: float = 0
    retry_after_s: int | None = 2
    slow: float = 0
    slow_s: float = 2.0
    garbage: float = 0
    empty: float = 0
    skew_s: float = 0.0

    def __post_init__(self) -> None:
        for name in FAULT_KINDS:
            p = getattr(self, name)
            if not 0 <= p <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        # These replace the answer, so at most one applies per request; `slow` only delays it.
        if self.server_error + self.rate_limit + self.garbage + self.empty > 1:
            raise ValueError("server_error + rate_limit + garbage + empty must not exceed 1")
        if self.slow_s < 0:
            raise ValueError(f"slow_s must be >= 0, got {self.slow_s}")
        if self.retry_after_s is not None and self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be >= 0, got {self.retry_after_s}")


DEFAULT_KINDS: Final = (
    JobKind("video", rate_per_min=2.0, mean_duration_s=90.0),
    JobKind("image", rate_per_min=4.0, mean_duration_s=20.0),
)
# One useapi user (one token) with two PixVerse accounts; the hyphen in the second email is legal
# and exercises id parsers that split on '-'.
DEFAULT_ACCOUNTS: Final = (
    Account("alice@example.com", "12345", max_jobs=3),
    Account("render-farm@example.org", "12345", max_jobs=5),
)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything that defines a simulated world and its endpoint."""

    seed: int = 0
    token: str = "sim-token"  # noqa: S105 -- a public test credential, not a secret
    kinds: tuple[JobKind, ...] = DEFAULT_KINDS
    accounts: tuple[Account, ...] = DEFAULT_ACCOUNTS
    faults: Faults = field(default_factory=Faults)
    initial_jobs: int = 0
    path: str | None = None  # None: the service's real path (SERVICE_PATHS)
    service: str = "pixverse"
    # How long a finished video's page stays 404 ("still processing") after it left the list.
    outcome_delay_s: float = OUTCOME_DELAY_S

    def __post_init__(self) -> None:
        if self.service not in _SHAPES:
            known = ", ".join(_SHAPES)
            raise ValueError(f"unknown service {self.service!r}; simulated: {known}")
        if not self.token:
            raise ValueError("token must not be empty")
        if not self.accounts:
            raise ValueError("at least one account is needed")
        emails = [a.email for a in self.accounts]
        if len(set(emails)) != len(emails):
            raise ValueError("account emails must be unique")
        capacity = sum(a.max_jobs for a in self.accounts)
        if not 0 <= self.initial_jobs <= capacity:
            raise ValueError(f"initial_jobs must be in [0, {capacity}], got {self.initial_jobs}")
        if self.initial_jobs and not self.kinds:
            raise ValueError("initial_jobs needs at least one job kind")
        if self.path is not None and not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")
        if not 0 <= self.outcome_delay_s <= 86400:
            raise ValueError(f"outcome_delay_s must be in [0, 86400], got {self.outcome_delay_s}")

    @property
    def list_path(self) -> str:
        """The path the list is served at: `path`, else the service's real one."""
        return self.path if self.path is not None else _SHAPES[self.service].path


# --- formatting ----------------------------------------------------------------------------------


def format_started(t: float) -> str:
    """Format epoch seconds as the API does: ISO-8601 UTC with milliseconds and ``Z``."""
    ms = round(t * 1000)
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def format_elapsed(seconds: float) -> str:
    """Format whole elapsed seconds as ``MM:SS``; minutes go past 59 (``75:03``)."""
    minutes, secs = divmod(_whole_seconds(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _whole_seconds(seconds: float) -> int:
    # The epsilon absorbs float error in `now - start` for millisecond-rounded starts.
    return max(0, math.floor(seconds + 1e-6))


# --- the world -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrueJob:
    """A job as it really ran, on the true (recorder's) clock; ``end`` may be in the future.

    ``api_id`` is the id the service lists it by; every other field is the same whatever the
    service's shape.
    """

    api_id: str
    type: str
    account: str
    user_id: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class _Job:
    truth: TrueJob
    number: int  # drawn from the seed: Kling's id, and the job part of most others
    token: str  # a UUID derived from seed and number, for the services whose ids are UUIDs
    reply_url: str | None
    reply_ref: str | None


class ManualClock:
    """A clock for tests: it only moves when told to."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        """Return the current time."""
        return self.t

    def advance(self, dt: float) -> float:
        """Move the clock forward by ``dt`` seconds and return the new time."""
        self.t += dt
        return self.t


def _ms(t: float) -> float:
    # Starts and ends are kept at the API's millisecond resolution, so `started` is exact.
    return round(t, 3)


def _draw_duration(rng: random.Random, mean_s: float) -> float:
    mu = math.log(mean_s) - DURATION_SIGMA**2 / 2  # so that the lognormal's mean is mean_s
    return max(MIN_DURATION_S, rng.lognormvariate(mu, DURATION_SIGMA))


class _Arrivals:
    """The Poisson arrival times and planned durations of one job kind, from its own RNG."""

    def __init__(self, kind: JobKind, index: int, seed: int, t0: float) -> None:
        self.kind = kind
        # One stream per kind keeps each kind's arrivals independent of the others and of slots.
        self._rng = random.Random(f"{seed}:arrivals:{index}:{kind.type}")
        self._t = t0
        self.next_time = math.inf
        self.next_duration = 0.0
        self._draw()

    def _draw(self) -> None:
        if self.kind.rate_per_min <= 0:
            return
        self._t += self._rng.expovariate(self.kind.rate_per_min / 60)
        self.next_time = _ms(self._t)
        self.next_duration = _draw_duration(self._rng, self.kind.mean_duration_s)

    def pop(self) -> tuple[float, float]:
        """Return the next arrival time and duration, and draw the one after."""
        arrival = (self.next_time, self.next_duration)
        self._draw()
        return arrival


# --- the services' shapes -------------------------------------------------------------------------
# What each service's real answer looks like (api-notes.md and the upstream's pages), rendered
# from the world. Only the list's item and the ids differ; the envelope is an array except for
# Dreamina, whose jobs are filed under "US:<email>" keys.

_Json = dict[str, Any]
_IdMaker = Callable[[int, str, str, Account, float], str]  # number, token, type, account, start


@dataclass(frozen=True, slots=True)
class _Shape:
    path: str  # the path of the service's real list URL
    api_id: _IdMaker
    item: Callable[[_Job, float, float], _Json]  # job, true now, server clock skew
    available_key: str | None = None  # the account's key in /available; None: no /available
    by_account: bool = False  # Dreamina's envelope
    pages: bool = False  # PixVerse: each job's page, /videos/{id} and /images/{id}
    unauthorized: Mapping[str, Any] = field(default_factory=lambda: UNAUTHORIZED_BODY)


def _timing(job: _Job, now: float, skew_s: float) -> _Json:
    start = job.truth.start
    return {
        "started": format_started(start + skew_s),
        "elapsed": format_elapsed(now - start),  # skew cancels out: both ends are shifted
    }


def _replies(job: _Job) -> _Json:
    item: _Json = {}
    if job.reply_url is not None:
        item["replyUrl"] = job.reply_url
    if job.reply_ref is not None:
        item["replyRef"] = job.reply_ref
    return item


def _user_id(service: str, kind: str | None = None, *, by_token: bool = False) -> _IdMaker:
    """Ids of the form ``user:<user id>-<service>:<account>-<kind>:<job>``; kind None: the type."""

    def api_id(number: int, token: str, type_: str, account: Account, start: float) -> str:
        job = token if by_token else str(number)
        return f"user:{account.user_id}-{service}:{account.email}-{kind or type_}:{job}"

    return api_id


def _number_id(number: int, token: str, type_: str, account: Account, start: float) -> str:
    return str(number)


def _token_id(number: int, token: str, type_: str, account: Account, start: float) -> str:
    return token


def _ltx_id(number: int, token: str, type_: str, account: Account, start: float) -> str:
    return f"email:{account.email}:{token}-type:{type_}"


def _pixverse(job: _Job, now: float, skew_s: float) -> _Json:
    truth = job.truth
    return {"id": truth.api_id, "type": truth.type, **_timing(job, now, skew_s), **_replies(job)}


def _kling(job: _Job, now: float, skew_s: float) -> _Json:
    truth = job.truth
    return {"id": job.number, "email": truth.account, **_timing(job, now, skew_s), **_replies(job)}


def _minimax(job: _Job, now: float, skew_s: float) -> _Json:
    key = "videoId" if job.truth.type == "video" else "imageId"
    return {key: job.truth.api_id, **_timing(job, now, skew_s), **_replies(job)}


def _runway(job: _Job, now: float, skew_s: float) -> _Json:
    return {"taskId": job.truth.api_id, **_replies(job)}  # no started, no elapsed


def _tempolor(job: _Job, now: float, skew_s: float) -> _Json:
    return {"job_id": job.truth.api_id, **_timing(job, now, skew_s), **_replies(job)}


def _ltxstudio(job: _Job, now: float, skew_s: float) -> _Json:
    truth = job.truth
    timing = _timing(job, now, skew_s)
    return {"jobId": truth.api_id, "email": truth.account, **timing, **_replies(job)}


def _riffusion(job: _Job, now: float, skew_s: float) -> _Json:
    truth = job.truth
    timing = _timing(job, now, skew_s)
    return {"job_id": truth.api_id, "user_id": truth.account, **timing, **_replies(job)}


def _dreamina(job: _Job, now: float, skew_s: float) -> _Json:
    truth = job.truth
    item: _Json = {
        "jobid": truth.api_id,
        "submitId": job.token,
        "model": truth.type,
        "elapsedSeconds": _whole_seconds(now - truth.start),
    }
    if job.reply_url is not None:
        item["replyUrl"] = job.reply_url  # Dreamina has no replyRef
    return item


def _dreamina_id(number: int, token: str, type_: str, account: Account, start: float) -> str:
    # As upstream: "j<MMDDhhmmss><digits><v>-u<user>-US:<email>:dreamina".
    moment = datetime.fromtimestamp(start, UTC)
    return f"j{moment:%m%d%H%M%S}{number}{type_[:1]}-u{account.user_id}-US:{account.email}:dreamina"


_SHAPES: Final[Mapping[str, _Shape]] = MappingProxyType(
    {
        "pixverse": _Shape(
            "/v2/pixverse/scheduler/", _user_id("pixverse"), _pixverse, "email", pages=True
        ),
        "kling": _Shape("/v1/kling/scheduler", _number_id, _kling, "email"),
        "minimax": _Shape("/v1/minimax/scheduler/", _user_id("minimax"), _minimax, "account"),
        "runway": _Shape(
            "/v1/runwayml/scheduler/", _user_id("runwayml", "task", by_token=True), _runway
        ),
        "tempolor": _Shape(
            "/v1/tempolor/scheduler/", _user_id("tempolor", "job"), _tempolor, "user_id"
        ),
        "ltxstudio": _Shape("/v1/ltxstudio/scheduler", _ltx_id, _ltxstudio),
        "riffusion": _Shape("/v1/riffusion/scheduler", _token_id, _riffusion, "user_id"),
        "dreamina": _Shape(
            "/v1/dreamina/scheduler",
            _dreamina_id,
            _dreamina,
            by_account=True,
            unauthorized={"error": "Unauthorized"},  # Dreamina's 401 has no code
        ),
    }
)
SERVICE_PATHS: Final[Mapping[str, str]] = MappingProxyType(
    {name: shape.path for name, shape in _SHAPES.items()}
)


def _outcome(seed: int, number: int) -> tuple[str, int]:
    """A job's final status (name, number): a hash, as `_token`, not a draw."""
    digest = hashlib.sha256(f"{seed}:outcome:{number}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    for name, status, weight in OUTCOMES:
        if u < weight:
            return name, status
        u -= weight
    return OUTCOMES[0][0], OUTCOMES[0][1]


def _second(t: float) -> str:
    """PixVerse's created_at: ISO-8601 UTC to the second."""
    return f"{datetime.fromtimestamp(math.floor(t), UTC):%Y-%m-%dT%H:%M:%S}Z"


def _token(seed: int, number: int) -> str:
    # A hash, not a draw: the world's RNG streams stay exactly as they are for every service.
    digest = hashlib.sha256(f"{seed}:token:{number}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


class _World:
    """The jobs: generated lazily, in time order, deterministically from the seed. Not locked."""

    def __init__(self, config: SimConfig, t0: float) -> None:
        self._config = config
        self._shape = _SHAPES[config.service]
        self._reply_url = REPLY_URL.format(service=config.service)
        self._rng = random.Random(f"{config.seed}:jobs")
        self._streams = [_Arrivals(k, i, config.seed, t0) for i, k in enumerate(config.kinds)]
        self._jobs: list[_Job] = []
        self._by_api_id: dict[str, _Job] = {}
        self._ids: set[int] = set()
        self._ends: dict[str, list[float]] = {a.email: [] for a in config.accounts}
        self.rejected = 0
        self._seed_initial_jobs(t0)

    def _seed_initial_jobs(self, t0: float) -> None:
        rng = random.Random(f"{self._config.seed}:initial")
        kinds = self._config.kinds
        # Little's law: the share of running jobs of a kind is rate * mean duration.
        weights = [k.rate_per_min * k.mean_duration_s for k in kinds]
        initial: list[_Job] = []
        for _ in range(self._config.initial_jobs):
            kind = rng.choices(kinds, weights if sum(weights) > 0 else None)[0]
            duration = _draw_duration(rng, kind.mean_duration_s)
            start = _ms(t0 - rng.random() * duration)
            end = max(_ms(start + duration), _ms(t0 + 0.001))  # still running at t0
            account = self._pick_account(t0)
            assert account is not None  # SimConfig caps initial_jobs at the total capacity
            initial.append(self._new_job(kind, account, start, end))
        self._jobs.extend(sorted(initial, key=lambda j: j.truth.start))

    def _running(self, email: str, t: float) -> int:
        # Arrivals come in time order, so ends at or before t can be forgotten.
        ends = [e for e in self._ends[email] if e > t]
        self._ends[email] = ends
        return len(ends)

    def _pick_account(self, t: float) -> Account | None:
        free = [a for a in self._config.accounts if self._running(a.email, t) < a.max_jobs]
        return self._rng.choice(free) if free else None

    def _new_job(self, kind: JobKind, account: Account, start: float, end: float) -> _Job:
        job_id = self._rng.randint(100_000_000, 999_999_999)
        while job_id in self._ids:
            job_id = self._rng.randint(100_000_000, 999_999_999)
        self._ids.add(job_id)
        self._ends[account.email].append(end)
        token = _token(self._config.seed, job_id)
        api_id = self._shape.api_id(job_id, token, kind.type, account, start)
        truth = TrueJob(api_id, kind.type, account.email, account.user_id, start, end)
        ref = f"order-{job_id % 100_000:05d}" if self._rng.random() < REPLY_REF_P else None
        url = self._reply_url if self._rng.random() < REPLY_URL_P else None
        job = _Job(truth, job_id, token, reply_url=url, reply_ref=ref)
        self._by_api_id[api_id] = job
        return job

    def advance(self, now: float) -> None:
        """Materialize every arrival at or before ``now``."""
        while self._streams:
            stream = min(self._streams, key=lambda s: s.next_time)  # ties go to the first kind
            if stream.next_time > now:
                return
            start, duration = stream.pop()
            account = self._pick_account(start)
            if account is None:
                self.rejected += 1  # useapi would answer the submitter 429
                continue
            self._jobs.append(self._new_job(stream.kind, account, start, _ms(start + duration)))

    def running(self, now: float) -> list[_Job]:
        """Jobs with ``start <= now < end``, oldest first."""
        self.advance(now)
        return [j for j in self._jobs if j.truth.start <= now < j.truth.end]

    def find(self, api_id: str, now: float) -> _Job | None:
        """The job listed as `api_id` that started at or before ``now``, if any."""
        self.advance(now)
        job = self._by_api_id.get(api_id)
        return job if job is not None and job.truth.start <= now else None

    def truth(self, now: float) -> list[TrueJob]:
        """Every job started at or before ``now``, oldest first."""
        self.advance(now)
        return [j.truth for j in self._jobs if j.truth.start <= now]


# --- answers -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()


def _json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> _Reply:
    return _Reply(status, json.dumps(payload).encode(), JSON_TYPE, headers)


_REASONS: Final = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    596: "Account Error",
}
_ERROR_MESSAGES: Final = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    596: "PixVerse account is in an error state, please check the account and update it",
}
_CHALLENGE_PAGE: Final = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Just a moment...</title></head>'
    "<body><h1>Checking your browser before accessing api.useapi.net.</h1>"
    "<p>This process is automatic.</p></body></html>"
)


def _server_error_reply(rng: random.Random) -> _Reply:
    status = rng.choice(SERVER_ERROR_CODES)
    if rng.random() < 0.5:
        return _json_reply(status, {"error": _ERROR_MESSAGES[status], "code": status})
    reason = f"{status} {_REASONS[status]}"
    page = (
        f"<html><head><title>{reason}</title></head><body><center><h1>{reason}</h1></center>"
        "<hr><center>cloudflare</center></body></html>"
    )
    return _Reply(status, page.encode(), HTML_TYPE)


def _rate_limit_reply(retry_after_s: int | None) -> _Reply:
    headers = () if retry_after_s is None else (("Retry-After", str(retry_after_s)),)
    return _json_reply(429, {"error": "Too Many Requests", "code": 429}, headers)


def _garbage_reply(rng: random.Random, payload: Any) -> _Reply:
    variant = rng.choice(("bytes", "truncated", "html"))
    if variant == "bytes":
        return _Reply(200, rng.randbytes(rng.randint(16, 256)))
    if variant == "truncated":
        # Any strict prefix of a JSON array or object is invalid JSON.
        text = json.dumps(payload)
        return _Reply(200, text[: rng.randint(1, len(text) - 1)].encode())
    return _Reply(200, _CHALLENGE_PAGE.encode(), HTML_TYPE)


# --- the simulator -------------------------------------------------------------------------------


class Simulator:
    """The simulated world plus, once started, an HTTP server answering like useapi.net."""

    def __init__(self, config: SimConfig | None = None, clock: Clock = time.time) -> None:
        self.config = config if config is not None else SimConfig()
        self._shape = _SHAPES[self.config.service]
        self._clock = clock
        self._lock = threading.Lock()
        self._world = _World(self.config, clock())
        self._fault_rng = random.Random(f"{self.config.seed}:faults")
        self._requests_served = 0
        self._faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._stopping = threading.Event()
        self._server: _Server | None = None  # the server this simulator started, if any
        self._base_url: str | None = None  # where it is served, by its own server or a group's

    # world access

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _running(self, t: float) -> list[_Job]:
        with self._lock:
            return self._world.running(t)

    def running(self, now: float | None = None) -> list[TrueJob]:
        """The jobs the list shows at true time ``now`` (default: clock), oldest first."""
        return [job.truth for job in self._running(self._now(now))]

    def listing(self, now: float | None = None) -> list[_Json]:
        """The listed items at true time ``now`` (default: clock), in the service's item shape."""
        t = self._now(now)
        return self._items(self._running(t), t)

    def answer(self, now: float | None = None) -> Any:
        """The list answer as served at true time ``now`` (Dreamina: its `executing` envelope)."""
        t = self._now(now)
        return self._list_answer(self._running(t), t)

    def available(self, now: float | None = None) -> dict[str, Any]:
        """The ``/available`` answer at true time ``now`` (ValueError: the service has none)."""
        if self._shape.available_key is None:
            raise ValueError(f"{self.config.service} has no /scheduler/available")
        t = self._now(now)
        return self._available_answer(self._running(t), t)

    def _items(self, jobs: list[_Job], now: float) -> list[_Json]:
        skew_s = self.config.faults.skew_s
        return [self._shape.item(job, now, skew_s) for job in jobs]

    def _list_answer(self, jobs: list[_Job], now: float) -> Any:
        if not self._shape.by_account:
            return self._items(jobs, now)
        executing: dict[str, list[_Json]] = {}
        for job, item in zip(jobs, self._items(jobs, now), strict=True):
            executing.setdefault(f"US:{job.truth.account}", []).append(item)
        return {"executing": executing, "total": len(jobs)}

    def _available_answer(self, jobs: list[_Job], now: float) -> dict[str, Any]:
        key = self._shape.available_key
        accounts = []
        for account in self.config.accounts:
            executing = sum(1 for job in jobs if job.truth.account == account.email)
            accounts.append(
                {
                    key: account.email,
                    "maxJobs": account.max_jobs,
                    "executing": executing,
                    "available": account.max_jobs - executing,
                }
            )
        return {"executing": self._items(jobs, now), "available": accounts}

    def truth(self, now: float | None = None) -> list[TrueJob]:
        """Every job started by true time ``now`` (default: clock), on the true clock."""
        t = self._now(now)
        with self._lock:
            return self._world.truth(t)

    # counters

    @property
    def requests_served(self) -> int:
        """HTTP requests answered so far, whatever the answer."""
        with self._lock:
            return self._requests_served

    @property
    def faults_injected(self) -> dict[str, int]:
        """How many faults of each kind (see FAULT_KINDS) were injected so far."""
        with self._lock:
            return dict(self._faults)

    @property
    def rejected_arrivals(self) -> int:
        """Arrivals up to the clock's now that found every account at its max_jobs."""
        t = self._clock()
        with self._lock:
            self._world.advance(t)
            return self._world.rejected

    # requests

    def outcome(self, api_id: str) -> str | None:
        """The final status (COMPLETED, FAILED, MODERATED) the page of job `api_id` shows once
        final; None for an id the world has not run (by the clock's now)."""
        with self._lock:
            job = self._world.find(api_id, self._clock())
        return None if job is None else _outcome(self.config.seed, job.number)[0]

    def _pages(self) -> str | None:
        """The path the jobs' pages are under (``/v2/pixverse``), None without pages."""
        segments = self.config.list_path.rstrip("/").split("/")
        if not self._shape.pages or "scheduler" not in segments:
            return None
        return "/".join(segments[: len(segments) - 1 - segments[::-1].index("scheduler")])

    def _route(self, raw_path: str) -> str | None:
        path = urlsplit(raw_path).path
        base = self.config.list_path.rstrip("/")
        if path in (base, base + "/"):
            return "list"
        available = base + "/available"
        if self._shape.available_key is not None and path in (available, available + "/"):
            return "available"
        pages = self._pages()
        if pages is not None:
            for kind in ("video", "image"):
                prefix = f"{pages}/{kind}s/"
                if path.startswith(prefix) and len(path) > len(prefix):
                    return kind
        return None

    def _page(self, kind: str, raw_path: str, t: float) -> _Reply:
        """A job's page at true time `t`: 404 for a video still processing or an unknown id."""
        pages = self._pages()
        assert pages is not None
        api_id = unquote(urlsplit(raw_path).path[len(f"{pages}/{kind}s/") :])
        with self._lock:
            job = self._world.find(api_id, t)
        if job is None or job.truth.type != kind:
            return _json_reply(404, NOT_FOUND_BODY)
        truth = job.truth
        done = t >= truth.end
        if kind == "video" and t < truth.end + self.config.outcome_delay_s:
            return _json_reply(404, {"error": f"Video {api_id} not found", "code": 404})
        name, number = _outcome(self.config.seed, job.number) if done else ("GENERATING", 10)
        page: _Json = {
            f"{kind}_id": api_id,
            f"{kind}_status": number,
            f"{kind}_status_name": name,
            f"{kind}_status_final": done,
            "created_at": _second(truth.start),
            "url": f"https://media.example.com/{job.token}.mp4" if name == "COMPLETED" else "",
        }
        if kind == "image":
            page["updated_at"] = _second(truth.end if done else truth.start)
        return _json_reply(200, page)

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and token.strip() == self.config.token

    def _draw_fault(self) -> tuple[bool, str | None]:
        faults = self.config.faults
        with self._lock:
            slow = self._fault_rng.random() < faults.slow
            u = self._fault_rng.random()
            chosen = None
            for name in ("server_error", "rate_limit", "garbage", "empty"):
                p = getattr(faults, name)
                if u < p:
                    chosen = name
                    break
                u -= p
            if slow:
                self._faults["slow"] += 1
            if chosen is not None:
                self._faults[chosen] += 1
        return slow, chosen

    def _handle(self, path: str, authorization: str | None) -> _Reply:
        """Answer one GET (blocks for a `slow` fault)."""
        try:
            route = self._route(path)
            if route is None:
                return _json_reply(404, NOT_FOUND_BODY)
            # Auth before faults: a bad token should fail the same way every time.
            if not self._authorized(authorization):
                return _json_reply(401, self._shape.unauthorized)
            slow, fault = self._draw_fault()
            if slow:
                self._stopping.wait(self.config.faults.slow_s)  # stop() cuts the wait short
            if route in ("video", "image"):
                return self._page_answer(route, path, fault)
            return self._answer(route, fault)
        finally:
            with self._lock:
                self._requests_served += 1

    def _answer(self, route: str, fault: str | None) -> _Reply:
        if fault == "rate_limit":
            return _rate_limit_reply(self.config.faults.retry_after_s)
        # Computed after any `slow` delay, so the list is as of the moment of answering.
        t = self._clock()
        jobs = [] if fault == "empty" else self._running(t)
        render = self._list_answer if route == "list" else self._available_answer
        payload = render(jobs, t)
        with self._lock:
            if fault == "server_error":
                return _server_error_reply(self._fault_rng)
            if fault == "garbage":
                return _garbage_reply(self._fault_rng, payload)
        return _json_reply(200, payload)

    def _page_answer(self, kind: str, path: str, fault: str | None) -> _Reply:
        if fault == "rate_limit":
            return _rate_limit_reply(self.config.faults.retry_after_s)
        reply = self._page(kind, path, self._clock())
        with self._lock:
            if fault == "server_error":
                return _server_error_reply(self._fault_rng)
            if fault == "garbage":
                return _garbage_reply(self._fault_rng, json.loads(reply.body))
        return reply

    # server lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a daemon thread; return the endpoint's URL (``port=0``: any free port)."""
        self._server = _Server.launch((host, port), (self,))
        return self.url

    def stop(self) -> None:
        """Stop serving and wait for the server thread; a no-op when not started by start()."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    @property
    def url(self) -> str:
        """The endpoint's URL, path included (e.g. ``http://127.0.0.1:PORT/v2/pixverse/scheduler/``)."""
        if self._base_url is None:
            raise RuntimeError("simulator not started")
        return self._base_url + self.config.list_path

    def __enter__(self) -> Simulator:
        if self._base_url is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class SimulatorGroup:
    """Several simulated services behind one server, each at its own path with its own world."""

    def __init__(self, configs: Iterable[SimConfig], clock: Clock = time.time) -> None:
        self.simulators = tuple(Simulator(config, clock) for config in configs)
        if not self.simulators:
            raise ValueError("at least one simulated service is needed")
        paths = [sim.config.list_path.rstrip("/") for sim in self.simulators]
        for path in paths:
            if paths.count(path) > 1 or path + "/available" in paths:
                raise ValueError(f"two simulated services would answer at {path or '/'!r}")
        self._server: _Server | None = None

    def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, ...]:
        """Serve every simulator in one daemon thread; return their URLs, in order."""
        if self._server is not None:
            raise RuntimeError("simulators already started")
        self._server = _Server.launch((host, port), self.simulators)
        return self.urls

    def stop(self) -> None:
        """Stop serving and wait for the server thread; a no-op when not started."""
        server, self._server = self._server, None
        if server is not None:
            server.close()

    @property
    def urls(self) -> tuple[str, ...]:
        """Each simulator's endpoint URL, in the order of the configs."""
        return tuple(sim.url for sim in self.simulators)

    def __enter__(self) -> SimulatorGroup:
        if self._server is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    server_version = "useapi-simulator"
    sys_version = ""
    timeout = 10  # a client that connects and never sends must not hold stop() forever

    def do_GET(self) -> None:
        reply = cast(_Server, self.server).reply(self.path, self.headers.get("Authorization"))
        self.send_response(reply.status, _REASONS.get(reply.status))
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests and the demo own stderr."""


class _Server(ThreadingHTTPServer):
    """One listening socket for one or more simulators, each answering at its own path."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulators: tuple[Simulator, ...]) -> None:
        super().__init__(address, _Handler)
        self.simulators = simulators
        self._thread = threading.Thread(
            target=self.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="recorder-simulator",
            daemon=True,
        )

    @classmethod
    def launch(cls, address: tuple[str, int], simulators: tuple[Simulator, ...]) -> _Server:
        """Listen on `address` and serve `simulators` in a daemon thread."""
        if any(sim._base_url is not None for sim in simulators):
            raise RuntimeError("simulator already started")
        server = cls(address, simulators)
        host, port = server.server_address[:2]
        for sim in simulators:
            sim._stopping.clear()
            sim._base_url = f"http://{host!s}:{port}"
        server._thread.start()
        return server

    def close(self) -> None:
        """Stop serving, cutting slow answers short, and wait for the thread."""
        for sim in self.simulators:
            sim._stopping.set()
        self.shutdown()
        self.server_close()
        self._thread.join()
        for sim in self.simulators:
            sim._base_url = None

    def reply(self, path: str, authorization: str | None) -> _Reply:
        """The answer of the simulator whose path this is."""
        for sim in self.simulators:
            if sim._route(path) is not None:
                return sim._handle(path, authorization)
        if len(self.simulators) == 1:
            return self.simulators[0]._handle(path, authorization)  # its 404, counted
        return _json_reply(404, NOT_FOUND_BODY)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (e.g. timed out on a slow answer) is expected, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def serve_forever(
    config: SimConfig | Sequence[SimConfig],
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
    clock: Clock = time.time,
) -> None:
    """Serve until KeyboardInterrupt; ``on_ready`` gets each URL once listening. Prints nothing."""
    configs = (config,) if isinstance(config, SimConfig) else tuple(config)
    group = SimulatorGroup(configs, clock)
    try:
        urls = group.start(host, port)
        if on_ready is not None:
            for url in urls:
                on_ready(url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        group.stop()
