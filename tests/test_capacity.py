"""Accounts' capacity (/scheduler/available): stored only when it changes, read beside the polls
by the daemon without ever affecting them, and summed up by `recorder stats --by account`."""

from __future__ import annotations

import csv
import io
import itertools
import json
import logging
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, select

from recorder import db, services
from recorder.capacity import CapacityReader
from recorder.cli import cli
from recorder.client import SchedulerClient
from recorder.clock import to_datetime
from recorder.models import Capacity as CapacityTable
from recorder.models import Target
from recorder.output import iso
from recorder.parse import LIMITS
from recorder.services import Capacity
from recorder.simulator import Account, JobKind, SimConfig, Simulator, TrueJob
from recorder.stats import CapacitySpan, capacity_figures
from recorder.store import Store
from tests import stats_model
from tests.test_many_targets import TOKEN, check_against_truth, check_log, config, start
from tests.waiting import Unmet, peek, reader, running, stop, wait_for

T0 = 1_800_000_000.0
GAP = 30.0
URL = "https://api.useapi.net/v1/kling/scheduler"


def rows(engine: Engine) -> list[Any]:
    """Every capacity row, in id order, times as epoch seconds."""
    with engine.connect() as conn:
        found = conn.execute(select(CapacityTable.__table__).order_by(CapacityTable.id)).all()
    return [
        SimpleNamespace(
            **row._asdict()
            | {"first_at": row.first_at.timestamp(), "last_at": row.last_at.timestamp()}
        )
        for row in found
    ]


def read(store: Store, target_id: int, at: float, *lines: Capacity) -> int:
    return store.record_capacity(target_id, T0 + at, lines, GAP)


A = "a@example.com"
B = "b@example.com"


def test_identical_reads_write_one_row_whose_end_moves(store: Store, engine: Engine) -> None:
    target_id = store.target(URL, T0)
    assert read(store, target_id, 0, Capacity(A, 3, 1, 2)) == 1
    for at in (10, 20, 30, 40):
        assert read(store, target_id, at, Capacity(A, 3, 1, 2)) == 0
    (row,) = rows(engine)
    assert (row.account, row.max_jobs, row.executing, row.available) == (A, 3, 1, 2)
    assert (row.first_at, row.last_at) == (T0, T0 + 40)


def test_a_change_starts_a_row_that_meets_the_last(store: Store, engine: Engine) -> None:
    target_id = store.target(URL, T0)
    read(store, target_id, 0, Capacity(A, 3, 1, 2))
    read(store, target_id, 10, Capacity(A, 3, 1, 2))
    assert read(store, target_id, 20, Capacity(A, 3, 3, 0)) == 1
    read(store, target_id, 30, Capacity(A, 3, 3, 0))
    first, second = rows(engine)
    assert (first.first_at, first.last_at) == (T0, T0 + 20)  # up to the read that saw the change
    assert (second.first_at, second.last_at) == (T0 + 20, T0 + 30)
    assert (second.executing, second.available) == (3, 0)


def test_a_silence_longer_than_the_gap_starts_a_row_that_does_not_meet(
    store: Store, engine: Engine
) -> None:
    target_id = store.target(URL, T0)
    read(store, target_id, 0, Capacity(A, 3, 1, 2))
    read(store, target_id, 10, Capacity(A, 3, 1, 2))
    assert read(store, target_id, 10 + GAP + 1, Capacity(A, 3, 1, 2)) == 1  # same values
    assert read(store, target_id, 100 + 2 * GAP, Capacity(A, 3, 2, 1)) == 1  # changed
    first, second, third = rows(engine)
    assert (first.first_at, first.last_at) == (T0, T0 + 10)
    assert (second.first_at, second.last_at) == (T0 + 10 + GAP + 1,) * 2
    assert (third.first_at, third.last_at) == (T0 + 100 + 2 * GAP,) * 2


def test_accounts_are_independent_and_a_missing_one_is_not_extended(
    store: Store, engine: Engine
) -> None:
    target_id = store.target(URL, T0)
    other = store.target(URL + "/other", T0)
    assert read(store, target_id, 0, Capacity(A, 3, 1, 2), Capacity(B, 5, 0, 5)) == 2
    assert read(store, other, 0, Capacity(A, 4, 0, 4)) == 1  # the same account, elsewhere
    assert read(store, target_id, 10, Capacity(A, 3, 2, 1)) == 1  # B not listed
    assert read(store, target_id, 20, Capacity(A, 3, 2, 1), Capacity(B, 5, 0, 5)) == 0
    found = {(r.target_id, r.account, r.first_at): r for r in rows(engine)}
    assert len(found) == 4
    assert found[(target_id, A, T0)].last_at == T0 + 10
    assert found[(target_id, A, T0 + 10)].last_at == T0 + 20
    assert found[(target_id, B, T0)].last_at == T0 + 20  # back within the gap: extended
    assert found[(other, A, T0)].last_at == T0  # another target's row is its own


