"""Job outcomes: asked after a job vanished, 404 retried, rate-limited, resumed after a restart.

Every test that stores runs on SQLite and PostgreSQL (the `engine` fixture). The HTTP tests ask a
simulator served on 127.0.0.1 under a manual clock (the `serve` and `clock` fixtures); the others
ask a scripted client. No test reads the wall clock: time moves only when a test moves it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, select

from recorder import reports
from recorder.cli import cli
from recorder.client import SchedulerClient
from recorder.clock import to_datetime
from recorder.config import ConfigError
from recorder.config_file import load_targets
from recorder.models import Job, JobOutcome
from recorder.outcomes import (
    HORIZON_S,
    Bounds,
    NotYet,
    OutcomeWorker,
    RateLimit,
    Settled,
    Unavailable,
    cross_check,
    outcome_url,
    parse_outcome,
    read_answer,
)
from recorder.parse import normalize_items
from recorder.pipeline import Pipeline
from recorder.simulator import Account, JobKind, ManualClock, SimConfig, Simulator, format_started
from recorder.snapshot import Failure, Outcome, PollResult
from recorder.store import Store
from tests import simulated
from tests.feeding import ok

SCHEDULER = "http://127.0.0.1:9/v2/pixverse/scheduler/"
T0 = simulated.T0
NOT_FOUND = (404, Failure(Outcome.HTTP_ERROR, "HTTP 404 Not Found"))

# --- reading an answer ----------------------------------------------------------------------------


def page(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


@pytest.mark.parametrize(
    ("body", "job_type", "expected"),
    [
        (page(video_status_name="COMPLETED"), "video", Settled("completed")),  # type: ignore[arg-type]
        (page(video_status_name="failed"), "video", Settled("failed")),  # type: ignore[arg-type]
        (page(video_status_name=" MODERATED "), None, Settled("moderated")),  # type: ignore[arg-type]
        (page(video_status=1), "video", Settled("completed")),  # type: ignore[arg-type]
        (page(video_status=7), "video", Settled("moderated")),  # type: ignore[arg-type]
        (page(image_status_name="COMPLETED"), "image", Settled("completed")),  # type: ignore[arg-type]
        (
            page(video_status_name="COMPLETED", created_at="2023-11-14T22:13:20Z"),
            "video",
            Settled("completed", created_at=1_700_000_000.0),  # type: ignore[arg-type]
        ),
        (
            page(image_status_name="FAILED", created_at=1_700_000_000_000, updated_at="bad"),
            "image",
            Settled("failed", 1_700_000_000.0, None, ("updated_at",)),  # type: ignore[arg-type]
        ),
    ],
)
def test_a_final_answer(body: bytes, job_type: str | None, expected: Settled) -> None:
    assert parse_outcome(body, job_type) == expected


@pytest.mark.parametrize(
    ("body", "job_type"),
    [
        (page(video_status_name="QUEUED", video_status_final=True), "video"),
        (page(video_status_name="GENERATING"), "video"),
        (page(video_status=10), "video"),
        (page(image_status_final=False), "image"),
    ],
)
def test_still_processing(body: bytes, job_type: str) -> None:
    answer = parse_outcome(body, job_type)
    assert isinstance(answer, NotYet) and not answer.unusable


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe garbage",
        b"<html>Just a moment...</html>",
        b'{"video_status_name": "COMPL',
        b"[1, 2, 3]",
        b"null",
        b"[" * 100_000,
        page(video_status_name=["COMPLETED"]),
        page(video_status_name=1),
        page(video_status_name="EXPLODED"),
        page(video_status_name="x" * 10_000),
        page(video_status=True),
        page(video_status=99),
        page(video_status="1"),
        page(video_status=1e300),
        page(video_status=2**80),
        page(other="field"),
        page(image_status_name="COMPLETED"),  # an image's page for a video
    ],
)
def test_a_hostile_answer_is_unusable_never_an_exception(body: bytes) -> None:
    answer = parse_outcome(body, "video")
    assert isinstance(answer, NotYet) and answer.unusable
    assert len(answer.why) < 200


@pytest.mark.parametrize("created", ["9999-99-99", "year 3000", -5, 1e300, True, {"a": 1}])
def test_an_absurd_time_is_dropped_and_the_outcome_kept(created: object) -> None:
    answer = parse_outcome(page(video_status_name="COMPLETED", created_at=created), "video")
    assert answer == Settled("completed", None, None, ("created_at",))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (404, Failure(Outcome.HTTP_ERROR, "HTTP 404 Not Found"), NotYet),
        (None, Failure(Outcome.NETWORK, "network error"), Unavailable),
        (None, Failure(Outcome.TIMEOUT, "timed out"), Unavailable),
        (401, Failure(Outcome.AUTH, "HTTP 401"), Unavailable),
        (429, Failure(Outcome.RATE_LIMITED, "HTTP 429", 30.0), Unavailable),
        (503, Failure(Outcome.SERVER, "HTTP 503"), Unavailable),
        (200, Failure(Outcome.BAD_PAYLOAD, "answer larger than 1048576 bytes"), NotYet),
        (400, Failure(Outcome.HTTP_ERROR, "HTTP 400"), NotYet),
        (302, Failure(Outcome.HTTP_ERROR, "HTTP 302 to elsewhere"), NotYet),
    ],
)
def test_what_a_status_means(status: int | None, body: Failure, kind: type) -> None:
    answer = read_answer(status, body, "video")
    assert isinstance(answer, kind)
    if isinstance(answer, NotYet):
        assert answer.unusable == (status != 404)


@pytest.mark.parametrize(
    ("url", "api_id", "job_type", "expected"),
    [
        (SCHEDULER, "user:1-pixverse:a@b.c-video:7", "video", "/v2/pixverse/videos/"),
        (SCHEDULER, "user:1-pixverse:a@b.c-image:7", "image", "/v2/pixverse/images/"),
        (SCHEDULER.rstrip("/") + "?x=1", "7", None, "/v2/pixverse/videos/"),
        (SCHEDULER, "7", "music", None),
        ("https://h/v2/pixverse/list", "7", "video", None),
    ],
)
def test_the_page_url(url: str, api_id: str, job_type: str | None, expected: str | None) -> None:
    found = outcome_url(url, api_id, job_type)
    if expected is None:
        assert found is None
        return
    assert found == "http://127.0.0.1:9" + expected + api_id.replace(":", "%3A").replace("@", "%40")


def test_a_slash_or_query_in_an_id_stays_in_its_segment() -> None:
    assert outcome_url(SCHEDULER, "a/../b?c#d", "video") == (
        "http://127.0.0.1:9/v2/pixverse/videos/a%2F..%2Fb%3Fc%23d"
    )


def test_the_client_sends_its_token_only_to_its_own_origin() -> None:
    with SchedulerClient(SCHEDULER, "secret-token") as client:
        for url in ("http://evil.example/v2/x", "https://127.0.0.1:9/", "http://u@127.0.0.1:9/"):
            with pytest.raises(ValueError, match="origin"):
                client.fetch(url)


def test_the_cross_check() -> None:
    bounds = Bounds(T0 - 2, T0, T0 + 100, T0 + 101)
    assert cross_check(bounds, Settled("completed", T0 - 30, T0 + 130)) is None  # type: ignore[arg-type]
    late = cross_check(bounds, Settled("completed", T0 + 600))  # type: ignore[arg-type]
    assert late is not None and "created_at" in late and "10m" in late
    early = cross_check(bounds, Settled("failed", None, T0))  # type: ignore[arg-type]
    assert early is not None and "before the end's lower bound" in early
    assert cross_check(Bounds(None, None, None, None), Settled("failed", 0.0, 0.0)) is None  # type: ignore[arg-type]


def test_the_rate_limit_is_a_sliding_minute() -> None:
    clock = ManualClock(T0)
    limit = RateLimit(3, clock)
    assert [limit.take() for _ in range(4)] == [True, True, True, False]
    clock.advance(59.999)
    assert limit.available() == 0 and not limit.take()
    clock.advance(0.001)
    assert limit.available() == 3


# --- the worker, with a scripted client ----------------------------------------------------------


class Scripted:
    """A client whose answers a test chooses; it records when each request was made."""

    def __init__(self, clock: ManualClock, answer: Callable[[str], tuple[int | None, Any]]) -> None:
        self.clock = clock
        self.answer = answer
        self.sent: list[tuple[float, str]] = []
        self.aborted = False

    def fetch(self, url: str | None = None) -> tuple[int | None, bytes | Failure]:
        assert url is not None and url.startswith("http://127.0.0.1:9/v2/pixverse/")
        self.sent.append((self.clock(), url))
        return self.answer(url)

    def abort(self) -> None:
        self.aborted = True


def vanish(
    engine: Engine,
    clock: ManualClock,
    count: int,
    url: str = SCHEDULER,
    job_type: str = "video",
    prefix: str = "job",
) -> Pipeline:
    """Record `count` jobs of `url` listed at the clock's time, then gone 10 s later."""
    items = [
        {
            "id": f"user:1-pixverse:a@example.com-{job_type}:{prefix}{n}",
            "type": job_type,
            "started": format_started(clock.t - 100),
            "elapsed": "01:40",
        }
        for n in range(count)
    ]
    results = [PollResult(clock.t, clock.t + 0.05, 200, normalize_items(items))]
    results.append(PollResult(clock.t + 10, clock.t + 10.05, 200, normalize_items([])))
    pipeline = Pipeline(Store(engine), url, lambda: results.pop(0), gap_s=90.0)
    pipeline.poll_once()
    clock.advance(10)
    pipeline.poll_once()
    clock.advance(1)
    return pipeline


