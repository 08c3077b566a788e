"""`recorder stats` against a brute-force computation of every figure, in every output format."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert

from recorder import db, rollups, stats
from recorder.cli import cli
from recorder.clock import to_datetime
from recorder.models import Job, JobStatus, Poll, Target
from recorder.output import human_duration, iso
from tests import stats_model
from tests.histories import T0, URL_A, URL_B
from tests.plans import planned, statements

WINDOWS = {
    "everything": (T0 - 1800, T0 + 6 * 3600),
    "one hour": (T0 + 3600 + 600, T0 + 2 * 3600 + 600),
    "the outage": (T0 + 7000, T0 + 9000),
    "before any poll": (T0 - 7200, T0 - 3600),
}
GROUPINGS = [
    (),
    ("type",),
    ("account",),
    ("hour",),
    ("day",),
    ("type", "hour"),
    ("account", "day"),
    ("service",),  # the history's two targets are both "generic": one group of both
    ("target",),
    ("service", "hour"),
    ("target", "type"),
    ("outcome",),
    ("outcome", "hour"),
    ("type", "outcome"),
]
LABELS = {"name": "a", "service": "generic"}  # a target's, inserted behind the store's back


def run_stats(url: str, since: float, until: float, by: tuple[str, ...], fmt: str) -> str:
    args = [
        "--db",
        url,
        "stats",
        "--since",
        iso(to_datetime(since)),
        "--until",
        iso(to_datetime(until)),
    ]
    for key in by:
        args += ["--by", key]
    result = CliRunner().invoke(
        cli, [*args, "--format", fmt, "--histogram"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return result.output


def key_of(group: dict, by: tuple[str, ...]) -> tuple:
    return tuple(
        datetime.fromisoformat(group[k].replace("Z", "+00:00")).timestamp()
        if k in ("hour", "day")
        else group[k]
        for k in by
    )


def approx(value: float | None) -> object:
    return None if value is None else pytest.approx(value, abs=2e-3, rel=1e-6)


@pytest.mark.parametrize("by", GROUPINGS, ids=lambda by: "+".join(by) or "all")
@pytest.mark.parametrize("window", list(WINDOWS), ids=str)
def test_json_matches_brute_force(history: tuple, window: str, by: tuple[str, ...]) -> None:
    url, jobs, polls = history
    since, until = WINDOWS[window]
    report = json.loads(run_stats(url, since, until, by, "json"))
    now = datetime.now(UTC).timestamp()
    truth = stats_model.compute(jobs, polls, since, until, now, by)

    assert report["window"] == {"since": iso(to_datetime(since)), "until": iso(to_datetime(until))}
    assert report["by"] == list(by)
    assert {key_of(g, by) for g in report["groups"]} == set(truth)
    for group in report["groups"]:
        expected = truth[key_of(group, by)]
        assert group["window"] == {
            "since": iso(to_datetime(expected.since)),
            "until": iso(to_datetime(expected.until)),
        }
        assert group["finished"] == len(expected.durations)
        assert group["started"] == expected.started
        assert group["running"] == expected.running
        assert group["success_rate"] == approx(expected.success_rate())
        durations = group["duration_s"]
        assert durations["count"] == len(expected.durations)
        assert durations["closed_across_gap"] == expected.wide
        mean = sum(expected.durations) / len(expected.durations) if expected.durations else None
        assert durations["mean"] == approx(mean)
        assert durations["max"] == approx(max(expected.durations, default=None))
        for p in stats_model.PERCENTILES:
            assert durations[f"p{p}"] == approx(expected.percentile(p)), p
        hours = (expected.until - expected.since) / 3600
        assert group["throughput_per_hour"] == approx(len(expected.durations) / hours)
        assert group["peak_concurrency"] == expected.peak()
        assert group["mean_concurrency"] == approx(expected.mean_concurrency())
        assert group["coverage"] == approx(expected.coverage)
        assert group["gaps"] == expected.gaps
        assert group["longest_gap_s"] == approx(expected.longest_gap)
        assert group["missed_estimate"] == pytest.approx(round(expected.missed(), 1), abs=0.11)
        histogram = {b["min_s"]: b["count"] for b in group["histogram"]}
        assert histogram == expected.histogram()


def test_the_fixture_exercises_every_figure(history: tuple) -> None:
    """Guard against a history so plain that the comparisons above prove little."""
    url, _, _ = history
    since, until = WINDOWS["everything"]
    report = json.loads(run_stats(url, since, until, ("type",), "json"))
    groups = {g["type"]: g for g in report["groups"]}
    assert set(groups) == {"video", "image"}
    assert all(g["duration_s"]["count"] > 20 for g in groups.values())
    assert any(g["duration_s"]["closed_across_gap"] > 0 for g in groups.values())
    assert all(g["peak_concurrency"] >= 2 for g in groups.values())
    assert 0.3 < groups["video"]["coverage"] < 0.95
    assert groups["video"]["gaps"] >= 3
    assert groups["video"]["longest_gap_s"] >= 1500
    assert all(0.5 < g["success_rate"] < 0.95 for g in groups.values())
    by_outcome = json.loads(run_stats(url, since, until, ("outcome",), "json"))["groups"]
    assert {g["outcome"] for g in by_outcome} == {
        None,
        "completed",
        "failed",
        "moderated",
        "unknown",
    }


@pytest.mark.parametrize("history", ["sqlite"], indirect=True)
@pytest.mark.parametrize("target", [None, URL_A], ids=["all targets", "one target"])
@pytest.mark.parametrize("by", GROUPINGS, ids=lambda by: "+".join(by) or "all")
@pytest.mark.parametrize("window", ["everything", "one hour"], ids=str)
def test_running_jobs_are_read_through_their_partial_index(
    history: tuple, window: str, by: tuple[str, ...], target: str | None
) -> None:
    """SQLite plans without statistics: each query on running jobs names their partial index
    (without it, SQLite would read them along start_at, nearly every job), and the
    percentiles' seeks read the finished jobs' (type, duration_s) index."""
    url, jobs, _ = history
    assert any(j.status == "running" for j in jobs)
    since, until = (to_datetime(t) for t in WINDOWS[window])
    query = stats.StatsQuery(since, until, to_datetime(T0 + 6 * 3600), by, target, True)
    engine = db.create(url)
    try:
        found = planned(engine, lambda: stats.compute(engine, query))
    finally:
        engine.dispose()
    running = [plan for sql, plan in found if f"status = '{JobStatus.RUNNING}'" in sql]
    assert len(running) >= 2  # the running jobs, and their part of the concurrency
    assert all("USING INDEX ix_jobs_running" in plan for plan in running), running
    seeks = [plan for sql, plan in found if "OFFSET" in sql and "ix_jobs_finished_day" not in sql]
    assert all("INDEX ix_jobs_finished_type_duration (type=?)" in plan for plan in seeks), seeks
    if window == "everything" and by in ((), ("type",)) and target is None:
        assert seeks


@pytest.mark.parametrize("history", ["sqlite"], indirect=True)
@pytest.mark.parametrize("target", [None, URL_A], ids=["all targets", "one target"])
def test_coverage_finds_the_gaps_through_their_partial_index(
    history: tuple, target: str | None
) -> None:
    """The gaps come from the few polls that end one (``ix_polls_gaps``), not from every poll
    since the window's start: SQLite, without statistics, took the (target, sent_at) index for
    that, and read ten years of polls for a `--by day --since 3650d`."""
    url, _, polls = history
    assert any(p.after_gap for p in polls)
    since, until = (to_datetime(t) for t in WINDOWS["everything"])
    query = stats.StatsQuery(since, until, until, ("day",), target, False)
    engine = db.create(url)
    try:
        found = planned(engine, lambda: stats.compute(engine, query), matching="p.after_gap")
    finally:
        engine.dispose()
    assert len(found) == 1
    steps = found[0][1].split(" / ")
    assert any(step.startswith("SEARCH p USING INDEX ix_polls_gaps") for step in steps), steps
    assert not any("sent_at>" in step for step in steps), steps


@pytest.mark.parametrize("after", ["nothing", "a job"], ids=lambda a: f"{a} ends after it")
def test_a_partial_day_is_read_as_a_whole_one_when_all_its_jobs_are_in_the_window(
    history: tuple, after: str
) -> None:
    """`--by day` up to a moment of the last day: if no job of that day ended after it (the
    window ends now), the day's percentiles are index seeks and its sums rollups, as a whole
    day's; if one did, the day's jobs in the window are ranked by a sort. The same figures."""
    url, jobs, polls = history
    last_end = max(j.end_at.timestamp() for j in jobs if j.end_at is not None)
    until = exact_time(last_end + 1 if after == "nothing" else last_end)
    assert until // 86400 == last_end // 86400  # a part of the last job's day
    since, now = DAY0 - 2 * 86400 + 3600, until
    window = (to_datetime(since), to_datetime(until), to_datetime(now))
    query = stats.StatsQuery(*window, ("day",), histogram=True)
    engine = db.create(url)
    try:
        report = stats.compute(engine, query)
        sorts = statements(engine, lambda: stats.compute(engine, query), matching="ROW_NUMBER")
    finally:
        engine.dispose()
    assert_report_is_the_truth(
        report, stats_model.compute(jobs, polls, since, until, now, ("day",)), ("day",)
    )
    # The first day (which has no job) and the last are partial: only a job after the window
    # makes the last one need a sort.
    assert len(sorts) == (0 if after == "nothing" else 1)


def test_a_report_on_postgresql_sorts_in_memory(history: tuple) -> None:
    """PostgreSQL's default work_mem (4 MB) sends the sort that ranks a day of a busy team's
    durations to files; a report raises it for its own transaction only."""
    url, _, _ = history
    now = to_datetime(T0 + 6 * 3600)
    query = stats.StatsQuery(to_datetime(T0), now, now, ("type",))
    engine = db.create(url)
    postgresql = engine.dialect.name == "postgresql"
    try:
        found = statements(engine, lambda: stats.compute(engine, query), matching="work_mem")
        with engine.connect() as conn:
            session = conn.exec_driver_sql("SHOW work_mem").scalar() if postgresql else None
    finally:
        engine.dispose()
    if postgresql:
        assert [sql for sql, _ in found] == [f"SET LOCAL work_mem = '{stats.PG_WORK_MEM}'"]
        assert session != stats.PG_WORK_MEM  # the session's own setting is left alone
    else:
        assert found == []


@pytest.mark.parametrize(
    "by", [(), ("type",), ("type", "hour")], ids=lambda by: "+".join(by) or "all"
)
def test_csv_matches_brute_force(history: tuple, by: tuple[str, ...]) -> None:
    url, jobs, polls = history
    since, until = WINDOWS["one hour"]
    rows = list(csv.DictReader(io.StringIO(run_stats(url, since, until, by, "csv"))))
    truth = stats_model.compute(jobs, polls, since, until, datetime.now(UTC).timestamp(), by)
    assert len(rows) == len(truth)
    for row in rows:
        key = tuple(
            datetime.fromisoformat(row[k].replace("Z", "+00:00")).timestamp()
            if k == "hour"
            else row[k]
            for k in by
        )
        expected = truth[key]
        assert row["since"] == iso(to_datetime(expected.since))
        assert row["until"] == iso(to_datetime(expected.until))
        for column, value in figures(expected).items():
            got = float(row[column]) if row[column] != "" else None
            tolerance = 0.11 if column == "missed_estimate" else 2e-3
            assert got == pytest.approx(value, abs=tolerance, rel=1e-6), column


def figures(truth: stats_model.Truth) -> dict[str, float | None]:
    """Every figure of a group, named as the CSV columns are."""
    durations = truth.durations
    values: dict[str, float | None] = {
        "finished": len(durations),
        "started": truth.started,
        "running": truth.running,
        "duration_count": len(durations),
        "duration_mean_s": sum(durations) / len(durations) if durations else None,
        "duration_max_s": max(durations, default=None),
        "duration_closed_across_gap": truth.wide,
        "throughput_per_hour": len(durations) / ((truth.until - truth.since) / 3600),
        "peak_concurrency": truth.peak(),
        "mean_concurrency": truth.mean_concurrency(),
        "coverage": truth.coverage,
        "gaps": truth.gaps,
        "longest_gap_s": truth.longest_gap,
        "missed_estimate": truth.missed(),
    }
    for p in stats_model.PERCENTILES:
        values[f"duration_p{p}_s"] = truth.percentile(p)
    return values


@pytest.mark.parametrize("by", [(), ("type",)], ids=lambda by: "+".join(by) or "all")
def test_table_matches_brute_force(history: tuple, by: tuple[str, ...]) -> None:
    url, jobs, polls = history
    since, until = WINDOWS["everything"]
    output = run_stats(url, since, until, by, "table")
    truth = stats_model.compute(jobs, polls, since, until, datetime.now(UTC).timestamp(), by)
    lines = output.splitlines()
    assert lines[0] == f"window: {iso(to_datetime(since))} .. {iso(to_datetime(until))} (6h30m)"
    header = lines[1].split()
    body = [line.split() for line in lines[3 : 3 + len(truth)]]
    assert len(body) == len(truth)
    for cells in body:
        row = dict(zip(header, cells, strict=True))
        expected = truth[tuple(row[k] for k in by)]
        want = figures(expected)
        assert int(row["finished"]) == want["finished"]
        assert int(row["started"]) == want["started"]
        assert int(row["running"]) == want["running"]
        for column in ("mean", "p50", "p90", "p95", "p99", "max"):
            key = f"duration_{column}_s" if column != "mean" else "duration_mean_s"
            assert row[column] == human_duration(want[key]), column
        assert int(row["wide"]) == want["duration_closed_across_gap"]
        assert row["per_hour"] == f"{want['throughput_per_hour']:.1f}"
        assert int(row["peak"]) == want["peak_concurrency"]
        assert row["mean_conc"] == f"{want['mean_concurrency']:.2f}"
        assert row["coverage"] == f"{expected.coverage:.1%}"
        assert int(row["gaps"]) == want["gaps"]
        assert row["longest_gap"] == human_duration(expected.longest_gap)
        assert abs(int(row["missed"]) - expected.missed()) <= 0.5 + 1e-6
    assert "durations of finished jobs" in output  # --histogram


def test_the_default_window_is_the_last_24_hours(history: tuple) -> None:
    url, _, _ = history
    result = CliRunner().invoke(cli, ["--db", url, "stats", "--format", "json"])
    report = json.loads(result.output)
    since = datetime.fromisoformat(report["window"]["since"].replace("Z", "+00:00"))
    until = datetime.fromisoformat(report["window"]["until"].replace("Z", "+00:00"))
    assert (until - since).total_seconds() == pytest.approx(86400, abs=0.01)
    assert abs((datetime.now(UTC) - until).total_seconds()) < 60


def test_a_relative_window(history: tuple) -> None:
    url, _, _ = history
    result = CliRunner().invoke(cli, ["--db", url, "stats", "--since", "7d", "--format", "json"])
    report = json.loads(result.output)
    since = datetime.fromisoformat(report["window"]["since"].replace("Z", "+00:00"))
    assert abs((datetime.now(UTC) - since).total_seconds() - 7 * 86400) < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "yesterday"], "cannot read 'yesterday' as a time"),
        (["--since", "1h", "--until", "2h"], "the window is empty"),
        (["--target", "http://nowhere/"], "no target"),
    ],
)
def test_bad_input_gets_one_clear_line(history: tuple, args: list[str], message: str) -> None:
    url, _, _ = history
    result = CliRunner().invoke(cli, ["--db", url, "stats", *args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_stats_on_an_empty_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    db.open_database(url).dispose()
    result = CliRunner().invoke(
        cli, ["--db", url, "stats", "--format", "json"], catch_exceptions=False
    )
    (group,) = json.loads(result.output)["groups"]
    assert group["finished"] == 0 and group["coverage"] == 0.0
    assert group["duration_s"]["p95"] is None


def test_back_to_back_jobs_do_not_overlap(engine: Engine, db_url: str) -> None:
    """Intervals are half-open: a job ending as another starts never runs beside it."""
    at = lambda s: to_datetime(T0 + s)  # noqa: E731
    with engine.begin() as conn:
        conn.execute(insert(Target).values(id=1, url=URL_A, created_at=at(0), **LABELS))
        poll = {"target_id": 1, "latency_s": 0.0, "outcome": "ok", "after_gap": False}
        conn.execute(insert(Poll).values(id=1, sent_at=at(0), received_at=at(0), **poll))
        conn.execute(insert(Poll).values(id=2, sent_at=at(300), received_at=at(300), **poll))
        for n, (start, end) in enumerate([(10, 100), (100, 200), (200, 250)], start=1):
            conn.execute(
                insert(Job).values(
                    target_id=1,
                    api_id=f"job-{n}",
                    type="video",
                    status="finished",
                    first_poll_id=1,
                    last_poll_id=2,
                    start_at=at(start),
                    start_source="poll",
                    end_at=at(end),
                    duration_s=float(end - start),
                    closed_across_gap=False,
                )
            )
    output = run_stats(db_url, T0, T0 + 300, (), "json")
    (group,) = json.loads(output)["groups"]
    assert group["peak_concurrency"] == 1
    assert group["mean_concurrency"] == pytest.approx(240 / 300, abs=1e-6)
    assert group["duration_s"]["p50"] == 90.0 and group["duration_s"]["max"] == 100.0


def assert_report_is_the_truth(
    report: stats.Report, truth: dict[tuple, stats_model.Truth], by: tuple[str, ...]
) -> None:
    """Every figure of every group of `report` is the brute-force model's."""
    got = {
        tuple(g.key[k].timestamp() if k in stats.TIME_KEYS else g.key[k] for k in by): g
        for g in report.groups
    }
    assert set(got) == set(truth)
    for key, expected in truth.items():
        group = got[key]
        assert group.since.timestamp() == pytest.approx(expected.since, abs=1e-6), key
        assert group.until.timestamp() == pytest.approx(expected.until, abs=1e-6), key
        assert group.finished == len(expected.durations), key
        assert group.started == expected.started, key
        assert group.running == expected.running, key
        assert group.success_rate == approx(expected.success_rate()), key
        durations = group.duration
        assert durations.count == len(expected.durations), key
        assert durations.closed_across_gap == expected.wide, key
        mean = sum(expected.durations) / len(expected.durations) if expected.durations else None
        assert durations.mean == approx(mean), key
        assert durations.max == max(expected.durations, default=None), key
        for p in stats_model.PERCENTILES:
            assert getattr(durations, f"p{p}") == expected.percentile(p), (key, p)
        assert group.peak_concurrency == expected.peak(), key
        assert group.mean_concurrency == pytest.approx(
            expected.mean_concurrency(), rel=1e-9, abs=1e-9
        ), key
        assert group.coverage == approx(expected.coverage), key
        assert group.gaps == expected.gaps, key
        assert group.longest_gap_s == approx(expected.longest_gap), key
        assert group.missed_estimate == pytest.approx(expected.missed(), rel=1e-9, abs=1e-6), key
        histogram = {lower: n for lower, _, n in group.histogram}
        assert histogram == expected.histogram(), key


