"""Start-up and paths: read commands create nothing, a database that is not ours is refused,
an in-memory database is refused for recording, a vanished database file stops the writes,
and a one-shot poll judges gaps by the cadence it actually runs at."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text

from recorder import db
from recorder.cli import cli
from recorder.models import Poll
from recorder.pipeline import Pipeline
from recorder.simulator import JobKind, ManualClock, SimConfig, Simulator
from recorder.store import Store
from tests.feeding import ok

TOKEN = "tok-startup-77d1"
READ_COMMANDS = [
    ["jobs"],
    ["stats"],
    ["gaps"],
    ["status"],
    ["quarantine"],
    ["sql", "SELECT 1 AS one"],
]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("RECORDER_DB", raising=False)
    monkeypatch.setenv("USEAPI_TOKEN", TOKEN)
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> Result:
    return runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_read_command_on_a_mistyped_path_creates_nothing(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "recorder.db"
    result = invoke(runner, "--db", f"sqlite:///{missing}", *command)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: no database at {missing}")
    assert len(result.output.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no directory, no file


def _foreign(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
        conn.execute("INSERT INTO recipes VALUES ('bread')")


def _tables(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return sorted(
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        )


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_read_command_leaves_another_programs_database_alone(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    path = tmp_path / "other.db"
    _foreign(path)
    result = invoke(runner, "--db", f"sqlite:///{path}", *command)
    assert result.exit_code == 1
    assert "holds no recorder history" in result.output
    assert _tables(path) == ["recipes"]


def test_recording_refuses_another_programs_database_unless_upgrade_is_asked(
    runner: CliRunner, tmp_path: Path
) -> None:
    path = tmp_path / "other.db"
    _foreign(path)
    url = f"sqlite:///{path}"
    result = invoke(runner, "--db", url, "poll", "--url", "http://127.0.0.1:9/x/")
    assert result.exit_code == 1
    assert "is not a recorder database" in result.output
    assert "recorder db upgrade" in result.output
    assert _tables(path) == ["recipes"]
    assert invoke(runner, "--db", url, "db", "upgrade").exit_code == 0
    assert "recipes" in _tables(path) and "jobs" in _tables(path)


@pytest.mark.parametrize("command", [["run"], ["poll"]])
@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:"])
def test_recording_into_memory_is_refused(runner: CliRunner, command: list[str], url: str) -> None:
    result = invoke(runner, "--db", url, *command, "--url", "http://127.0.0.1:9/x/")
    assert result.exit_code == 1
    assert "in-memory database" in result.output
    assert len(result.output.splitlines()) == 1


def test_a_read_on_an_older_schema_asks_for_an_upgrade(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    from alembic import command

    engine = db.create(url)
    command.upgrade(db.alembic_config(engine), "0003")
    engine.dispose()
    result = invoke(runner, "--db", url, "jobs")
    assert result.exit_code == 1
    assert "run `recorder db upgrade` first" in result.output


def test_reports_read_while_a_writer_holds_the_write_lock(engine_file: str) -> None:
    """A report never takes SQLite's write lock, so it neither waits for nor blocks the daemon."""
    writer = db.create(engine_file)
    reader = db.open_readonly(engine_file)
    with writer.begin() as conn:  # BEGIN IMMEDIATE: the write lock, held through the read
        conn.execute(text("UPDATE targets SET url = url"))
        with reader.connect() as read:
            assert read.execute(select(Poll.id)).all() == []
    with reader.connect() as read, writer.begin() as conn:  # and the other way round
        read.execute(select(Poll.id)).all()
        conn.execute(text("UPDATE targets SET url = url"))
    writer.dispose()
    reader.dispose()