def worker(
    engine: Engine, client: Any, pipeline: Pipeline, clock: ManualClock, **kwargs: Any
) -> OutcomeWorker:
    return OutcomeWorker(
        engine, client, pipeline.url, lambda: pipeline.target_id, name="t", clock=clock, **kwargs
    )


def rows(engine: Engine) -> dict[str, Any]:
    """Each asked job's outcome row, by the job's api id."""
    with engine.connect() as conn:
        found = conn.execute(
            select(Job.api_id, JobOutcome.__table__).join(Job, Job.id == JobOutcome.job_id)
        ).all()
    return {row.api_id: row for row in found}


def completed(url: str) -> tuple[int, bytes]:
    return 200, page(video_status_name="COMPLETED")


def test_at_most_n_requests_in_any_minute(engine: Engine) -> None:
    clock = ManualClock(T0)
    pipeline = vanish(engine, clock, 100)
    client = Scripted(clock, lambda url: NOT_FOUND)
    asker = worker(engine, client, pipeline, clock, rate_per_min=30)
    for _ in range(3):
        asker.tick()  # the ticks of one instant
    assert len(client.sent) == 30
    for _ in range(600):  # ten minutes of ticks a second
        clock.advance(1)
        asker.tick()
    times = [t for t, _ in client.sent]
    assert len(times) > 250  # the limit, not a lack of work, held it back
    assert max(sum(1 for u in times if t <= u < t + 60) for t in times) == 30
    pending = rows(engine)
    assert len(pending) == 100 and all(r.outcome is None for r in pending.values())


