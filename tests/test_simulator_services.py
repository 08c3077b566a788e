"""The simulator in every service's shape, read back through the adapters over 127.0.0.1.

recorder.services is imported here and never in the simulator: the simulator writes each shape
itself, as the independent truth the adapters are tested against.
"""

from __future__ import annotations

import http.client
import json
import math
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from recorder import services
from recorder.client import SchedulerClient
from recorder.parse import PayloadError
from recorder.services import Capacity
from recorder.simulator import (
    SERVICE_PATHS,
    Account,
    Faults,
    ManualClock,
    SimConfig,
    Simulator,
    SimulatorGroup,
    TrueJob,
)
from recorder.snapshot import Item, Snapshot
from tests.simulated import T0, Serve
from tests.waiting import running, stop, wait_for

NAMES = list(SERVICE_PATHS)
# The Item fields each service's answer carries; the others must come out None.
TIMED = {"started", "elapsed"}
CARRIES: dict[str, set[str]] = {
    "pixverse": {"type", "account", "user_id", *TIMED},
    "kling": {"account", *TIMED},
    "minimax": {"type", "account", "user_id", *TIMED},
    "runway": {"account", "user_id"},  # and the type "task", which is no job's real type
    "tempolor": {"account", "user_id", *TIMED},
    "ltxstudio": {"type", "account", *TIMED},
    "riffusion": {"account", *TIMED},
    "dreamina": {"type", "account", "elapsed"},
}
WITH_AVAILABLE = [name for name in NAMES if services.get(name).has_available]


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(url: str, token: str | None = "sim-token") -> Answer:
    """GET on 127.0.0.1 with a bounded timeout; the connection is always closed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        conn.request("GET", parts.path, headers=headers)
        response = conn.getresponse()
        return Answer(response.status, dict(response.getheaders()), response.read())
    finally:
        conn.close()


def available_url(sim: Simulator) -> str:
    """Where /available would be beside the simulator's list (asked of the adapter if it has it)."""
    url = services.get(sim.config.service).available_url(sim.url)
    return url if url is not None else sim.url.rstrip("/") + "/available"


def check_against_truth(name: str, snapshot: Snapshot, truth: list[TrueJob], now: float) -> None:
    """`snapshot` is exactly the running jobs `truth`, in every field the shape carries."""
    carries = CARRIES[name]
    assert (snapshot.invalid_values, snapshot.untracked, snapshot.duplicates) == (0, 0, 0)
    ids = [item.api_id for item in snapshot.items]
    if name == "dreamina":  # listed account by account
        assert sorted(ids) == sorted(job.api_id for job in truth)
    else:
        assert ids == [job.api_id for job in truth]
    jobs = {job.api_id: job for job in truth}
    for item in snapshot.items:
        job = jobs[item.api_id]
        assert item.type == (
            job.type if "type" in carries else "task" if name == "runway" else None
        )
        assert item.account == (job.account if "account" in carries else None)
        assert item.user_id == (job.user_id if "user_id" in carries else None)
        if "started" in carries:
            assert item.started is not None
            assert round(item.started * 1000) == round(job.start * 1000)
        else:
            assert item.started is item.started_raw is None
        expected_elapsed = math.floor(now - job.start + 1e-6) if "elapsed" in carries else None
        assert item.elapsed_s == expected_elapsed


# --- one service at a time ---------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_each_answer_parses_to_the_truth(name: str, serve: Serve, clock: ManualClock) -> None:
    sim = serve(SimConfig(seed=21, initial_jobs=6, service=name))
    adapter = services.get(name)
    assert urlsplit(sim.url).path == SERVICE_PATHS[name]
    assert services.for_url(sim.url) is adapter
    seen: set[str] = set()
    for _ in range(40):
        clock.advance(9.7)
        answer = fetch(sim.url)
        assert answer.status == 200
        snapshot = adapter.parse(answer.body)
        truth = sim.running()
        check_against_truth(name, snapshot, truth, clock())
        assert json.loads(answer.body) == sim.answer()
        seen |= {job.api_id for job in truth}
    truth_by_id = {job.api_id: job for job in sim.truth()}
    assert len(seen) >= 20  # the test saw a world, not an empty list
    assert {truth_by_id[i].type for i in seen} == {"video", "image"}
    assert {truth_by_id[i].account for i in seen} == {a.email for a in sim.config.accounts}


