"""The command line, through click's CliRunner (and a real simulator on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from recorder import db
from recorder.cli import cli
from recorder.simulator import JobKind, SimConfig, Simulator

TOKEN = "tok-cli-3f9a1c"  # a recognizable value to look for in outputs


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimConfig(seed=4, token=TOKEN, kinds=(JobKind("video", 30, 60),), initial_jobs=4)
    with Simulator(config) as simulator:
        yield simulator


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("USEAPI_TOKEN", raising=False)
    monkeypatch.delenv("RECORDER_DB", raising=False)
    return CliRunner()


def invoke(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(cli, list(args), env=env, catch_exceptions=False)


def test_poll_records_once_and_reports(runner: CliRunner, sim: Simulator, db_url: str) -> None:
    result = invoke(runner, "--db", db_url, "poll", "--url", sim.url, env={"USEAPI_TOKEN": TOKEN})
    assert result.exit_code == 0, result.output
    assert result.output == "ok: 4 job(s) listed; 4 appeared, 0 reappeared, 0 vanished\n"


def test_poll_reads_the_token_from_a_file(
    runner: CliRunner, sim: Simulator, db_url: str, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    result = invoke(
        runner, "--db", db_url, "poll", "--url", sim.url, "--token-file", str(token_file)
    )
    assert result.exit_code == 0, result.output


def test_a_failed_poll_exits_non_zero_with_one_line(
    runner: CliRunner, sim: Simulator, db_url: str
) -> None:
    result = invoke(runner, "--db", db_url, "poll", "--url", sim.url, env={"USEAPI_TOKEN": "wrong"})
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert result.output.startswith("Error: poll failed (auth): HTTP 401")
    assert "wrong" not in result.output


def test_poll_without_a_token_says_how_to_give_one(runner: CliRunner, db_url: str) -> None:
    result = invoke(runner, "--db", db_url, "poll", "--url", "http://127.0.0.1:9/")
    assert result.exit_code == 1
    assert "set USEAPI_TOKEN or pass --token-file" in result.output


def test_plain_http_to_a_remote_host_is_refused(runner: CliRunner, db_url: str) -> None:
    result = invoke(
        runner,
        "--db",
        db_url,
        "poll",
        "--url",
        "http://api.example.com/v2/pixverse/scheduler/",
        env={"USEAPI_TOKEN": TOKEN},
    )
    assert result.exit_code == 1
    assert "refusing plain http://" in result.output


def test_there_is_no_token_option_and_help_shows_no_token(runner: CliRunner) -> None:
    for command in ("run", "poll"):
        result = invoke(runner, command, "--help", env={"USEAPI_TOKEN": TOKEN})
        assert result.exit_code == 0
        assert "--token " not in result.output and "--token\n" not in result.output
        assert TOKEN not in result.output
        assert "--token-file" in result.output


def test_jobs_json_has_the_contract_fields(runner: CliRunner, sim: Simulator, db_url: str) -> None:
    invoke(runner, "--db", db_url, "poll", "--url", sim.url, env={"USEAPI_TOKEN": TOKEN})
    result = invoke(runner, "--db", db_url, "jobs", "--format", "json")
    jobs = json.loads(result.output)
    assert len(jobs) == 4
    contract = {
        "id",
        "type",
        "account",
        "status",
        "started_at",
        "ended_at",
        "duration_s",
        "duration_min_s",
        "duration_max_s",
        "first_seen_at",
        "last_seen_at",
    }
    truth = {j.api_id: j for j in sim.truth()}
    for job in jobs:
        assert contract <= set(job)
        assert job["status"] == "running"
        assert job["ended_at"] is None and job["duration_s"] is None
        assert job["started_at"].endswith("Z")
        assert job["last_seen_at"] == job["first_seen_at"]
        assert job["account"] == truth[job["id"]].account
        assert job["type"] == "video"


@pytest.mark.parametrize("fmt", ["table", "jsonl", "csv"])
def test_jobs_other_formats_list_every_job(
    runner: CliRunner, sim: Simulator, db_url: str, fmt: str
) -> None:
    invoke(runner, "--db", db_url, "poll", "--url", sim.url, env={"USEAPI_TOKEN": TOKEN})
    result = invoke(runner, "--db", db_url, "jobs", "--format", fmt)
    ids = {j.api_id for j in sim.truth()}
    assert all(api_id in result.output for api_id in ids)
    lines = result.output.strip().splitlines()
    assert len(lines) == {"table": 6, "jsonl": 4, "csv": 5}[fmt]


def test_jobs_on_an_empty_database(runner: CliRunner, db_url: str) -> None:
    invoke(runner, "--db", db_url, "db", "upgrade")
    assert invoke(runner, "--db", db_url, "jobs", "--format", "json").output == "[]\n"


def test_db_path_shows_the_default_file(runner: CliRunner) -> None:
    result = invoke(runner, "db", "path")
    assert result.output == f"{db.default_path()}\n"


def test_db_path_follows_the_environment(runner: CliRunner, tmp_path: Path) -> None:
    file = tmp_path / "x.db"
    result = invoke(runner, "db", "path", env={"RECORDER_DB": f"sqlite:///{file}"})
    assert result.output == f"{file}\n"


def test_db_path_masks_a_password(runner: CliRunner) -> None:
    url = "postgresql+psycopg://rec:s3cret@db.example/recorder"
    result = invoke(runner, "--db", url, "db", "path")
    assert "s3cret" not in result.output
    assert "rec:***@db.example" in result.output


def test_db_upgrade_creates_the_schema(runner: CliRunner, db_url: str) -> None:
    result = invoke(runner, "--db", db_url, "db", "upgrade")
    assert result.exit_code == 0
    assert f"schema at revision {db.head_revision()}" in result.output


def test_a_newer_database_is_refused_with_a_clear_message(runner: CliRunner, db_url: str) -> None:
    invoke(runner, "--db", db_url, "db", "upgrade")
    engine = db.create(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'zz99'")
    engine.dispose()
    result = invoke(runner, "--db", db_url, "jobs", "--format", "json")
    assert result.exit_code == 1
    assert "written by a newer recorder" in result.output
    assert "Traceback" not in result.output


def test_every_command_has_help_with_an_example(runner: CliRunner) -> None:
    commands = [
        ["run"],
        ["poll"],
        ["jobs"],
        ["simulate"],
        ["demo"],
        ["db", "upgrade"],
        ["db", "path"],
    ]
    for command in commands:
        result = invoke(runner, *command, "--help")
        assert result.exit_code == 0
        assert "Example:" in result.output, command


def test_demo_records_and_summarizes(runner: CliRunner, tmp_path: Path) -> None:
    kept = tmp_path / "demo.db"
    result = invoke(runner, "demo", "--seconds", "4", "--interval", "0.2", "--keep", str(kept))
    assert result.exit_code == 0, result.output
    assert "Polls by outcome: ok " in result.output
    assert "Jobs recorded: " in result.output
    assert f"recorder --db sqlite:///{kept} jobs" in result.output
    listed = invoke(runner, "--db", f"sqlite:///{kept}", "jobs", "--format", "json")
    assert len(json.loads(listed.output)) >= 3  # the simulator starts with three jobs running