def test_hostile_values_are_bounded(store: Store, engine: Engine) -> None:
    target_id = store.target(URL, T0)
    long_name = "x" * 10_000 + "@example.com"
    lines = [Capacity(long_name, -1, 2**40, True), Capacity(long_name, 1, 1, 0)]  # type: ignore[arg-type]
    assert store.record_capacity(target_id, T0, lines, GAP) == 1  # one account: its first line
    (row,) = rows(engine)
    assert len(row.account) == LIMITS["account"]
    assert (row.max_jobs, row.executing, row.available) == (None, None, None)
    # The parser's own bounds, from a hostile answer.
    body = json.dumps(
        {"available": [{"email": long_name, "maxJobs": -3, "executing": 1e30, "available": "2"}]}
    ).encode()
    (parsed,) = services.get("kling").parse_available(body)
    assert len(parsed.account) == LIMITS["account"]
    assert (parsed.max_jobs, parsed.executing, parsed.available) == (None, None, None)


# --- the figures ---------------------------------------------------------------------------------


def span(first: float, last: float, max_jobs: int | None, executing: int | None, **kw: Any) -> Any:
    return CapacitySpan(
        kw.get("target_id", 1),
        "a",
        max_jobs,
        executing,
        kw.get("available"),
        first,
        last,
    )


@pytest.mark.parametrize(
    ("spans", "window", "expected"),
    [
        ([], (0, 10), (None, None, None)),
        # Half the window at 1 of 4, half at 4 of 4 (no slot free).
        ([span(0, 5, 4, 1, available=3), span(5, 10, 4, 4, available=0)], (0, 10), (4, 0.625, 0.5)),
        # Only the covered part counts: 2 of 4 over [2, 4), nothing known elsewhere.
        ([span(2, 4, 4, 2)], (0, 10), (4, 0.5, 0.0)),
        # Without `available`, executing at max_jobs is saturated.
        ([span(0, 10, 2, 2)], (0, 10), (2, 1.0, 1.0)),
        # max_jobs unknown or 0: no coverage; the latest row's max_jobs is shown (null here).
        ([span(0, 5, 3, 1), span(5, 10, None, 1)], (6, 8), (None, None, None)),
        ([span(0, 10, 0, 0)], (0, 10), (0, None, None)),
        # A row of a single read is the latest, but covers no time.
        ([span(0, 5, 3, 1), span(5, 5, 6, 1)], (0, 10), (6, 1 / 3, 0.0)),
        # Several targets: their latest max_jobs summed; time-weighted over both.
        (
            [span(0, 10, 2, 1), span(0, 10, 3, 3, target_id=2, available=0)],
            (0, 10),
            (5, 0.75, 0.5),
        ),
        # A row that ends where the window starts still says the max_jobs it had.
        ([span(0, 5, 3, 1)], (5, 10), (3, None, None)),
    ],
)
def test_capacity_figures(spans: list[Any], window: tuple[float, float], expected: tuple) -> None:
    figures = capacity_figures(spans, *window)
    assert (figures.max_jobs, figures.utilization, figures.saturated_share) == pytest.approx(
        expected
    )


def histories() -> st.SearchStrategy[list[CapacitySpan]]:
    """A few targets' rows, each target's a sequence of runs that meet or leave a silence."""

    def runs(target_id: int) -> st.SearchStrategy[list[CapacitySpan]]:
        run = st.tuples(
            st.integers(0, 300),  # silence before it, in ms (0: it meets the previous one)
            st.integers(0, 300),  # length in ms (0: one read)
            st.one_of(st.none(), st.integers(0, 4)),
            st.one_of(st.none(), st.integers(0, 5)),
            st.one_of(st.none(), st.integers(0, 4)),
        )

        def build(parts: list[tuple[int, int, Any, Any, Any]]) -> list[CapacitySpan]:
            made, at = [], 0
            for silence, length, max_jobs, executing, available in parts:
                at += silence
                made.append(
                    CapacitySpan(
                        target_id,
                        "a",
                        max_jobs,
                        executing,
                        available,
                        at / 1000,
                        (at + length) / 1000,
                    )
                )
                at += length
            return made

        return st.lists(run, max_size=5).map(build)

    return st.tuples(runs(1), runs(2)).map(lambda both: both[0] + both[1])


