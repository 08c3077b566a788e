"""`recorder jobs` filters and orders, and `recorder gaps`, against the stored rows."""

from __future__ import annotations

import itertools
import json
from datetime import datetime

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.clock import to_datetime
from recorder.output import iso
from tests.histories import T0


def listed(url: str, *args: str) -> list[dict]:
    result = CliRunner().invoke(
        cli, ["--db", url, "jobs", "--format", "json", *args], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def parse(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def at(offset: float) -> str:
    return iso(to_datetime(T0 + offset))


def test_json_without_limit_lists_every_job(history: tuple) -> None:
    url, jobs, _ = history
    assert len(listed(url)) == len(jobs) > 100


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        (["--running"], lambda j: j.status == "running"),
        (["--finished"], lambda j: j.status == "finished"),
        (["--type", "video"], lambda j: j.type == "video"),
        (["--type", "video", "--type", "image"], lambda j: True),
        (["--account", "alice@example.com"], lambda j: j.account == "alice@example.com"),
        (["--finished", "--type", "image"], lambda j: j.status == "finished" and j.type == "image"),
    ],
)
def test_filters(history: tuple, args: list[str], keep: object) -> None:
    url, jobs, _ = history
    expected = {j.api_id for j in jobs if keep(j)}  # type: ignore[operator]
    assert {j["id"] for j in listed(url, *args)} == expected
    assert expected


def test_since_until_lists_the_jobs_overlapping_the_window(history: tuple) -> None:
    url, jobs, _ = history
    since, until = T0 + 3600, T0 + 3900
    expected = {
        j.api_id
        for j in jobs
        if j.start_at.timestamp() < until
        and (j.status == "running" or j.end_at.timestamp() >= since)
    }
    got = {j["id"] for j in listed(url, "--since", at(3600), "--until", at(3900))}
    assert got == expected
    assert 0 < len(expected) < len(jobs)


@pytest.mark.parametrize("order", ["started", "-started", "ended", "-duration", "id"])
def test_order_and_limit(history: tuple, order: str) -> None:
    url, _, _ = history
    everything = listed(url, "--finished", "--order", order)
    key = {"started": "started_at", "ended": "ended_at", "duration": "duration_s", "id": "id"}
    values = [j[key[order.lstrip("-")]] for j in everything]
    assert values == sorted(values, reverse=order.startswith("-"))
    assert listed(url, "--finished", "--order", order, "--limit", "7") == everything[:7]


def test_a_bad_order_is_one_clear_line(history: tuple) -> None:
    url, _, _ = history
    result = CliRunner().invoke(cli, ["--db", url, "jobs", "--order", "colour"])
    assert result.exit_code == 1
    assert "cannot order by 'colour'" in result.output


def test_gaps_lists_every_gap_with_its_failed_polls(history: tuple) -> None:
    url, _, polls = history
    result = CliRunner().invoke(
        cli,
        ["--db", url, "gaps", "--since", at(-3600), "--until", at(7 * 3600), "--format", "json"],
    )
    gaps = json.loads(result.output)
    target_a = polls[0].target_id
    ok = [p for p in polls if p.target_id == target_a and p.outcome == "ok"]
    expected = [(prev, poll) for prev, poll in itertools.pairwise(ok) if poll.after_gap]
    closed = [g for g in gaps if not g["ongoing"]]
    assert len(closed) == len(expected) >= 3
    for gap, (prev, poll) in zip(closed, expected, strict=True):
        # The view shows milliseconds; SQLite rounds them through a Julian day, so allow one.
        assert abs(parse(gap["started_at"]) - prev.sent_at.timestamp()) <= 0.0011
        assert abs(parse(gap["ended_at"]) - poll.sent_at.timestamp()) <= 0.0011
        assert gap["duration_s"] == pytest.approx(
            (poll.sent_at - prev.sent_at).total_seconds(), abs=1e-3
        )
        failed = [p for p in polls if p.target_id == target_a and prev.id < p.id < poll.id]
        assert gap["failed_polls"] == len(failed)
    assert any(g["duration_s"] > 1500 for g in closed)  # the restart
    (ongoing,) = [g for g in gaps if g["ongoing"]]
    assert ongoing["failed_polls"] == 1


def test_gaps_outside_the_window_are_left_out(history: tuple) -> None:
    url, _, _ = history
    result = CliRunner().invoke(
        cli, ["--db", url, "gaps", "--since", at(-7200), "--until", at(-3600), "--format", "json"]
    )
    assert json.loads(result.output) == []
