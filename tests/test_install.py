"""The built wheel, installed (not editable), migrates a database from any directory."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The recorder wheel built from this tree and installed into a folder of its own."""
    base = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", base / "dist", ROOT],
        check=True,
    )
    (wheel,) = (base / "dist").glob("recorder-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", base / "site", wheel], check=True)
    return base / "site"


def run_installed(
    site: Path, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(site)} | (env or {})
    env.pop("RECORDER_DB", None)
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, check=False
    )


def test_the_wheel_ships_the_migrations(installed: Path) -> None:
    assert (installed / "recorder" / "migrations" / "env.py").is_file()
    assert list((installed / "recorder" / "migrations" / "versions").glob("0001_*.py"))


def test_an_installed_recorder_upgrades_a_new_database_elsewhere(
    installed: Path, tmp_path: Path
) -> None:
    where = run_installed(installed, tmp_path, "-c", "import recorder; print(recorder.__file__)")
    assert where.stdout.strip().startswith(str(installed)), where
    result = run_installed(
        installed, tmp_path, "-m", "recorder", "--db", "sqlite:///fresh.db", "db", "upgrade"
    )
    assert result.returncode == 0, result.stderr
    assert "schema at revision" in result.stdout
    with sqlite3.connect(tmp_path / "fresh.db") as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"targets", "polls", "jobs", "transitions", "observations"} <= tables


@pytest.mark.parametrize("backend", ["postgresql"])
def test_an_installed_recorder_records_into_postgresql(
    installed: Path, tmp_path: Path, db_url: str
) -> None:
    from recorder.simulator import SimConfig, Simulator

    with Simulator(SimConfig(seed=2, token="tok-install", initial_jobs=3)) as sim:
        env = {"USEAPI_TOKEN": "tok-install"}
        result = run_installed(
            installed, tmp_path, "-m", "recorder", "--db", db_url, "poll", "--url", sim.url, env=env
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 3 job(s) listed; 3 appeared, 0 reappeared, 0 vanished\n"
    listed = run_installed(
        installed, tmp_path, "-m", "recorder", "--db", db_url, "jobs", "--format", "json"
    )
    assert len(json.loads(listed.stdout)) == 3
