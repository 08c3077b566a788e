"""`recorder stats` against a brute-force computation of every figure, in every output format."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine

from recorder import db
from recorder.cli import cli
from recorder.clock import to_datetime
from recorder.output import human_duration, iso
from tests import stats_model
from tests.histories import T0, URL_A

WINDOWS = {
    "everything": (T0 - 1800, T0 + 6 * 3600),
    "one hour": (T0 + 3600 + 600, T0 + 2 * 3600 + 600),
    "the outage": (T0 + 7000, T0 + 9000),
    "before any poll": (T0 - 7200, T0 - 3600),
}
GROUPINGS = [(), ("type",), ("account",), ("hour",), ("day",), ("type", "hour"), ("account", "day")]


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
            assert got == approx(value), column


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
    from sqlalchemy import insert

    from recorder.models import Job, Poll, Target

    at = lambda s: to_datetime(T0 + s)  # noqa: E731
    with engine.begin() as conn:
        conn.execute(insert(Target).values(id=1, url=URL_A, created_at=at(0)))
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