DAY0 = T0 // 86400 * 86400  # midnight UTC before the history starts


def near(t: float, lower: bool) -> st.SearchStrategy[float]:
    """A time at or below `t` (else above it), within two days: on an hour's or a day's edge,
    at a whole second, at any millisecond, or `t` itself."""
    sign = -1 if lower else 1
    return st.one_of(
        st.integers(0 if lower else 1, 48).map(lambda h: (t // 3600 + sign * h) * 3600),
        st.integers(0 if lower else 1, 2).map(lambda d: (t // 86400 + sign * d) * 86400),
        st.integers(0 if lower else 1, 2 * 86400).map(lambda s: t + sign * s),
        st.integers(0 if lower else 1, 2 * 86_400_000).map(lambda ms: t + sign * ms / 1000),
    )


groupings = st.one_of(
    st.sampled_from([(), ("type",)]),  # the groupings whose percentiles may come from seeks
    st.permutations(stats.GROUP_KEYS).flatmap(
        lambda keys: st.integers(1, 3).map(lambda n: tuple(keys[:n]))
    ),
)


# --target as a URL, a name (the history's targets are "generic" and "generic-2", in the order
# they were first polled), or another spelling of a URL.
TARGETS = [URL_A, URL_B, "generic-2", URL_A.replace("127.0.0.1", "LOCALHOST").rstrip("/")]


def exact_time(ts: float) -> float:
    """`ts` as the report receives it (a datetime holds microseconds)."""
    return to_datetime(ts).timestamp()


# Run with `pytest -m slow`. After test_cli, test_docs and test_rollups in one session (not
# alone, nor in the whole suite's order), Hypothesis stops it with FlakyStrategyDefinition ("the
# second run stopped drawing earlier"), with or without an example database; the cause is not
# found. tests/test_rollups.py's property compares every stats figure with the model over random
# windows and groupings in the default suite meanwhile.
@pytest.mark.slow
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data(), by=groupings, target=st.one_of(st.none(), st.sampled_from(TARGETS)))
def test_every_figure_is_the_model_over_random_windows_and_groupings(
    history: tuple, data: st.DataObject, by: tuple[str, ...], target: str | None
) -> None:
    """Random windows, aligned or not, some holding the whole history (the percentiles then
    come from index seeks), a job's start or end as an edge; random groupings; a target or all."""
    if len(set(by) & set(stats.TIME_KEYS)) > 1:
        by = tuple(k for k in by if k != "day")  # one time key at most
    url, jobs, polls = history
    edges = sorted(
        {j.start_at.timestamp() for j in jobs}
        | {j.end_at.timestamp() for j in jobs if j.end_at is not None}
    )
    pick_edge = st.integers(0, len(edges) - 1).map(edges.__getitem__)
    whole = data.draw(st.booleans(), label="whole history")
    event(f"window holds every job: {whole}")
    event(f"percentiles by index seeks: {whole and set(by) <= {'type'} and target is None}")
    if whole:
        since = data.draw(near(edges[0], lower=True), label="since")
        until = data.draw(near(edges[-1], lower=False), label="until")
    else:
        since = data.draw(st.one_of(near(DAY0 + 86400, lower=True), pick_edge), label="since")
        until = data.draw(
            st.one_of(near(since, lower=False), pick_edge.map(lambda t: max(t, since + 1))),
            label="until",
        )
    since, until = exact_time(since), exact_time(until)
    now = exact_time(
        data.draw(st.one_of(st.just(T0 + 86400 * 400), near(since, lower=False)), label="now")
    )

    engine = db.open_database(url)
    try:
        query = stats.StatsQuery(
            to_datetime(since), to_datetime(until), to_datetime(now), by, target, histogram=True
        )
        report = stats.compute(engine, query)
        with engine.connect() as conn:
            target_ids = {}
            for row in conn.execute(Target.__table__.select()).all():
                target_ids |= {row.url: row.id, row.name: row.id}
    finally:
        engine.dispose()
    target_ids[TARGETS[-1]] = target_ids[URL_A]
    if target is not None:
        jobs = [j for j in jobs if j.target_id == target_ids[target]]
        polls = [p for p in polls if p.target_id == target_ids[target]]
    assert_report_is_the_truth(report, stats_model.compute(jobs, polls, since, until, now, by), by)


def test_long_jobs_cut_at_every_bucket_they_span(engine: Engine) -> None:
    """Jobs over many hours and days: each bucket's peak and mean, exactly the model's."""
    at = lambda s: to_datetime(DAY0 + s)  # noqa: E731
    intervals = [
        (-3000.0, 3 * 86400 + 5.5),  # four days, from before the window to after it
        (3600.0, 7200.0),  # exactly one hour bucket
        (5000.25, 2 * 86400.0),  # ends on a day's edge
        (7199.999, 7200.001),  # across an hour's edge by two milliseconds
        (86400.0 - 1e-3, 86400.0 + 1e-3),
        (3 * 3600.0, 30 * 3600.0),
    ]
    with engine.begin() as conn:
        conn.execute(insert(Target).values(id=1, url=URL_A, created_at=at(-4000), **LABELS))
        poll = {"target_id": 1, "latency_s": 0.0, "outcome": "ok", "after_gap": False}
        for n, t in enumerate((-4000, 0, 86400, 4 * 86400), start=1):
            conn.execute(insert(Poll).values(id=n, sent_at=at(t), received_at=at(t), **poll))
        for n, (start, end) in enumerate(intervals, start=1):
            conn.execute(
                insert(Job).values(
                    target_id=1,
                    api_id=f"job-{n}",
                    type="video" if n % 2 else "image",
                    account=f"a{n % 3}",
                    status="finished",
                    first_poll_id=1,
                    last_poll_id=4,
                    start_at=at(start),
                    start_source="poll",
                    end_at=at(end),
                    duration_s=end - start,
                    closed_across_gap=False,
                )
            )
        conn.execute(  # still running: its interval ends at the latest poll
            insert(Job).values(
                target_id=1,
                api_id="job-running",
                type="video",
                status="running",
                first_poll_id=1,
                last_poll_id=4,
                start_at=at(-100),
                start_source="poll",
            )
        )
        rollups.rebuild(conn)  # the jobs came in behind the store's back
    jobs, polls = stats_model.load(engine)
    now = DAY0 + 4 * 86400
    for since, until in ((DAY0, DAY0 + 3 * 86400), (DAY0 + 1800.5, DAY0 + 2 * 86400 + 7)):
        for by in (("hour",), ("day",), ("type", "hour"), ("account", "day"), ()):
            query = stats.StatsQuery(
                to_datetime(since), to_datetime(until), to_datetime(now), by, histogram=True
            )
            report = stats.compute(engine, query)
            truth = stats_model.compute(jobs, polls, since, until, now, by)
            assert_report_is_the_truth(report, truth, by)
    whole = stats.StatsQuery(
        to_datetime(DAY0 - 86400),
        to_datetime(DAY0 + 5 * 86400),
        to_datetime(now),
        ("type",),
        histogram=True,
    )
    truth = stats_model.compute(jobs, polls, DAY0 - 86400, DAY0 + 5 * 86400, now, ("type",))
    for target in (None, URL_A):  # every job in the window: the percentiles come from seeks
        report = stats.compute(engine, dataclasses.replace(whole, target=target))
        assert_report_is_the_truth(report, truth, ("type",))


def test_a_services_peak_over_whole_hours_is_its_jobs_not_its_targets(engine: Engine) -> None:
    """Two pixverse targets whose jobs overlap only with each other's: the service's peak is 2,
    though the rollups' peaks of each target are 1 (a peak of a union is not the largest of
    its parts'); kling's, a service of one target, comes from the rollups alone."""
    hour = (T0 // 3600 + 1) * 3600
    at = lambda s: to_datetime(hour + s)  # noqa: E731
    labels = [("pixverse", "pixverse"), ("pixverse-2", "pixverse"), ("kling", "kling")]
    intervals = [(1, 100.0, 500.0), (2, 300.0, 900.0), (3, 200.0, 400.0), (3, 4000.0, 4100.0)]
    with engine.begin() as conn:
        for target_id, (name, service) in enumerate(labels, start=1):
            url = f"http://127.0.0.1:9/{target_id}/"
            conn.execute(
                insert(Target).values(
                    id=target_id, url=url, created_at=at(-100), name=name, service=service
                )
            )
            poll = {"target_id": target_id, "latency_s": 0.0, "outcome": "ok", "after_gap": False}
            for n, t in ((0, -100), (1, 3 * 3600)):
                moment = at(t)
                poll_id = 2 * target_id - 1 + n
                conn.execute(
                    insert(Poll).values(id=poll_id, sent_at=moment, received_at=moment, **poll)
                )
        for n, (target_id, start, end) in enumerate(intervals, start=1):
            conn.execute(
                insert(Job).values(
                    target_id=target_id,
                    api_id=f"job-{n}",
                    type="video",
                    status="finished",
                    first_poll_id=2 * target_id - 1,
                    last_poll_id=2 * target_id,
                    start_at=at(start),
                    start_source="poll",
                    end_at=at(end),
                    duration_s=end - start,
                    closed_across_gap=False,
                )
            )
        rollups.rebuild(conn)
    jobs, polls = stats_model.load(engine)
    now = hour + 4 * 3600
    whole = stats.StatsQuery(to_datetime(hour), to_datetime(hour + 7200), to_datetime(now))
    peaks = {
        by: {tuple(g.key.values()): g.peak_concurrency for g in stats.compute(engine, query).groups}
        for by in (("service",), ("target",), ())
        for query in [dataclasses.replace(whole, by=by)]
    }
    assert peaks[("service",)] == {("kling",): 1, ("pixverse",): 2}
    assert peaks[("target",)] == {("kling",): 1, ("pixverse",): 1, ("pixverse-2",): 1}
    assert peaks[()] == {(): 3}
    for since, until in ((hour, hour + 7200), (hour - 1800.5, hour + 7207.0)):
        for by in (("service",), ("service", "hour"), ("service", "type"), ("target", "hour")):
            query = stats.StatsQuery(
                to_datetime(since), to_datetime(until), to_datetime(now), by, histogram=True
            )
            truth = stats_model.compute(jobs, polls, since, until, now, by)
            assert_report_is_the_truth(stats.compute(engine, query), truth, by)
    one = stats.compute(engine, dataclasses.replace(whole, by=("service",), target="pixverse-2"))
    assert [(g.key, g.peak_concurrency) for g in one.groups] == [({"service": "pixverse"}, 1)]