@settings(max_examples=150, deadline=None, database=None)
@given(spans=histories(), since=st.integers(0, 1500), length=st.integers(1, 800))
def test_capacity_figures_are_the_model(spans: list[CapacitySpan], since: int, length: int) -> None:
    """Every millisecond of random windows over random histories, looked at one by one."""
    figures = capacity_figures(spans, since / 1000, (since + length) / 1000)
    max_jobs, utilization, saturated = stats_model.capacity_truth(spans, since, since + length)
    assert figures.max_jobs == max_jobs
    for got, want in ((figures.utilization, utilization), (figures.saturated_share, saturated)):
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


# --- stats --by account --------------------------------------------------------------------------


def a_history(engine: Engine) -> None:
    """Two targets of one service; jobs of two accounts; capacity rows of account A."""
    store = Store(engine)
    first = store.target(URL, T0, name="kling-1")
    second = store.target(URL + "?email=x", T0, name="kling-2")
    with engine.begin() as conn:
        conn.execute(
            insert(CapacityTable),
            [
                capacity_row(first, A, 4, 1, 3, 0, 1800),
                capacity_row(first, A, 4, 4, 0, 1800, 3600),
                capacity_row(second, A, 2, 1, 1, 0, 3600),
            ],
        )
    for target_id, account in ((first, A), (first, B), (second, A)):
        job(engine, target_id, account)


def capacity_row(target_id: int, account: str, *values: int) -> dict[str, Any]:
    max_jobs, executing, available, first, last = values
    return {
        "target_id": target_id,
        "account": account,
        "max_jobs": max_jobs,
        "executing": executing,
        "available": available,
        "first_at": to_datetime(T0 + first),
        "last_at": to_datetime(T0 + last),
    }


def job(engine: Engine, target_id: int, account: str) -> None:
    from recorder.models import Job, Poll

    with engine.begin() as conn:
        poll_id = conn.execute(
            insert(Poll)
            .values(
                target_id=target_id,
                sent_at=to_datetime(T0),
                received_at=to_datetime(T0),
                latency_s=0.0,
                outcome="ok",
                after_gap=False,
            )
            .returning(Poll.id)
        ).scalar_one()
        conn.execute(
            insert(Job).values(
                target_id=target_id,
                api_id=f"{target_id}-{account}",
                type="video",
                account=account,
                status="finished",
                first_poll_id=poll_id,
                last_poll_id=poll_id,
                start_at=to_datetime(T0 + 60),
                start_source="poll",
                end_at=to_datetime(T0 + 120),
                duration_s=60.0,
                closed_across_gap=False,
            )
        )


def stats_output(db_url: str, *by: str, fmt: str = "json") -> str:
    args = ["--db", db_url, "stats", "--since", iso(to_datetime(T0))]
    args += ["--until", iso(to_datetime(T0 + 3600)), "--format", fmt]
    for key in by:
        args += ["--by", key]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_stats_by_account_shows_the_capacity(engine: Engine, db_url: str) -> None:
    a_history(engine)
    groups = {g["account"]: g for g in json.loads(stats_output(db_url, "account"))["groups"]}
    # Both targets: 4 + 2 slots; (1/4 * 1800 + 4/4 * 1800 + 1/2 * 3600) / 7200; half the time
    # of the first target and none of the second's full.
    assert groups[A]["max_jobs"] == 6
    assert groups[A]["utilization"] == pytest.approx(0.5625)
    assert groups[A]["saturated_share"] == pytest.approx(0.25)
    assert (groups[B]["max_jobs"], groups[B]["utilization"], groups[B]["saturated_share"]) == (
        None,
        None,
        None,
    )
    by_target = json.loads(stats_output(db_url, "account", "target"))["groups"]
    one = next(g for g in by_target if g["account"] == A and g["target"] == "kling-2")
    assert (one["max_jobs"], one["utilization"], one["saturated_share"]) == (2, 0.5, 0.0)
    hours = json.loads(stats_output(db_url, "account", "hour"))["groups"]
    assert [g["utilization"] for g in hours if g["account"] == A] == [pytest.approx(0.5625)]
    # Without account among the keys, no group has the fields.
    for by in ((), ("type",), ("target",)):
        for group in json.loads(stats_output(db_url, *by))["groups"]:
            assert not {"max_jobs", "utilization", "saturated_share"} & set(group)
    table = stats_output(db_url, "account", fmt="table")
    header = table.splitlines()[1].split()
    assert header[-3:] == ["max_jobs", "utilization", "saturated"]
    assert "56.2%" in table
    (row_a,) = [
        r
        for r in csv.DictReader(io.StringIO(stats_output(db_url, "account", fmt="csv")))
        if r["account"] == A
    ]
    assert (row_a["max_jobs"], row_a["saturated_share"]) == ("6", "0.25")


