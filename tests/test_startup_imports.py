"""Start-up loads only what the command needs: `--help` neither SQLAlchemy (so not its ORM) nor
Alembic, and a command on a current SQLite database neither Alembic, nor SQLAlchemy's ORM (the
models are Core), nor the PostgreSQL dialect. Asserted on the modules a fresh
interpreter imports (read from `python -X importtime`), never on time: benchmarks/run.py measures
the time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from recorder import db
from recorder.cli import cli

ALEMBIC = "alembic"
SQLALCHEMY = "sqlalchemy"  # its ORM included
# What no report needs: SQLAlchemy's ORM (every query is Core), and on SQLite the PostgreSQL
# dialect, whose package loads every PostgreSQL driver's module.
# prometheus_client: only `run --metrics-port` serves metrics.
UNNEEDED = ("sqlalchemy.orm", "sqlalchemy.dialects.postgresql", "prometheus_client")


def imported(*args: str, cwd: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """The modules `python -m recorder ARGS` imports, in the order their imports finish."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("RECORDER_DB", "PYTHONPROFILEIMPORTTIME")
    }
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "recorder", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert modules, result.stderr
    return modules, result


def loaded(modules: list[str], package: str) -> list[str]:
    return [m for m in modules if m == package or m.startswith(package + ".")]


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, (*prefix, name))
        else:
            found.append((*prefix, name))
    return found


@pytest.mark.parametrize("command", _commands(cli), ids=lambda c: " ".join(c) or "recorder")
def test_help_loads_neither_sqlalchemy_nor_alembic(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    modules, result = imported(*command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert loaded(modules, ALEMBIC) == []
    assert loaded(modules, SQLALCHEMY) == []


def test_the_stop_signals_are_caught_before_the_heavy_imports(tmp_path: Path) -> None:
    modules, _ = imported("--version", cwd=tmp_path)
    assert "recorder.stopping" in modules
    heavy = [i for i, m in enumerate(modules) if m.split(".")[0] in ("sqlalchemy", "click")]
    assert heavy and modules.index("recorder.stopping") < min(heavy)


@pytest.fixture(scope="module")
def current_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite database at the newest schema (nothing recorded)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('imports') / 'recorder.db'}"
    db.open_database(url).dispose()
    return url


READS = [
    ["jobs", "--limit", "1", "--format", "json"],
    ["jobs", "--overdue", "--format", "json"],
    ["stats", "--format", "json"],
    ["gaps", "--format", "json"],
    ["status", "--format", "json"],
    ["quarantine", "--format", "json"],
    ["sql", "SELECT 1 AS one", "--format", "json"],
    ["db", "upgrade"],  # already current: nothing to migrate
    ["db", "path"],
]


@pytest.mark.parametrize("command", READS, ids=lambda c: " ".join(c[:2]))
def test_a_command_on_a_current_database_loads_no_alembic(
    command: list[str], current_db: str, tmp_path: Path
) -> None:
    modules, result = imported("--db", current_db, *command, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    # status exits 1 when no target is healthy (here: none recorded); the others succeed.
    assert result.returncode == (1 if command[0] == "status" else 0), result.stderr
    assert loaded(modules, ALEMBIC) == []
    for package in UNNEEDED:
        assert loaded(modules, package) == []


def test_the_models_and_the_reports_load_neither_the_orm_nor_the_postgresql_dialect(
    tmp_path: Path,
) -> None:
    """recorder.models declares the tables in SQLAlchemy Core, and gives the partial indexes
    their PostgreSQL conditions only when a PostgreSQL database creates them."""
    code = (
        "import sys\n"
        "import recorder.reports, recorder.stats, recorder.store\n"
        "print('\\n'.join(sorted(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    modules = result.stdout.split()
    assert "recorder.models" in modules
    for package in UNNEEDED:
        assert loaded(modules, package) == []


def test_an_older_database_is_judged_by_alembic(tmp_path: Path) -> None:
    """The other side: a schema that is not the newest is for Alembic to judge (and upgrade)."""
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = db.create(url)
    command.upgrade(db.alembic_config(engine), "0003")
    engine.dispose()
    modules, result = imported("--db", url, "jobs", cwd=tmp_path)
    assert result.returncode == 1
    assert "run `recorder db upgrade` first" in result.stderr
    assert loaded(modules, ALEMBIC) != []
    modules, result = imported("--db", url, "db", "upgrade", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"schema at revision {db.HEAD_REVISION} (newest)" in result.stdout
    assert loaded(modules, "alembic.command") != []


def test_the_head_revision_constant_is_alembics_head() -> None:
    """A new migration must update db.HEAD_REVISION, or a report would call its schema old."""
    script = ScriptDirectory.from_config(db.alembic_config())
    assert script.get_heads() == [db.HEAD_REVISION]
    assert db.head_revision() == db.HEAD_REVISION


def test_the_revision_is_read_as_alembic_reads_it(db_url: str) -> None:
    def alembics(engine: Engine) -> str | None:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    engine = db.create(db_url)
    assert db.current_revision(engine) is None
    assert alembics(engine) is None
    engine.dispose()
    engine = db.open_database(db_url)
    assert db.current_revision(engine) == alembics(engine) == db.HEAD_REVISION
    engine.dispose()