@pytest.fixture
def engine_file(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    db.open_database(url).dispose()
    return url


def test_a_deleted_database_file_stops_the_writes(engine_file: str) -> None:
    engine = db.open_database(engine_file)
    store = Store(engine)
    clock = ManualClock(1_750_000_000.0)
    sim = Simulator(SimConfig(seed=3, initial_jobs=2), clock=clock)
    pipeline = Pipeline(store, "http://127.0.0.1:9/x/", lambda: ok(sim, clock), gap_s=31.0)
    pipeline.poll_once()
    path = Path(engine_file.removeprefix("sqlite:///"))
    path.unlink()
    clock.advance(1.0)
    with pytest.raises(db.DatabaseGone, match="was deleted"):
        pipeline.poll_once()
    assert not path.exists()  # not re-created by the write that was refused
    engine.dispose()


def test_a_replaced_database_file_stops_the_writes(engine_file: str, tmp_path: Path) -> None:
    engine = db.open_database(engine_file)
    Store(engine).target("http://127.0.0.1:9/x/", 1_750_000_000.0)
    path = Path(engine_file.removeprefix("sqlite:///"))
    other = tmp_path / "other.db"
    db.open_database(f"sqlite:///{other}").dispose()
    other.replace(path)
    with pytest.raises(db.DatabaseGone, match="was replaced"):
        Store(engine).target("http://127.0.0.1:9/y/", 1_750_000_000.0)
    engine.dispose()


# --- cron: gaps follow the cadence the polls actually keep ------------------------------------


def _cron(store: Store, clock: ManualClock, sim: Simulator, gap_s: float | None) -> Pipeline:
    return Pipeline(store, "http://127.0.0.1:9/cron/", lambda: ok(sim, clock), gap_s=gap_s)


def _after_gap(store: Store) -> list[bool]:
    with store.engine.connect() as conn:
        return list(conn.scalars(select(Poll.after_gap).order_by(Poll.id)))


def test_polls_a_minute_apart_record_no_gap_until_one_is_missed(store: Store) -> None:
    clock = ManualClock(1_750_000_000.0)
    sim = Simulator(SimConfig(seed=5, kinds=(JobKind("video", 0.5, 600.0),)), clock=clock)
    for _ in range(8):
        # Each cron run is a new process: a new pipeline that knows nothing of the last one.
        _cron(store, clock, sim, None).poll_once()
        clock.advance(60.0)
    clock.advance(25 * 60.0)  # the machine was down for half an hour
    _cron(store, clock, sim, None).poll_once()
    clock.advance(60.0)
    _cron(store, clock, sim, None).poll_once()
    assert _after_gap(store) == [False] * 8 + [True, False]


def test_the_old_fixed_threshold_called_every_cron_poll_a_gap(store: Store) -> None:
    clock = ManualClock(1_750_000_000.0)
    sim = Simulator(SimConfig(seed=5), clock=clock)
    for _ in range(4):
        _cron(store, clock, sim, 3 * 10.0 + 1.0).poll_once()
        clock.advance(60.0)
    assert _after_gap(store) == [False, True, True, True]


def test_poll_expect_every_sets_the_cadence(runner: CliRunner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cron.db'}"
    config = SimConfig(seed=2, token=TOKEN, initial_jobs=1)
    with Simulator(config) as sim:
        for _ in range(3):
            result = invoke(runner, "--db", url, "poll", "--url", sim.url, "--expect-every", "60s")
            assert result.exit_code == 0, result.output
    engine = db.open_readonly(url)
    assert _after_gap(Store(engine)) == [False, False, False]
    engine.dispose()


def test_a_poll_into_a_read_only_database_says_so_in_one_line(
    runner: CliRunner, db_url: str
) -> None:
    assert invoke(runner, "--db", db_url, "db", "upgrade").exit_code == 0
    if db_url.startswith("sqlite"):
        path = Path(db_url.removeprefix("sqlite:///"))
        url = f"sqlite:///file:{path}?mode=ro&uri=true"
    else:
        engine = db.create(db_url)
        with engine.connect() as conn:
            name = conn.scalar(text("SELECT current_database()"))
            conn.execute(text(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on'))
            conn.commit()
        engine.dispose()
        url = db_url
    config = SimConfig(seed=2, token=TOKEN, initial_jobs=1)
    with Simulator(config) as sim:
        result = invoke(runner, "--db", url, "poll", "--url", sim.url)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot write to the database: ")
    assert len(result.output.splitlines()) == 1


@pytest.mark.parametrize("command", READ_COMMANDS, ids=lambda c: c[0])
def test_a_read_command_opens_a_path_with_uri_characters(
    runner: CliRunner, tmp_path: Path, command: list[str]
) -> None:
    # Read-only opening goes through a SQLite URI, where `#` starts a fragment and `%` an
    # escape: unescaped, `a#b/…` opened (and created) the file `a`, read-write.
    folder = tmp_path / "a#b"
    folder.mkdir()
    url = f"sqlite:///{folder / 'x %2 y.db'}"
    assert invoke(runner, "--db", url, "db", "upgrade").exit_code == 0
    result = invoke(runner, "--db", url, *command, "--format", "json")
    assert result.exit_code in (0, 1), result.output  # status exits 1: no target yet
    assert "Error" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a#b"]