def test_the_view_shows_the_rows(engine: Engine) -> None:
    a_history(engine)
    with engine.connect() as conn:
        found = conn.exec_driver_sql(
            "SELECT target, target_name, service, account, max_jobs, executing, available, "
            "since, until FROM account_capacity ORDER BY target_name, since"
        ).all()
    assert [(r.target_name, r.service, r.account, r.executing) for r in found] == [
        ("kling-1", "kling", A, 1),
        ("kling-1", "kling", A, 4),
        ("kling-2", "kling", A, 1),
    ]
    first = found[0]
    assert first.target == URL
    if engine.dialect.name == "sqlite":
        assert first.since == iso(to_datetime(T0))
    else:
        assert first.since == to_datetime(T0)


# --- the daemon ----------------------------------------------------------------------------------


def kling_world(seed: int) -> SimConfig:
    return SimConfig(
        seed=seed,
        token=TOKEN,
        service="kling",
        kinds=(JobKind("video", 60.0, 2.0),),
        accounts=(Account("a@example.com", "1", max_jobs=2), Account("b@example.com", "1", 3)),
        initial_jobs=2,
    )


class NoAvailable(Simulator):
    """A simulator whose /scheduler/available is not found."""

    def _route(self, raw_path: str) -> str | None:
        route = super()._route(raw_path)
        return None if route == "available" else route


def executing_at(jobs: list[TrueJob], account: str, t: float) -> int:
    return sum(1 for job in jobs if job.account == account and job.start <= t < job.end)


def test_the_daemon_records_capacity_and_a_failing_available_costs_nothing(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "daemon.log"
    with ExitStack() as stack:
        good = stack.enter_context(Simulator(kling_world(51)))
        broken = stack.enter_context(NoAvailable(kling_world(52)))
        targets = {
            "kling": {
                "service": "kling",
                "url": good.url,
                "interval": 0.25,
                "capacity_interval": 1,
            },
            "broken": {
                "service": "kling",
                "url": broken.url,
                "interval": 0.25,
                "capacity_interval": 1,
            },
        }
        process = start(db_url, config(tmp_path, targets), log)
        try:
            with reader(db_url) as live:

                def rows_changed_and_jobs_ended() -> bool | Unmet:
                    running(process, log)
                    found = peek(live, select(CapacityTable.__table__))
                    if len(found) >= 6 and "[broken] capacity: failing" in log.read_text():
                        return True
                    return Unmet(f"{len(found)} capacity row(s)")

                wait_for(rows_changed_and_jobs_ended, message="capacity rows of 'kling'")
        finally:
            code = stop(process, log)
        assert code == 0, log.read_text()
        engine = db.create(db_url)
        try:
            with engine.connect() as conn:
                ids = dict(conn.execute(select(Target.name, Target.id)).all())
            found = rows(engine)
            assert {r.target_id for r in found} == {ids["kling"]}
            truth = good.truth()
            limits = {a.email: a.max_jobs for a in good.config.accounts}
            for row in found:
                assert row.max_jobs == limits[row.account]
                assert row.executing + row.available == row.max_jobs
                # The server counted at some moment of the read that saw the row, which ended
                # at first_at (the deadline bounds how long before).
                moments = [row.first_at - k / 100 for k in range(0, 2000)]
                assert any(executing_at(truth, row.account, t) == row.executing for t in moments)
            # Per account, rows follow each other in time and never overlap.
            for account in limits:
                mine = sorted((r for r in found if r.account == account), key=lambda r: r.id)
                for earlier, later in itertools.pairwise(mine):
                    assert earlier.last_at <= later.first_at
                    assert (earlier.max_jobs, earlier.executing) != (
                        later.max_jobs,
                        later.executing,
                    ) or earlier.last_at < later.first_at
            # Both histories are their simulators' truth, /available or not.
            assert check_against_truth(engine, good.url, good) >= 1
            assert check_against_truth(engine, broken.url, broken) >= 1
        finally:
            engine.dispose()
    text = check_log(log, list(targets))
    assert text.count("[broken] capacity: failing (http_error)") == 1
    assert "[kling] capacity: failing" not in text


def test_a_reader_never_raises_and_logs_each_change_once(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    target_id = store.target(URL, T0)
    with NoAvailable(kling_world(53)) as sim:
        client = SchedulerClient(services.get("kling").available_url(sim.url) or "", TOKEN)
        calls = iter([None, target_id, target_id, target_id])
        reader_ = CapacityReader(
            services.get("kling"), client, store, lambda: next(calls), 1.0, name="k"
        )
        with caplog.at_level(logging.INFO, logger="recorder"):
            assert reader_.tick() is None  # not attached yet: no request
            assert sim.requests_served == 0
            assert reader_.tick() is None
            assert reader_.tick() is None
            client.close()
    assert reader_.failing == "http_error"
    failing = [r for r in caplog.records if "capacity: failing" in r.getMessage()]
    assert len(failing) == 1
    assert TOKEN not in caplog.text
