"""Tests for the scheduler simulator: its world model offline, its HTTP face on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

from recorder.simulator import (
    Account,
    Faults,
    JobKind,
    ManualClock,
    SimConfig,
    Simulator,
    format_elapsed,
    format_started,
    serve_forever,
)
from tests.simulated import T0, Serve

ID_RE = re.compile(r"^user:(\d+)-pixverse:(.+)-(\w+):(\d{9})$")
STARTED_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ELAPSED_RE = re.compile(r"^\d{2,}:[0-5]\d$")


def parse_started(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def poll_times(start: float, stop: float, step: float) -> list[float]:
    return [start + i * step for i in range(int((stop - start) / step) + 1)]


# --- world -------------------------------------------------------------------------------------


def test_same_seed_and_clock_give_same_world() -> None:
    a, b = (
        Simulator(SimConfig(seed=7), ManualClock(T0)),
        Simulator(SimConfig(seed=7), ManualClock(T0)),
    )
    for t in poll_times(T0, T0 + 1800, 13):
        assert a.listing(t) == b.listing(t)
        assert a.truth(t) == b.truth(t)
    assert len(a.truth(T0 + 1800)) > 50


def test_different_seed_gives_different_world() -> None:
    a, b = (
        Simulator(SimConfig(seed=1), ManualClock(T0)),
        Simulator(SimConfig(seed=2), ManualClock(T0)),
    )
    assert a.truth(T0 + 1800) != b.truth(T0 + 1800)


def test_truth_does_not_depend_on_when_it_is_observed() -> None:
    often, never = ManualClock(T0), ManualClock(T0)
    polled, untouched = Simulator(SimConfig(seed=3), often), Simulator(SimConfig(seed=3), never)
    for t in poll_times(T0, T0 + 3600, 7):
        polled.listing(t)
    often.t = never.t = T0 + 3600
    assert polled.truth() == untouched.truth()
    assert polled.rejected_arrivals == untouched.rejected_arrivals


def test_listing_matches_truth(clock: ManualClock) -> None:
    sim = Simulator(SimConfig(seed=11, initial_jobs=4), clock)
    for t in poll_times(T0, T0 + 1200, 5.5):
        clock.t = t
        expected = {j.api_id: j for j in sim.truth() if j.start <= t < j.end}
        items = sim.listing(t)
        assert [i["id"] for i in items] == list(expected)
        for item in items:
            job = expected[item["id"]]
            assert item["type"] == job.type
            assert STARTED_RE.match(item["started"])
            assert parse_started(item["started"]) == pytest.approx(job.start, abs=1e-3)
            assert item["elapsed"] == format_elapsed(t - job.start)
            parsed = ID_RE.match(item["id"])
            assert parsed is not None
            assert parsed.groups()[:3] == (job.user_id, job.account, job.type)


def test_listing_boundaries_are_start_inclusive_end_exclusive(clock: ManualClock) -> None:
    sim = Simulator(SimConfig(seed=5), clock)
    clock.t = T0 + 600
    for job in sim.truth()[:20]:
        assert job.api_id in {i["id"] for i in sim.listing(job.start)}
        assert job.api_id not in {i["id"] for i in sim.listing(job.end)}


def test_truth_contains_only_started_jobs_with_planned_ends(clock: ManualClock) -> None:
    sim = Simulator(SimConfig(seed=5), clock)
    now = clock.advance(300)
    jobs = sim.truth()
    assert jobs
    assert all(j.start <= now for j in jobs)
    assert any(j.end > now for j in jobs)
    assert all(j.end - j.start >= 1.0 for j in jobs)


def test_initial_jobs_are_running_at_start(clock: ManualClock) -> None:
    sim = Simulator(SimConfig(seed=9, initial_jobs=6), clock)
    jobs = sim.truth()
    assert len(jobs) == 6
    assert all(j.start < T0 < j.end for j in jobs)
    assert len(sim.listing()) == 6


def test_some_jobs_have_reply_fields(clock: ManualClock) -> None:
    sim = Simulator(SimConfig(seed=2), clock)
    keys: set[str] = set()
    for t in poll_times(T0, T0 + 1800, 10):
        for item in sim.listing(t):
            keys |= item.keys()
    assert {"replyRef", "replyUrl"} <= keys


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(0, "00:00"), (0.999, "00:00"), (59.5, "00:59"), (237, "03:57"), (4503, "75:03")],
)
def test_format_elapsed(seconds: float, expected: str) -> None:
    assert format_elapsed(seconds) == expected


def test_format_started() -> None:
    assert format_started(1727229316.128) == "2024-09-25T01:55:16.128Z"
    assert format_started(1727229316.0) == "2024-09-25T01:55:16.000Z"


def test_elapsed_past_an_hour_in_listing(clock: ManualClock) -> None:
    config = SimConfig(seed=4, kinds=(JobKind("video", 1.0, 3 * 3600),))
    sim = Simulator(config, clock)
    long_job = next(j for j in sim.truth(T0 + 600) if j.end - j.start > 4504)
    t = long_job.start + 75 * 60 + 3
    item = next(i for i in sim.listing(t) if i["id"] == long_job.api_id)
    assert item["elapsed"] == "75:03"
    assert all(ELAPSED_RE.match(i["elapsed"]) for i in sim.listing(t))


def test_skew_shifts_started_only() -> None:
    plain = Simulator(SimConfig(seed=6), ManualClock(T0))
    skewed = Simulator(SimConfig(seed=6, faults=Faults(skew_s=-90.5)), ManualClock(T0))
    t = T0 + 900
    assert plain.truth(t) == skewed.truth(t)
    a, b = plain.listing(t), skewed.listing(t)
    assert a
    assert [(i["id"], i["elapsed"]) for i in a] == [(i["id"], i["elapsed"]) for i in b]
    for x, y in zip(a, b, strict=True):
        assert parse_started(y["started"]) - parse_started(x["started"]) == pytest.approx(-90.5)


def test_max_jobs_is_never_exceeded(clock: ManualClock) -> None:
    accounts = (Account("a@example.com", "1", 1), Account("b@example.com", "1", 2))
    kinds = (JobKind("video", 20.0, 60.0), JobKind("image", 30.0, 10.0))
    sim = Simulator(SimConfig(seed=8, kinds=kinds, accounts=accounts, initial_jobs=3), clock)
    clock.t = T0 + 3600
    jobs = sim.truth()
    limits = {a.email: a.max_jobs for a in accounts}
    for job in jobs:  # the count can only rise at a start
        running = [j for j in jobs if j.account == job.account and j.start <= job.start < j.end]
        assert len(running) <= limits[job.account]
    assert sim.rejected_arrivals > 0
    for t in poll_times(T0, T0 + 3600, 3):
        available = sim.available(t)["available"]
        assert all(0 <= a["executing"] <= a["maxJobs"] for a in available)


def test_available_shape(clock: ManualClock) -> None:
    sim = Simulator(SimConfig(seed=1, initial_jobs=5), clock)
    answer = sim.available()
    assert answer["executing"] == sim.listing()
    assert [a["email"] for a in answer["available"]] == [a.email for a in sim.config.accounts]
    assert sum(a["executing"] for a in answer["available"]) == 5
    for a in answer["available"]:
        assert a["available"] == a["maxJobs"] - a["executing"]


@pytest.mark.parametrize(
    ("config_args", "message"),
    [
        ({"initial_jobs": 99}, "initial_jobs"),
        ({"path": "no-slash"}, "path"),
        ({"token": ""}, "token"),
        ({"accounts": ()}, "account"),
        ({"accounts": (Account("x@y.z", "1", 1), Account("x@y.z", "2", 1))}, "unique"),
    ],
)
def test_bad_config_is_rejected(config_args: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig(**config_args)


def test_exclusive_faults_must_not_exceed_one() -> None:
    with pytest.raises(ValueError, match="exceed"):
        Faults(server_error=0.6, garbage=0.5)


# --- HTTP --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def get(url: str, token: str | None = "sim-token", path: str | None = None) -> Answer:
    """GET on 127.0.0.1 with a bounded timeout; the connection is always closed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        conn.request("GET", path if path is not None else parts.path, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def test_url_is_local_and_includes_path(serve: Serve) -> None:
    sim = serve(SimConfig())
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v2/pixverse/scheduler/", sim.url)


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_unauthorized_body_is_exact(serve: Serve, token: str | None) -> None:
    sim = serve(SimConfig())
    response = get(sim.url, token)
    assert response.status == 401
    assert response.headers.get("Content-Type") == "application/json"
    assert response.body == b'{"error": "Unauthorized", "code": 401}'


def test_list_over_http(serve: Serve, clock: ManualClock) -> None:
    sim = serve(SimConfig(seed=3, initial_jobs=4))
    clock.advance(120)
    for path in (
        "/v2/pixverse/scheduler/",
        "/v2/pixverse/scheduler",
        "/v2/pixverse/scheduler/?x=1",
    ):
        response = get(sim.url, path=path)
        assert response.status == 200
        assert response.headers.get("Content-Type") == "application/json"
        assert json.loads(response.body) == sim.listing()
    assert json.loads(get(sim.url + "available").body) == sim.available()
    assert sim.requests_served == 4


def test_unknown_path_is_404(serve: Serve) -> None:
    sim = serve(SimConfig())
    response = get(sim.url, path="/v2/pixverse/videos/")
    assert response.status == 404
    assert json.loads(response.body)["code"] == 404


def test_server_error_fault(serve: Serve) -> None:
    sim = serve(SimConfig(faults=Faults(server_error=1)))
    kinds = set()
    for _ in range(12):
        response = get(sim.url)
        assert response.status in {500, 502, 503, 504, 596}
        content_type = response.headers.get("Content-Type", "")
        kinds.add(content_type.split(";")[0])
        if content_type == "application/json":
            assert json.loads(response.body)["code"] == response.status
    assert kinds == {"application/json", "text/html"}
    assert sim.faults_injected["server_error"] == 12


@pytest.mark.parametrize(("retry_after", "header"), [(2, "2"), (30, "30"), (None, None)])
def test_rate_limit_fault(serve: Serve, retry_after: int | None, header: str | None) -> None:
    sim = serve(SimConfig(faults=Faults(rate_limit=1, retry_after_s=retry_after)))
    response = get(sim.url)
    assert response.status == 429
    assert response.headers.get("Retry-After") == header
    assert sim.faults_injected["rate_limit"] == 1


def test_garbage_fault(serve: Serve) -> None:
    sim = serve(SimConfig(initial_jobs=3, faults=Faults(garbage=1)))
    for _ in range(15):
        response = get(sim.url)
        assert response.status == 200
        with pytest.raises(ValueError, match=r"."):  # JSONDecodeError or UnicodeDecodeError
            json.loads(response.body)


def test_empty_fault(serve: Serve) -> None:
    sim = serve(SimConfig(initial_jobs=3, faults=Faults(empty=1)))
    response = get(sim.url)
    assert response.status == 200
    assert response.body == b"[]"
    assert len(sim.listing()) == 3
    assert json.loads(get(sim.url + "available").body)["executing"] == []


def test_faults_need_auth_first(serve: Serve) -> None:
    sim = serve(SimConfig(faults=Faults(server_error=1)))
    assert get(sim.url, "wrong").status == 401
    assert sim.faults_injected["server_error"] == 0


def test_slow_fault_delays_the_answer(serve: Serve) -> None:
    sim = serve(SimConfig(faults=Faults(slow=1, slow_s=0.3)))
    begin = time.monotonic()
    assert get(sim.url).status == 200
    assert time.monotonic() - begin >= 0.3
    assert sim.faults_injected["slow"] == 1


def test_stop_cuts_a_slow_answer_short(clock: ManualClock) -> None:
    sim = Simulator(SimConfig(faults=Faults(slow=1, slow_s=60)), clock)
    url = sim.start()
    statuses: list[int] = []
    client = threading.Thread(target=lambda: statuses.append(get(url).status))
    client.start()
    deadline = time.monotonic() + 5
    while sim.faults_injected["slow"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    begin = time.monotonic()
    sim.stop()
    client.join(timeout=5)
    assert time.monotonic() - begin < 5
    assert statuses == [200]


def test_context_manager_starts_and_stops(clock: ManualClock) -> None:
    with Simulator(SimConfig(), clock) as sim:
        assert get(sim.url).status == 200
    with pytest.raises(RuntimeError):
        _ = sim.url


def test_serve_forever_returns_on_keyboard_interrupt() -> None:
    seen: list[int] = []

    def on_ready(url: str) -> None:
        seen.append(get(url).status)
        raise KeyboardInterrupt

    serve_forever(SimConfig(), on_ready=on_ready)
    assert seen == [200]


def test_elapsed_is_whole_seconds_since_start(serve: Serve, clock: ManualClock) -> None:
    sim = serve(SimConfig(seed=12, initial_jobs=2))
    clock.advance(61)
    for item in json.loads(get(sim.url).body):
        job = next(j for j in sim.truth() if j.api_id == item["id"])
        minutes, seconds = map(int, item["elapsed"].split(":"))
        assert minutes * 60 + seconds == math.floor(clock() - job.start + 1e-6)