def test_404s_for_30_minutes_make_it_unknown_and_not_before(engine: Engine) -> None:
    clock = ManualClock(T0)
    pipeline = vanish(engine, clock, 1)
    client = Scripted(clock, lambda url: NOT_FOUND)
    asker = worker(engine, client, pipeline, clock)
    end_max = rows_end_max(engine)
    while clock.t < end_max + HORIZON_S - 1:
        asker.tick()
        assert all(r.outcome is None for r in rows(engine).values())
        clock.advance(1)
    clock.t = end_max + HORIZON_S
    asker.tick()
    (row,) = rows(engine).values()
    assert row.outcome == "unknown" and row.next_attempt_at is None
    assert 8 <= row.attempts <= 15  # backed off: 15 s, 30 s, … up to 5 minutes apart
    asked = len(client.sent)
    clock.advance(3600)
    asker.tick()
    assert len(client.sent) == asked  # a final row is never asked about again


def rows_end_max(engine: Engine) -> float:
    with engine.connect() as conn:
        return float(conn.scalar(select(Job.end_max)).timestamp())


def test_an_outage_pauses_the_asking_and_costs_no_job_an_attempt(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    pipeline = vanish(engine, clock, 5)
    answers: list[tuple[int | None, Any]] = [
        (503, Failure(Outcome.SERVER, "HTTP 503 Service Unavailable")),
        (429, Failure(Outcome.RATE_LIMITED, "HTTP 429", 120.0)),
    ]
    client = Scripted(clock, lambda url: answers.pop(0) if answers else completed(url))
    asker = worker(engine, client, pipeline, clock)
    with caplog.at_level(logging.INFO, logger="recorder"):
        asker.tick()
        assert len(client.sent) == 1 and asker.failing == "server"
        clock.advance(9)
        asker.tick()
        assert len(client.sent) == 1  # paused 10 s
        clock.advance(1)
        asker.tick()
        assert len(client.sent) == 2  # the 429 says 120 s
        clock.advance(119)
        asker.tick()
        assert len(client.sent) == 2
        clock.advance(1)
        asker.tick()
    assert all(r.outcome == "completed" and r.attempts == 1 for r in rows(engine).values())
    assert "recovered" in caplog.text
    assert sum("failing (server)" in m for m in caplog.messages) == 1


def test_a_garbage_answer_is_logged_for_its_job_and_asked_again(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    pipeline = vanish(engine, clock, 1)
    answers = [(200, b"\x00<html>" * 1000), (200, page(video_status_name=["?"]))]
    client = Scripted(clock, lambda url: answers.pop(0) if answers else completed(url))
    asker = worker(engine, client, pipeline, clock)
    with caplog.at_level(logging.WARNING, logger="recorder"):
        for _ in range(3):
            asker.tick()
            clock.advance(60)
    (row,) = rows(engine).values()
    assert row.outcome == "completed" and row.attempts == 3
    unusable = [m for m in caplog.messages if "unusable answer" in m]
    assert len(unusable) == 2 and all("job0" in m for m in unusable)


def test_a_disagreement_is_recorded_and_no_bound_moves(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(T0)
    pipeline = vanish(engine, clock, 1)
    with engine.connect() as conn:
        before = conn.execute(select(Job.__table__)).one()
    created = format_started(clock.t + 3600)  # an hour after the job ended
    client = Scripted(clock, lambda url: (200, page(video_status=8, created_at=created)))
    with caplog.at_level(logging.WARNING, logger="recorder"):
        worker(engine, client, pipeline, clock).tick()
    (row,) = rows(engine).values()
    assert row.outcome == "failed"
    assert row.api_created_at.timestamp() == pytest.approx(clock.t + 3600, abs=0.01)
    assert row.disagreement is not None and "created_at" in row.disagreement
    assert "disagree" in caplog.text
    with engine.connect() as conn:
        assert conn.execute(select(Job.__table__)).one() == before


def test_only_the_jobs_that_vanished_within_the_horizon_are_asked(engine: Engine) -> None:
    clock = ManualClock(T0)
    vanish(engine, clock, 3, prefix="old")
    clock.advance(HORIZON_S + 60)
    pipeline = vanish(engine, clock, 2, prefix="new")
    client = Scripted(clock, completed)
    worker(engine, client, pipeline, clock).tick()
    assert sorted(rows(engine)) == [f"user:1-pixverse:a@example.com-video:new{n}" for n in (0, 1)]


def test_nothing_is_asked_while_another_recorder_holds_the_target(engine: Engine) -> None:
    clock = ManualClock(T0)
    pipeline = vanish(engine, clock, 2)
    client = Scripted(clock, completed)
    asker = OutcomeWorker(engine, client, pipeline.url, lambda: None, name="t", clock=clock)
    assert asker.tick() == 0
    assert client.sent == [] and rows(engine) == {}


# --- against the simulator, over HTTP on 127.0.0.1 ------------------------------------------------

VIDEO_ONLY = (JobKind("video", 0.0, 60.0),)  # no arrivals: the initial jobs alone
ACCOUNTS = (Account("a@example.com", "1", max_jobs=10),)


def record_until_all_vanished(engine: Engine, sim: Simulator, clock: ManualClock) -> Pipeline:
    """Poll the simulator's world (no HTTP) now and after its jobs ended; return the pipeline."""
    ends = [job.end for job in sim.running()]
    results = [ok(sim, clock)]
    clock.t = max(ends) + 1
    results.append(ok(sim, clock))
    pipeline = Pipeline(Store(engine), sim.url, lambda: results.pop(0), gap_s=10**6)
    pipeline.poll_once()
    pipeline.poll_once()
    return pipeline


def simulator_client(sim: Simulator, clock: ManualClock) -> SchedulerClient:
    return SchedulerClient(sim.url, sim.config.token, timeout=(5.0, 20.0), wall_clock=clock)


def test_404_then_200_from_the_simulator(
    engine: Engine, serve: simulated.Serve, clock: ManualClock
) -> None:
    kinds = (*VIDEO_ONLY, JobKind("image", 0.0, 10.0))
    config = SimConfig(seed=4, kinds=kinds, accounts=ACCOUNTS, initial_jobs=6, outcome_delay_s=600)
    sim = serve(config)
    pipeline = record_until_all_vanished(engine, sim, clock)
    types = {job.api_id: job.type for job in sim.truth()}
    assert set(types.values()) == {"video", "image"}
    with simulator_client(sim, clock) as client:
        asker = worker(engine, client, pipeline, clock)
        assert asker.tick() == 6
        first = rows(engine)
        for api_id, row in first.items():
            if types[api_id] == "video":  # 404: still processing
                assert (row.outcome, row.attempts) == (None, 1)
            else:  # an image answers at once
                assert row.outcome == sim.outcome(api_id).lower()  # type: ignore[union-attr]
        clock.advance(601)
        asker.tick()
    final = rows(engine)
    assert {api_id: row.outcome for api_id, row in final.items()} == {
        api_id: sim.outcome(api_id).lower()  # type: ignore[union-attr]
        for api_id in types
    }
    assert all(row.api_created_at is not None for row in final.values())
    assert all(row.disagreement is None for row in final.values())
    listed = {job["id"]: job["outcome"] for job in reports.jobs(engine)}
    assert listed == {api_id: row.outcome for api_id, row in final.items()}


def test_a_job_the_simulator_never_ran_is_unknown_after_30_minutes(
    engine: Engine, serve: simulated.Serve, clock: ManualClock
) -> None:
    sim = serve(SimConfig(seed=5, kinds=VIDEO_ONLY, accounts=ACCOUNTS))
    pipeline = vanish(engine, clock, 1, url=sim.url, prefix="never")
    with simulator_client(sim, clock) as client:
        asker = worker(engine, client, pipeline, clock)
        for _ in range(40):
            asker.tick()
            clock.advance(60)
    (row,) = rows(engine).values()
    assert row.outcome == "unknown"


def test_a_vanished_job_whose_outcome_arrives_after_a_restart(
    engine: Engine, serve: simulated.Serve, clock: ManualClock
) -> None:
    config = SimConfig(
        seed=6, kinds=VIDEO_ONLY, accounts=ACCOUNTS, initial_jobs=3, outcome_delay_s=300
    )
    sim = serve(config)
    pipeline = record_until_all_vanished(engine, sim, clock)
    with simulator_client(sim, clock) as client:
        first = worker(engine, client, pipeline, clock)
        assert first.tick() == 3
        first.abort()  # the recorder stops
        clock.advance(30)
        assert first.tick() == 1  # cut short at once: asks nothing more
    assert all((r.outcome, r.attempts) == (None, 1) for r in rows(engine).values())

    clock.advance(300)
    restarted = Pipeline(Store(engine), sim.url, lambda: ok(sim, clock), gap_s=10**6)
    restarted.poll_once()
    with simulator_client(sim, clock) as client:
        again = worker(engine, client, restarted, clock)
        assert again.tick() == 3
    final = rows(engine)
    assert len(final) == 3
    for api_id, row in final.items():
        assert row.outcome == sim.outcome(api_id).lower()  # type: ignore[union-attr]
        assert row.attempts == 2


# --- configuration -------------------------------------------------------------------------------


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(body)
    return path


def test_outcomes_in_a_config_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[targets.main]\nservice = "pixverse"\ntoken_env = "T"\noutcomes = true\n'
        'outcome_rate = 12\n[targets.other]\nservice = "pixverse"\n'
        'url = "https://h/v2/pixverse/scheduler/"\ntoken_env = "T"\n',
    )
    main, other = load_targets(path, environ={"T": "token"})
    assert (main.outcomes, main.outcome_rate) == (True, 12)
    assert (other.outcomes, other.outcome_rate) == (False, 30)


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('service = "kling"\noutcomes = true', "kling has no job outcomes"),
        ('service = "pixverse"\noutcomes = "yes"', "must be true or false"),
        ('service = "pixverse"\noutcome_rate = 10', "only with outcomes = true"),
        ('service = "pixverse"\noutcomes = true\noutcome_rate = 0', "1 to 600"),
        ('service = "pixverse"\noutcomes = true\noutcome_rate = 1.5', "whole number"),
    ],
)
def test_a_bad_outcomes_key_is_one_line(tmp_path: Path, lines: str, message: str) -> None:
    path = write_config(tmp_path, f'[targets.t]\ntoken_env = "T"\n{lines}\n')
    with pytest.raises(ConfigError, match=message) as error:
        load_targets(path, environ={"T": "token"})
    assert "\n" not in str(error.value) and "token" not in str(error.value).replace("token_", "")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--url", "https://api.useapi.net/v1/kling/scheduler", "--outcomes"], "kling has no"),
        (["--outcome-rate", "10"], "--outcome-rate needs --outcomes"),
        (["--config", "x.toml", "--outcomes"], "--config and --outcomes"),
    ],
)
def test_run_refuses_outcomes_it_cannot_ask(tmp_path: Path, args: list[str], message: str) -> None:
    db_url = f"sqlite:///{tmp_path / 'r.db'}"
    result = CliRunner().invoke(
        cli, ["--db", db_url, "run", *args], env={"USEAPI_TOKEN": "secret-token"}
    )
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "secret-token" not in result.output


