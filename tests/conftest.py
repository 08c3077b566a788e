"""Shared fixtures: every database test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis.internal.conjecture import providers
from sqlalchemy import Engine

from recorder import db
from recorder.simulator import ManualClock
from recorder.store import Store
from tests import postgres, simulated, stats_model
from tests.histories import record_history

BACKENDS = ["sqlite", "postgresql"]


def pytest_sessionstart(session: pytest.Session) -> None:
    """Import every module of the recorder and its tests before any test runs.

    Hypothesis draws from the constants of the project's modules it finds in sys.modules, and
    adds those of a module imported later: a module first imported in the middle of a property
    test (several are imported lazily, to keep start-up fast) changes what the same choices
    generate, which Hypothesis reports as FlakyStrategyDefinition instead of the test's result.
    """
    root = Path(__file__).resolve().parent.parent
    for package in ("recorder", "tests", "benchmarks"):
        for path in sorted((root / package).rglob("*.py")):
            name = ".".join(path.relative_to(root).with_suffix("").parts)
            if name.endswith("__main__") or name.endswith("conftest"):
                continue
            importlib.import_module(name.removesuffix(".__init__"))
    # And freeze the pool as the first property test finds it: a local module that appears
    # later anyway (the fresh-clone CI run still saw FlakyStrategyDefinition after the imports
    # above) must not change it. (Reading it here, at start-up, Hypothesis warns against.)
    first = providers._get_local_constants
    frozen: list[Any] = []

    def constants() -> Any:
        if not frozen:
            frozen.append(first())
        return frozen[0]

    providers._get_local_constants = constants


@pytest.fixture(scope="session")
def pg_server() -> Iterator[postgres.Server | str]:
    """The session's PostgreSQL server, started on first use; else why there is none."""
    try:
        server = postgres.start()
    except (postgres.Unavailable, OSError) as exc:
        yield str(exc)
        return
    yield server
    server.stop()


@contextmanager
def new_database(backend: str, directory: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL for a new, empty database on `backend`."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'recorder.db'}"
        return
    server = request.getfixturevalue("pg_server")
    if isinstance(server, str):
        postgres.unavailable(server)
    with server.database() as url:
        yield url


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The database backend under test."""
    return str(request.param)


@pytest.fixture
def db_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL for a new, empty database on the backend under test."""
    with new_database(backend, tmp_path, request) as url:
        yield url


@pytest.fixture(scope="module", params=BACKENDS)
def history(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[Any], list[Any]]]:
    """A database holding tests.histories' recorded history (one per test module and backend),
    with its jobs and polls as plain rows."""
    with new_database(request.param, tmp_path_factory.mktemp("history"), request) as url:
        engine = db.open_database(url)
        record_history(engine)
        jobs, polls = stats_model.load(engine)
        engine.dispose()
        yield url, jobs, polls


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a new database, migrated to the newest schema."""
    engine = db.open_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    """A store on a new database."""
    return Store(engine)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say how many tests ran on PostgreSQL, so that a silent skip cannot pass unnoticed."""
    counts = dict.fromkeys(("passed", "failed", "skipped", "error"), 0)
    for outcome in counts:
        for report in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(report, "nodeid", "")
            if "postgresql" not in nodeid:
                continue
            if outcome == "passed" and report.when != "call":
                continue
            counts[outcome] += 1
    terminalreporter.write_line(
        "PostgreSQL: {passed} tests passed, {failed} failed, {error} errors, "
        "{skipped} skipped".format(**counts)
    )


@pytest.fixture
def clock() -> ManualClock:
    """A manual clock at tests.simulated.T0, for the simulators that `serve` starts."""
    return ManualClock(simulated.T0)


@pytest.fixture
def serve(clock: ManualClock) -> Iterator[simulated.Serve]:
    """Start simulators on 127.0.0.1 with the manual clock; stop them all afterwards."""
    with simulated.serving(clock) as make:
        yield make