@pytest.mark.parametrize("name", [n for n in NAMES if "started" in CARRIES[n]])
def test_a_skewed_server_clock_shifts_started_only(
    name: str, serve: Serve, clock: ManualClock
) -> None:
    sim = serve(SimConfig(seed=5, initial_jobs=5, service=name, faults=Faults(skew_s=-90.5)))
    clock.advance(30)
    snapshot = services.get(name).parse(fetch(sim.url).body)
    truth = {job.api_id: job for job in sim.running()}
    assert snapshot.items
    for item in snapshot.items:
        assert item.started is not None
        assert round(item.started * 1000) == round((truth[item.api_id].start - 90.5) * 1000)
        assert item.elapsed_s == math.floor(clock() - truth[item.api_id].start + 1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_the_world_is_the_same_in_every_shape(name: str) -> None:
    def world(service: str, seed: int) -> list[TrueJob]:
        config = SimConfig(seed=seed, initial_jobs=3, service=service)
        return Simulator(config, ManualClock(T0)).truth(T0 + 1800)

    for seed in (1, 2):
        mine, pixverse = world(name, seed), world("pixverse", seed)
        assert len(mine) > 30
        assert [replace(j, api_id="") for j in mine] == [replace(j, api_id="") for j in pixverse]
        assert len({j.api_id for j in mine}) == len(mine)
        assert world(name, seed) == mine  # a pure function of the seed
    assert world(name, 1) != world(name, 2)


@pytest.mark.parametrize("name", NAMES)
def test_unauthorized_in_the_services_words(name: str, serve: Serve) -> None:
    sim = serve(SimConfig(service=name))
    answer = fetch(sim.url, "wrong")
    assert answer.status == 401
    expected = (
        {"error": "Unauthorized"} if name == "dreamina" else {"error": "Unauthorized", "code": 401}
    )
    assert json.loads(answer.body) == expected


def test_the_simulator_does_not_use_the_adapters() -> None:
    # It is the truth the adapters are checked against: sharing their code would check nothing.
    code = (
        "import sys, recorder.simulator; "
        "print(sorted(m for m in sys.modules if m.startswith('recorder')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "['recorder', 'recorder.simulator']"


def test_an_unknown_service_is_refused() -> None:
    with pytest.raises(
        ValueError, match=r"unknown service 'midjourney'; simulated: pixverse, kling"
    ):
        SimConfig(service="midjourney")


def test_the_client_polls_with_the_adapter(serve: Serve, clock: ManualClock) -> None:
    sim = serve(SimConfig(seed=8, initial_jobs=4, service="dreamina"))
    clock.advance(12)
    adapter = services.for_url(sim.url)
    with SchedulerClient(sim.url, "sim-token", parse=adapter.parse) as client:
        result = client.poll()
    assert isinstance(result.answer, Snapshot)
    check_against_truth("dreamina", result.answer, sim.running(), clock())


# --- /scheduler/available ----------------------------------------------------------------------


def test_available_is_served_exactly_where_the_service_has_it(serve: Serve) -> None:
    for name in NAMES:
        sim = serve(SimConfig(service=name, initial_jobs=2))
        status = fetch(available_url(sim)).status
        assert status == (200 if name in WITH_AVAILABLE else 404), name
        if name not in WITH_AVAILABLE:
            with pytest.raises(ValueError, match="no /scheduler/available"):
                sim.available()


@pytest.mark.parametrize("name", WITH_AVAILABLE)
def test_available_matches_the_running_jobs(name: str, serve: Serve, clock: ManualClock) -> None:
    accounts = (Account("a@example.com", "7", 2), Account("b@example.com", "7", 3))
    sim = serve(SimConfig(seed=13, accounts=accounts, initial_jobs=4, service=name))
    adapter = services.get(name)
    full = 0
    for _ in range(25):
        clock.advance(11.3)
        body = fetch(available_url(sim)).body
        truth = sim.running()
        per_account = {a.email: sum(j.account == a.email for j in truth) for a in accounts}
        assert adapter.parse_available(body) == [
            Capacity(a.email, a.max_jobs, per_account[a.email], a.max_jobs - per_account[a.email])
            for a in accounts
        ]
        # Its `executing` list is the list answer's, in the same shape.
        check_against_truth(name, adapter.parse(body), truth, clock())
        full += any(per_account[a.email] == a.max_jobs for a in accounts)
    assert full  # some account was seen at its limit


# --- faults, per service -----------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_faults_apply_in_every_shape(name: str, serve: Serve) -> None:
    adapter = services.get(name)
    empty = serve(SimConfig(service=name, initial_jobs=3, faults=Faults(empty=1)))
    assert adapter.parse(fetch(empty.url).body) == Snapshot(items=())
    assert len(empty.running()) == 3
    if name in WITH_AVAILABLE:
        capacities = adapter.parse_available(fetch(available_url(empty)).body)
        assert [c.executing for c in capacities] == [0, 0]
    garbage = serve(SimConfig(service=name, initial_jobs=3, faults=Faults(garbage=1)))
    for _ in range(10):
        answer = fetch(garbage.url)
        assert answer.status == 200
        with pytest.raises(PayloadError):
            adapter.parse(answer.body)
    errors = serve(SimConfig(service=name, faults=Faults(server_error=0.5, rate_limit=0.5)))
    statuses = {fetch(errors.url).status for _ in range(12)}
    assert statuses <= {429, 500, 502, 503, 504, 596}
    assert 429 in statuses
    assert errors.faults_injected["server_error"] + errors.faults_injected["rate_limit"] == 12


# --- several services at once ------------------------------------------------------------------


@pytest.fixture
def group(clock: ManualClock) -> Iterator[SimulatorGroup]:
    configs = [
        SimConfig(seed=100 + i, token=f"tok-{name}", initial_jobs=4, service=name)
        for i, name in enumerate(NAMES)
    ]
    with SimulatorGroup(configs, clock) as simulators:
        yield simulators


def test_several_services_from_one_server(group: SimulatorGroup, clock: ManualClock) -> None:
    urls = group.urls
    assert [urlsplit(url).path for url in urls] == [SERVICE_PATHS[name] for name in NAMES]
    assert len({urlsplit(url).netloc for url in urls}) == 1  # one server
    for _ in range(5):
        clock.advance(17)
        for sim in group.simulators:
            name = sim.config.service
            answer = fetch(sim.url, f"tok-{name}")
            assert answer.status == 200, name
            check_against_truth(
                name, services.for_url(sim.url).parse(answer.body), sim.running(), clock()
            )
    assert all(sim.requests_served == 5 for sim in group.simulators)


def test_each_service_in_a_group_has_its_own_world(
    group: SimulatorGroup, clock: ManualClock
) -> None:
    clock.advance(600)
    worlds = [[replace(j, api_id="") for j in sim.truth()] for sim in group.simulators]
    assert all(worlds[0] != other for other in worlds[1:])
    for sim in group.simulators:  # the same world as alone, from the same config and clock
        alone = Simulator(sim.config, ManualClock(T0))
        assert alone.truth(clock()) == sim.truth()


def test_a_group_answers_only_at_its_paths_and_tokens(group: SimulatorGroup) -> None:
    kling, dreamina = group.simulators[1], group.simulators[-1]
    assert fetch(kling.url, "tok-dreamina").status == 401
    assert fetch(dreamina.url, "tok-dreamina").status == 200
    base = kling.url.removesuffix(SERVICE_PATHS["kling"])
    for path in (
        "/",
        "/v1/kling/videos",
        "/v1/midjourney/scheduler",
        "/v1/dreamina/scheduler/available",
    ):
        answer = fetch(base + path, "tok-dreamina")
        assert answer.status == 404, path
        assert json.loads(answer.body) == {"error": "Not Found", "code": 404}


def test_faults_stay_with_their_service(clock: ManualClock) -> None:
    configs = [
        SimConfig(service="pixverse", initial_jobs=2, faults=Faults(server_error=1)),
        SimConfig(service="kling", initial_jobs=2),
        SimConfig(seed=3, service="pixverse", path="/second/pixverse/scheduler/", initial_jobs=2),
    ]
    with SimulatorGroup(configs, clock) as group:
        broken, kling, second = group.simulators
        for _ in range(6):
            assert fetch(broken.url).status >= 500
            assert fetch(kling.url).status == 200
            snapshot = services.get("pixverse").parse(fetch(second.url).body)
            check_against_truth("pixverse", snapshot, second.running(), clock())
        assert broken.faults_injected["server_error"] == 6
        assert kling.faults_injected["server_error"] == second.faults_injected["server_error"] == 0
    with pytest.raises(RuntimeError):
        _ = kling.url  # stopped with its group


@pytest.mark.parametrize(
    "configs",
    [
        [],
        [SimConfig(service="kling"), SimConfig(service="kling", seed=2)],
        [SimConfig(path="/x/"), SimConfig(service="kling", path="/x/available")],
    ],
)
def test_a_group_needs_distinct_paths(configs: list[SimConfig]) -> None:
    with pytest.raises(ValueError, match=r"at least one|would answer at"):
        SimulatorGroup(configs)


def test_a_member_is_not_started_twice(clock: ManualClock) -> None:
    with SimulatorGroup([SimConfig()], clock) as group:
        with pytest.raises(RuntimeError, match="already started"):
            group.simulators[0].start()
        with pytest.raises(RuntimeError, match="already started"):
            group.start()
        group.simulators[0].stop()  # not its server to stop: a no-op
        assert fetch(group.urls[0]).status == 200


# --- the command -------------------------------------------------------------------------------


# `python -m recorder` with Ctrl-C's usual meaning: a test runner started in the background by
# a shell without job control ignores SIGINT, its children inherit that, and `simulate`, like
# any program, keeps the disposition it was given.
WITH_CTRL_C = [
    sys.executable,
    "-c",
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'recorder'; runpy.run_module('recorder', run_name='__main__')",
]


def test_simulate_serves_each_service_at_its_path(tmp_path: Path) -> None:
    log = tmp_path / "simulate.log"
    args = ["--port", "0", "--token", "t", "--initial-jobs", "3", "--seed", "4"]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                *WITH_CTRL_C,
                "simulate",
                *args,
                "--service",
                "kling",
                "--service",
                "dreamina",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        pattern = re.compile(
            r"simulating (http://127\.0\.0\.1:\d+(/\S*)) \(seed (\d+)\); Ctrl-C to stop"
        )

        def served() -> list[re.Match[str]]:
            running(process, log)
            lines = [pattern.fullmatch(line) for line in log.read_text().splitlines()]
            return [m for m in lines if m] if len(lines) == 2 else []

        kling, dreamina = wait_for(served, message="the two URLs")
        assert (kling.group(2), kling.group(3)) == (SERVICE_PATHS["kling"], "4")
        assert (dreamina.group(2), dreamina.group(3)) == (SERVICE_PATHS["dreamina"], "5")
        for match, name in ((kling, "kling"), (dreamina, "dreamina")):
            answer = fetch(match.group(1), "t")
            assert answer.status == 200
            snapshot = services.get(name).parse(answer.body)
            assert snapshot.untracked == snapshot.invalid_values == 0
            assert all(isinstance(item, Item) for item in snapshot.items)
        assert stop(process, log, signal.SIGINT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
