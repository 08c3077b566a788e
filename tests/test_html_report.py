"""`recorder report --html`: the page's figures are the stats', its bins lose no job, an empty
window reads as such, hostile text stays text, and the page asks nothing of anyone."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text, update

from recorder import db, html_report, reports, rollups, stats, timeline
from recorder.cli import cli
from recorder.clock import to_datetime
from recorder.models import Job
from recorder.output import iso
from tests.histories import T0, record_history

HOUR = 3600
WINDOW = (T0 - 1800, T0 + 6 * HOUR)
STATS_SCRIPT = re.compile(r'<script type="application/json" id="stats">(.*?)</script>', re.S)


def run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def window_args(since: float, until: float) -> list[str]:
    return ["--since", iso(to_datetime(since)), "--until", iso(to_datetime(until))]


def write_report(url: str, path: Path, *args: str) -> str:
    CliRunner().invoke(
        cli, ["--db", url, "report", "--html", str(path), *args], catch_exceptions=False
    )
    return path.read_text(encoding="utf-8")


def page_stats(page: str) -> str:
    found = STATS_SCRIPT.findall(page)
    assert len(found) == 1
    return str(found[0])


def unescape_script(raw: str) -> str:
    return raw.replace("\\u003c", "<").replace("\\u003e", ">").replace("\\u0026", "&")


@pytest.mark.parametrize("by", [None, "type", "account", "service", "target"])
def test_the_pages_figures_are_recorder_stats_json(
    history: tuple[str, list[Any], list[Any]], tmp_path: Path, by: str | None
) -> None:
    url = history[0]
    grouping = ["--by", by] if by else []
    page = write_report(url, tmp_path / "r.html", *window_args(*WINDOW), *grouping)
    printed = run(url, "stats", *window_args(*WINDOW), *grouping, "--format", "json")
    assert unescape_script(page_stats(page)) + "\n" == printed  # the same bytes
    assert json.loads(page_stats(page)) == json.loads(printed)
    groups = json.loads(printed)["groups"]
    assert groups and sum(g["finished"] for g in groups) > 100
    for group in groups:  # each group has its section, its three charts, and their captions
        label = ", ".join(f"{k} {group[k]}" for k in ([by] if by else [])) or "All jobs"
        assert f"<h2>{label}</h2>" in page
        assert f"{label}: durations of the finished jobs" in page
        assert f"{label}: finished jobs per hour" in page
        assert f"{label}: jobs in flight at once" in page


def test_an_empty_window_is_a_clear_page(
    history: tuple[str, list[Any], list[Any]], tmp_path: Path
) -> None:
    url = history[0]
    empty = (T0 - 400 * 86400, T0 - 399 * 86400)
    result = CliRunner().invoke(
        cli, ["--db", url, "report", "--html", str(tmp_path / "e.html"), *window_args(*empty)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote" in result.stderr
    page = (tmp_path / "e.html").read_text(encoding="utf-8")
    assert "<h2>Nothing in this window</h2>" in page
    printed = run(url, "stats", *window_args(*empty), "--format", "json")
    assert json.loads(page_stats(page)) == json.loads(printed)
    assert "nothing to draw in this window" in page  # the charts say so too, they don't fail
    by_type = write_report(url, tmp_path / "t.html", *window_args(*empty), "--by", "type")
    assert "<h2>Nothing in this window</h2>" in by_type
    groups = json.loads(page_stats(by_type))["groups"]
    assert all(g["finished"] == g["started"] == 0 for g in groups)  # (running: jobs running now)


def test_a_page_with_jobs_is_not_called_empty(
    history: tuple[str, list[Any], list[Any]], tmp_path: Path
) -> None:
    page = write_report(history[0], tmp_path / "r.html", *window_args(*WINDOW))
    assert "Nothing in this window" not in page
    assert "The 10 longest jobs that ended in the window" in page


def test_the_page_requests_nothing_and_runs_no_script(
    history: tuple[str, list[Any], list[Any]], tmp_path: Path
) -> None:
    page = write_report(history[0], tmp_path / "r.html", *window_args(*WINDOW), "--by", "type")
    urls = set(re.findall(r"(?:https?:)?//[^\s\"'<>)]+", page))
    assert urls == {"http://www.w3.org/2000/svg"}  # a namespace name, never fetched
    assert "default-src 'none'" in page
    assert re.findall(r"<script\b[^>]*>", page) == ['<script type="application/json" id="stats">']
    assert not re.search(r"\son[a-z]+=", page)  # no event handler attribute anywhere
    assert not re.search(r"@import|url\(|<link|<img|<iframe", page)


def test_hostile_text_from_the_api_stays_text(db_url: str, tmp_path: Path) -> None:
    engine = db.open_database(db_url)
    record_history(engine)
    hostile_type = '</script><script>alert("t")</script>'
    hostile_account = "<img src=x onerror=alert(1)>&amp;"
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.type == "video").values(type=hostile_type))
        conn.execute(update(Job).where(Job.type == "image").values(account=hostile_account))
        rollups.rebuild(conn)
    engine.dispose()
    page = write_report(db_url, tmp_path / "r.html", *window_args(*WINDOW), "--by", "type")
    assert hostile_type not in page and hostile_account not in page
    assert "&lt;/script&gt;&lt;script&gt;alert" in page
    by_account = write_report(db_url, tmp_path / "a.html", *window_args(*WINDOW), "--by", "account")
    assert hostile_account not in by_account
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;amp;" in by_account
    printed = run(db_url, "stats", *window_args(*WINDOW), "--by", "type", "--format", "json")
    assert json.loads(page_stats(page)) == json.loads(printed)
    assert hostile_type in {g["type"] for g in json.loads(printed)["groups"]}
    assert "<" not in page_stats(page) and ">" not in page_stats(page)


def test_bad_arguments_are_clear_errors(
    history: tuple[str, list[Any], list[Any]], tmp_path: Path
) -> None:
    url = history[0]
    runner = CliRunner()
    missing = runner.invoke(cli, ["--db", url, "report", "--since", "1h"])
    assert missing.exit_code == 2 and "--html" in missing.stderr
    by_hour = runner.invoke(cli, ["--db", url, "report", "--html", "x.html", "--by", "hour"])
    assert by_hour.exit_code == 2 and "'hour' is not one of" in by_hour.stderr
    nowhere = tmp_path / "no" / "such" / "dir" / "r.html"
    result = runner.invoke(cli, ["--db", url, "report", "--html", str(nowhere)])
    assert result.exit_code == 1 and f"cannot write {nowhere}" in result.stderr
    assert not nowhere.parent.exists()
    unknown = runner.invoke(
        cli, ["--db", url, "report", "--html", str(tmp_path / "u.html"), "--target", "nope"]
    )
    assert unknown.exit_code != 0 and "nope" in unknown.stderr
    assert not (tmp_path / "u.html").exists()  # nothing written for a report that failed


# The bins: every bucket of the window, joined without losing or repeating a job.


def buckets_strategy() -> st.SearchStrategy[list[timeline.Bucket]]:
    @st.composite
    def build(draw: st.DrawFn) -> list[timeline.Bucket]:
        count = draw(st.integers(1, 900))
        start = draw(st.integers(0, 10**6)) * 60.0
        lengths = draw(st.lists(st.sampled_from([60.0, 3600.0]), min_size=count, max_size=count))
        found, lo = [], start
        for length in lengths:
            finished = draw(st.integers(0, 50))
            peak = draw(st.integers(0, 9))
            mean = draw(st.floats(0, 9, allow_nan=False))
            found.append(timeline.Bucket(lo, lo + length, finished, peak, mean))
            lo += length
        return found

    return build()


@given(buckets_strategy(), st.integers(1, 400))
def test_merging_keeps_every_job_once(buckets: list[timeline.Bucket], points: int) -> None:
    merged = timeline.merge(buckets, points)
    assert len(merged) <= points
    assert sum(b.finished for b in merged) == sum(b.finished for b in buckets)
    assert max(b.peak for b in merged) == max(b.peak for b in buckets)
    assert merged[0].lo == buckets[0].lo and merged[-1].hi == buckets[-1].hi
    assert all(a.hi == b.lo for a, b in itertools.pairwise(merged))  # no gap, no overlap
    busy = sum(b.mean * (b.hi - b.lo) for b in buckets)
    assert sum(b.mean * (b.hi - b.lo) for b in merged) == pytest.approx(busy, rel=1e-9, abs=1e-6)
    if len(buckets) <= points:
        assert merged == buckets


@given(st.integers(0, 4 * 10**12), st.integers(0, 3 * 10**10), st.sampled_from([3600, 86400]))
def test_the_grid_tiles_the_window(since_ms: int, length_ms: int, size: int) -> None:
    since, length = since_ms / 1000, length_ms / 1000  # times are kept to the millisecond
    spans = timeline.grid(since, since + length, size)
    if length == 0:
        assert spans == []
        return
    assert spans[0][0] == since and spans[-1][1] == since + length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all(math.floor(lo / size) == math.ceil(hi / size) - 1 for lo, hi in spans)


def test_no_job_is_lost_or_counted_twice_at_a_bin_edge(db_url: str) -> None:
    """Jobs that end exactly on hour edges, read over a window of hours and over one long enough
    to be merged: each bin holds the jobs whose end falls in [lo, hi), every job once."""
    engine = db.open_database(db_url)
    record_history(engine)
    with engine.begin() as conn:
        ids = list(
            conn.scalars(
                text("SELECT id FROM jobs WHERE status = 'finished' ORDER BY id").columns()
            )
        )
        for n, job_id in enumerate(ids[::3]):  # a third of them end on an hour's first instant
            edge = to_datetime((math.floor(T0 / HOUR) + 1 + n % 5) * HOUR)
            conn.execute(update(Job).where(Job.id == job_id).values(end_at=edge))
        rollups.rebuild(conn)
        ends = [
            e.timestamp()
            for e in conn.scalars(
                text("SELECT end_at FROM jobs WHERE status = 'finished'").columns(Job.end_at)
            )
        ]
    on_edges = sum(1 for e in ends if e % HOUR == 0)
    assert on_edges >= 10
    now = to_datetime(T0 + 400 * 86400)
    for since, until in (WINDOW, (T0 - 300 * 86400, T0 + 200 * 86400)):
        query = html_report.ReportQuery(to_datetime(since), to_datetime(until), now)
        series = html_report.series(engine, query)
        bins = series[()]
        assert len(bins) <= timeline.MAX_POINTS
        for b in bins:
            assert b.finished == sum(1 for e in ends if b.lo <= e < b.hi), (b.lo, b.hi)
        total = stats.compute(
            engine, stats.StatsQuery(to_datetime(since), to_datetime(until), now)
        ).groups[0]
        assert sum(b.finished for b in bins) == total.finished == len(ends)
    engine.dispose()


def test_a_long_busy_history_stays_small(db_url: str, tmp_path: Path) -> None:
    """More groups than are charted, over ten years: the page stays far under 2 MB."""
    engine = db.open_database(db_url)
    record_history(engine)
    with engine.begin() as conn:
        ids = list(conn.scalars(text("SELECT id FROM jobs ORDER BY id").columns()))
        for n, job_id in enumerate(ids):
            conn.execute(update(Job).where(Job.id == job_id).values(account=f"a{n % 20}@x"))
        rollups.rebuild(conn)
    engine.dispose()
    args = window_args(T0 - 3650 * 86400 + 7 * HOUR, T0 + 7 * HOUR)
    page = write_report(db_url, tmp_path / "r.html", *args, "--by", "account")
    assert len(page.encode()) < 2_000_000
    groups = json.loads(page_stats(page))["groups"]
    assert len(groups) == 20
    charted = page.count(": jobs in flight at once</title>")
    assert charted == html_report.MAX_CHARTED_GROUPS
    assert f"{20 - charted} more group(s)" in page


@pytest.mark.parametrize("by", [(), ("type",), ("account", "day"), ("target", "hour")])
def test_stats_without_percentiles_has_every_other_figure(
    history: tuple[str, list[Any], list[Any]], by: tuple[str, ...]
) -> None:
    """The report's time series skip the percentiles' sort: every other figure is the same."""
    engine = db.create(history[0])
    for since, until in (WINDOW, (T0 + 1234.5, T0 + 4 * HOUR + 17)):
        query = stats.StatsQuery(to_datetime(since), to_datetime(until), to_datetime(T0), by)
        full = stats.compute(engine, query)
        counts = stats.compute(engine, dataclasses.replace(query, percentiles=False))
        assert [g.key for g in counts.groups] == [g.key for g in full.groups]
        for a, b in zip(counts.groups, full.groups, strict=True):
            assert (a.duration.p50, a.duration.p99) == (None, None)
            plain = dataclasses.replace(b.duration, p50=None, p90=None, p95=None, p99=None)
            assert a.duration.count == plain.count and a.duration.max == plain.max
            assert a.duration.mean == pytest.approx(plain.mean)
            assert a.duration.closed_across_gap == plain.closed_across_gap
            assert (a.finished, a.started, a.peak_concurrency) == (
                b.finished,
                b.started,
                b.peak_concurrency,
            )
            assert a.mean_concurrency == pytest.approx(b.mean_concurrency)
    engine.dispose()


@pytest.mark.parametrize("finished", [0, 10**9])  # sorted from the window, or by the index
def test_the_longest_jobs_are_those_of_the_window(
    history: tuple[str, list[Any], list[Any]], finished: int
) -> None:
    engine = db.create(history[0])
    for since, until in (WINDOW, (T0 + 3600, T0 + 2 * 3600)):
        got = reports.longest(
            engine, to_datetime(since), to_datetime(until), limit=7, finished=finished
        )
        every = [
            j
            for j in reports.jobs(engine, reports.JobQuery(status="finished"))
            if j["duration_s"] is not None and since <= j["ended_at"].timestamp() < until
        ]
        assert len(every) > 7
        assert [j["duration_s"] for j in got] == sorted(
            (j["duration_s"] for j in every), reverse=True
        )[:7]
        assert {j["id"] for j in got} <= {j["id"] for j in every}
        assert set(got[0]) == set(every[0])  # the same fields as recorder jobs lists
    engine.dispose()
