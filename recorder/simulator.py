"""A seeded, realistic fake of the useapi.net PixVerse scheduler endpoint.

The world (which job runs on which account, and when) is a pure function of the seed and of the
clock's first reading: arrivals are generated lazily in time order, so polling often, rarely or not
at all never changes the ground truth. Faults are drawn per request from a separate RNG, so turning
them on never changes the world either. Standard library only.
"""

from __future__ import annotations

import json
import math
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, cast
from urllib.parse import urlsplit

__all__ = [
    "FAULT_KINDS",
    "Account",
    "Faults",
    "JobKind",
    "ManualClock",
    "SimConfig",
    "Simulator",
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
REPLY_URL: Final = "https://hooks.example.com/useapi/pixverse"
UNAUTHORIZED_BODY: Final = {"error": "Unauthorized", "code": 401}
JSON_TYPE: Final = "application/json"
HTML_TYPE: Final = "text/html; charset=UTF-8"


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
    """A PixVerse account configured at useapi.net, with its concurrency limit."""

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
    path: str = "/v2/pixverse/scheduler/"

    def __post_init__(self) -> None:
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
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")


# --- formatting ----------------------------------------------------------------------------------


def format_started(t: float) -> str:
    """Format epoch seconds as the API does: ISO-8601 UTC with milliseconds and ``Z``."""
    ms = round(t * 1000)
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return f"{dt:%Y-%m-%dT%H:%M:%S}.{ms % 1000:03d}Z"


def format_elapsed(seconds: float) -> str:
    """Format whole elapsed seconds as ``MM:SS``; minutes go past 59 (``75:03``)."""
    # The epsilon absorbs float error in `now - start` for millisecond-rounded starts.
    total = max(0, math.floor(seconds + 1e-6))
    minutes, secs = divmod(total, 60)
    return f"{minutes:02d}:{secs:02d}"


# --- the world -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrueJob:
    """A job as it really ran, on the true (recorder's) clock; ``end`` may be in the future."""

    api_id: str
    type: str
    account: str
    user_id: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class _Job:
    truth: TrueJob
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


class _World:
    """The jobs: generated lazily, in time order, deterministically from the seed. Not locked."""

    def __init__(self, config: SimConfig, t0: float) -> None:
        self._config = config
        self._rng = random.Random(f"{config.seed}:jobs")
        self._streams = [_Arrivals(k, i, config.seed, t0) for i, k in enumerate(config.kinds)]
        self._jobs: list[_Job] = []
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
        api_id = f"user:{account.user_id}-pixverse:{account.email}-{kind.type}:{job_id}"
        truth = TrueJob(api_id, kind.type, account.email, account.user_id, start, end)
        ref = f"order-{job_id % 100_000:05d}" if self._rng.random() < REPLY_REF_P else None
        url = REPLY_URL if self._rng.random() < REPLY_URL_P else None
        return _Job(truth, reply_url=url, reply_ref=ref)

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

    def truth(self, now: float) -> list[TrueJob]:
        """Every job started at or before ``now``, oldest first."""
        self.advance(now)
        return [j.truth for j in self._jobs if j.truth.start <= now]


def _item(job: _Job, now: float, skew_s: float) -> dict[str, str]:
    truth = job.truth
    item = {
        "id": truth.api_id,
        "type": truth.type,
        "started": format_started(truth.start + skew_s),
        "elapsed": format_elapsed(now - truth.start),  # skew cancels out: both ends are shifted
    }
    if job.reply_url is not None:
        item["replyUrl"] = job.reply_url
    if job.reply_ref is not None:
        item["replyRef"] = job.reply_ref
    return item


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
        self._clock = clock
        self._lock = threading.Lock()
        self._world = _World(self.config, clock())
        self._fault_rng = random.Random(f"{self.config.seed}:faults")
        self._requests_served = 0
        self._faults: dict[str, int] = dict.fromkeys(FAULT_KINDS, 0)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # world access

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def listing(self, now: float | None = None) -> list[dict[str, str]]:
        """The scheduler list as the API would answer it at true time ``now`` (default: clock)."""
        t = self._now(now)
        with self._lock:
            jobs = self._world.running(t)
        return [_item(j, t, self.config.faults.skew_s) for j in jobs]

    def available(self, now: float | None = None) -> dict[str, Any]:
        """The ``/available`` answer at true time ``now`` (default: clock)."""
        return self._available(self.listing(now))

    def _available(self, items: list[dict[str, str]]) -> dict[str, Any]:
        accounts = []
        for account in self.config.accounts:
            marker = f"-pixverse:{account.email}-"
            executing = sum(1 for item in items if marker in item["id"])
            accounts.append(
                {
                    "email": account.email,
                    "maxJobs": account.max_jobs,
                    "executing": executing,
                    "available": account.max_jobs - executing,
                }
            )
        return {"executing": items, "available": accounts}

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

    def _route(self, raw_path: str) -> str | None:
        path = urlsplit(raw_path).path
        base = self.config.path.rstrip("/")
        if path in (base, base + "/"):
            return "list"
        if path in (base + "/available", base + "/available/"):
            return "available"
        return None

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
                return _json_reply(404, {"error": "Not Found", "code": 404})
            # Auth before faults: a bad token should fail the same way every time.
            if not self._authorized(authorization):
                return _json_reply(401, UNAUTHORIZED_BODY)
            slow, fault = self._draw_fault()
            if slow:
                self._stopping.wait(self.config.faults.slow_s)  # stop() cuts the wait short
            return self._answer(route, fault)
        finally:
            with self._lock:
                self._requests_served += 1

    def _answer(self, route: str, fault: str | None) -> _Reply:
        if fault == "rate_limit":
            return _rate_limit_reply(self.config.faults.retry_after_s)
        # Computed after any `slow` delay, so the list is as of the moment of answering.
        items = [] if fault == "empty" else self.listing()
        payload = items if route == "list" else self._available(items)
        with self._lock:
            if fault == "server_error":
                return _server_error_reply(self._fault_rng)
            if fault == "garbage":
                return _garbage_reply(self._fault_rng, payload)
        return _json_reply(200, payload)

    # server lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in a daemon thread; return the endpoint's URL (``port=0``: any free port)."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        server = _Server((host, port), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="recorder-simulator",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self.url

    def stop(self) -> None:
        """Stop serving and wait for the server thread; a no-op when not started."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None

    @property
    def url(self) -> str:
        """The endpoint's URL, path included (e.g. ``http://127.0.0.1:PORT/v2/pixverse/scheduler/``)."""
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{self.config.path}"

    def __enter__(self) -> Simulator:
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
        simulator = cast(_Server, self.server).simulator
        reply = simulator._handle(self.path, self.headers.get("Authorization"))
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
    daemon_threads = True

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        super().__init__(address, _Handler)
        self.simulator = simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (e.g. timed out on a slow answer) is expected, not an error.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


def serve_forever(
    config: SimConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    on_ready: Callable[[str], None] | None = None,
    clock: Clock = time.time,
) -> None:
    """Serve until KeyboardInterrupt; ``on_ready`` gets the URL once listening. Prints nothing."""
    simulator = Simulator(config, clock)
    try:
        url = simulator.start(host, port)
        if on_ready is not None:
            on_ready(url)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