def test_an_unknown_outcome_row_counts_in_no_success_rate(engine: Engine) -> None:
    """success_rate is completed among completed, failed and moderated: unknown is not a failure."""
    from recorder import stats

    clock = ManualClock(T0)
    pipeline = vanish(engine, clock, 4)
    verdicts = iter(["COMPLETED", "FAILED", "COMPLETED"])

    def answer(url: str) -> tuple[int | None, Any]:
        name = next(verdicts, None)
        return NOT_FOUND if name is None else (200, page(video_status_name=name))

    asker = worker(engine, Scripted(clock, answer), pipeline, clock)
    asker.tick()
    clock.advance(HORIZON_S + 100)
    asker.tick()
    assert sorted(r.outcome for r in rows(engine).values()) == [
        "completed",
        "completed",
        "failed",
        "unknown",
    ]
    window = (to_datetime(T0 - 3600), to_datetime(T0 + 3600), to_datetime(clock.t))
    (group,) = stats.compute(engine, stats.StatsQuery(*window)).groups
    assert group.success_rate == pytest.approx(2 / 3)
    by = stats.compute(engine, stats.StatsQuery(*window, by=("outcome",))).groups
    assert {g.key["outcome"]: g.finished for g in by} == {"completed": 2, "failed": 1, "unknown": 1}
