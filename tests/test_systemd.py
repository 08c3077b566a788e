"""contrib/: the systemd unit passes `systemd-analyze verify`, and its sample config loads.

The unit and the config meet at two places, both checked here: the config file the unit runs
with, and the token, which systemd hands over as the credential file that the config's
token_file names. With CI=true a missing systemd-analyze fails the test (.ci/run installs it).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from click.testing import CliRunner

from recorder.cli import cli
from recorder.config_file import load_targets

CONTRIB = Path(__file__).parent.parent / "contrib"
UNIT = CONTRIB / "recorder.service"
SAMPLE = CONTRIB / "recorder.toml"
TOKEN = "tok-systemd-8d41e0"


def settings(unit: str) -> dict[str, list[str]]:
    """Each key of the unit file, with every value it is given."""
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def exec_start() -> list[str]:
    (command,) = settings(UNIT.read_text())["ExecStart"]
    return shlex.split(command)


def credential() -> tuple[str, str]:
    """The name and source of the unit's one credential."""
    (value,) = settings(UNIT.read_text())["LoadCredential"]
    name, source = value.split(":", 1)
    return name, source


def systemd_analyze() -> str:
    """The systemd-analyze program; skipped without it, but failed in CI."""
    program = shutil.which("systemd-analyze")
    if program is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("systemd-analyze is required in CI (.ci/run installs systemd)")
        pytest.skip("systemd-analyze not found (apt-get install systemd)")
    return program


def test_the_unit_verifies_without_a_warning(tmp_path: Path) -> None:
    program = systemd_analyze()
    # verify checks that ExecStart's program exists: point it at this environment's recorder.
    installed = Path(sys.executable).with_name("recorder")
    assert installed.exists(), f"{installed} is missing: pip install the project"
    binary = exec_start()[0]
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace(f"ExecStart={binary} ", f"ExecStart={installed} "))
    result = subprocess.run(
        [program, "verify", str(copy)], capture_output=True, text=True, timeout=120, check=False
    )
    output = result.stdout + result.stderr
    about_the_unit = [line for line in output.splitlines() if UNIT.name in line]
    assert result.returncode == 0, output
    assert about_the_unit == [], output


def test_the_unit_runs_the_daemon_on_the_sample_configs_path() -> None:
    command = exec_start()
    assert PurePosixPath(command[0]).name == "recorder"
    assert command[1:] == [
        "--db",
        "sqlite:////var/lib/recorder/recorder.db",
        "run",
        "--config",
        "/etc/recorder/recorder.toml",
    ]
    # Every option known and in its place: --help stops only after the whole line is parsed.
    result = CliRunner().invoke(
        cli, [*command[1:], "--help"], prog_name="recorder", catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: recorder run ")
    values = settings(UNIT.read_text())
    assert values["StateDirectory"] == ["recorder"]  # the database's /var/lib/recorder
    assert values["Restart"] == ["always"]
    assert values["KillSignal"] == ["SIGTERM"]


def test_the_sample_config_reads_the_token_the_unit_hands_over() -> None:
    name, source = credential()
    assert source == "/etc/recorder/useapi-token"
    # systemd puts credential NAME of UNIT at /run/credentials/UNIT/NAME ($CREDENTIALS_DIRECTORY).
    where = f"/run/credentials/{UNIT.name}/{name}"
    text = SAMPLE.read_text()
    assert f'token_file = "{where}"' in text
    assert "token_env" not in text


def test_the_sample_config_loads(tmp_path: Path) -> None:
    name, _ = credential()
    token = tmp_path / name
    token.write_text(TOKEN + "\n")
    config = tmp_path / "recorder.toml"
    config.write_text(
        SAMPLE.read_text().replace(f"/run/credentials/{UNIT.name}/{name}", str(token))
    )
    targets = load_targets(config, environ={})
    assert [target.name for target in targets] == ["pixverse", "kling"]
    assert all(target.url.startswith("https://api.useapi.net/") for target in targets)
    assert all(target.token.reveal() == TOKEN for target in targets)
