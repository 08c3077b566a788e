"""Targets from a config file: a valid file loads; every mistake is one line that names the file,
the target and the key, exits 2 before anything starts, and never shows a token."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from recorder import services
from recorder.cli import cli
from recorder.config import ConfigError
from recorder.config_file import CAPACITY_INTERVAL_S, load_targets

TOKEN = "tok-cfg-6a1e93"  # a recognizable value to look for in every output
PIXVERSE = services.get("pixverse").default_url
GOOD = '[targets.a]\nservice = "pixverse"\ntoken_env = "USEAPI_TOKEN"\n'


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("RECORDER_DB", raising=False)
    monkeypatch.setenv("USEAPI_TOKEN", TOKEN)
    return CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "targets.toml"
    path.write_text(text, encoding="utf-8")
    return path


def invoke(
    runner: CliRunner, tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> Result:
    db_url = f"sqlite:///{tmp_path / 'recorder.db'}"
    return runner.invoke(cli, ["--db", db_url, *args], env=env, catch_exceptions=False)


def target(key: str, value: str, service: str = "pixverse") -> str:
    """A target `a` with a token from the environment, and `key = value`."""
    return f'[targets.a]\nservice = "{service}"\ntoken_env = "USEAPI_TOKEN"\n{key} = {value}\n'


# (file text, the message's fragment that names target and key, and what it says)
MISTAKES = {
    "not TOML": (
        "[targets.a]\nservice = \n",
        "not valid TOML: Invalid value (at line 2, column 11)",
    ),
    "a target defined twice": (
        GOOD + '[targets.a]\nurl = "https://example.com/"\n',
        "target 'a' is defined twice (at line 4, column 11)",
    ),
    "a key given twice": (GOOD + 'service = "kling"\n', "not valid TOML: Cannot overwrite a value"),
    "no targets": ("# nothing yet\n", "no [targets.NAME] tables: add one for each scheduler"),
    "empty targets table": ("[targets]\n", "no [targets.NAME] tables"),
    "targets not a table": ("targets = 3\n", "no [targets.NAME] tables (targets is a number)"),
    "unknown top-level key": (
        GOOD + "[target.b]\n",
        "unknown top-level key 'target': the file holds only [targets.NAME] tables",
    ),
    "a target that is no table": ("[targets]\nb = 1\n", "[targets] b: must be a table"),
    "a name with a space": (
        '[targets."a b"]\nservice = "pixverse"\n',
        "target name 'a b': use 1 to 64 letters, digits, '-', '_' or '.'",
    ),
    "a name too long": (f"[targets.{'n' * 65}]\n", f"target name '{'n' * 64}…'"),
    "an unknown key": (target("intervall", "10"), "[targets.a] 'intervall': unknown key; the keys"),
    "a token in the file": (target("token", f'"{TOKEN}"'), "[targets.a] 'token': unknown key"),
    "no service": (
        '[targets.a]\ntoken_env = "USEAPI_TOKEN"\n',
        "[targets.a] service: missing; set it to one of pixverse, kling,",
    ),
    "an unknown service": (
        '[targets.a]\nservice = "pixvers"\ntoken_env = "USEAPI_TOKEN"\n',
        "[targets.a] service: unknown service 'pixvers'; known: pixverse, kling, minimax, "
        "runway, tempolor, ltxstudio, riffusion, dreamina",
    ),
    "a service that is no string": (
        "[targets.a]\nservice = 1\n",
        "[targets.a] service: must be a string",
    ),
    "both token keys": (
        target("token_file", '"/etc/token"'),
        "[targets.a] token_env/token_file: both are set; give exactly one of the two",
    ),
    "no token key": (
        '[targets.a]\nservice = "pixverse"\n',
        "[targets.a] token_env/token_file: neither is set",
    ),
    "an unset token variable": (
        '[targets.a]\nservice = "pixverse"\ntoken_env = "NO_SUCH_TOKEN_VAR"\n',
        "[targets.a] token_env: the NO_SUCH_TOKEN_VAR environment variable is not set, or empty",
    ),
    "an empty token variable": (
        '[targets.a]\nservice = "pixverse"\ntoken_env = "EMPTY_TOKEN_VAR"\n',
        "[targets.a] token_env: the EMPTY_TOKEN_VAR environment variable is not set, or empty",
    ),
    "the token itself as token_env": (
        f'[targets.a]\nservice = "pixverse"\ntoken_env = "{TOKEN}"\n',
        "[targets.a] token_env: must be the name of an environment variable",
    ),
    "a token-like token_env": (
        '[targets.a]\nservice = "pixverse"\ntoken_env = "tok9Fz3Qa"\n',
        "[targets.a] token_env: the environment variable it names is not set, or empty",
    ),
    "a token variable with a space in it": (
        '[targets.a]\nservice = "pixverse"\ntoken_env = "SPACED_TOKEN_VAR"\n',
        "[targets.a] token_env: the token in the SPACED_TOKEN_VAR environment variable contains "
        "whitespace",
    ),
    "a missing token file": (
        '[targets.a]\nservice = "pixverse"\ntoken_file = "no-such-token"\n',
        "[targets.a] token_file: cannot read the token file",
    ),
    "a token file of two lines": (
        '[targets.a]\nservice = "pixverse"\ntoken_file = "two-lines"\n',
        "[targets.a] token_file: the token file",
    ),
    "a token file that is no string": (
        '[targets.a]\nservice = "pixverse"\ntoken_file = 3\n',
        "[targets.a] token_file: must be a non-empty string, not a number",
    ),
    "a boolean interval": (target("interval", "true"), "[targets.a] interval: must be a number"),
    "a string interval": (target("interval", '"10s"'), "[targets.a] interval: must be a number"),
    "a date interval": (
        target("interval", "1979-05-27"),
        "interval: must be a number of seconds, ",
    ),
    "an infinite interval": (target("interval", "inf"), "[targets.a] interval: must be a finite"),
    "a nan interval": (target("interval", "nan"), "[targets.a] interval: must be a finite"),
    "an interval too short": (
        target("interval", "0.01"),
        "[targets.a] interval: must be from 0.05 to 86400 seconds, not 0.01",
    ),
    "an interval too long": (target("interval", "86401"), "interval: must be from 0.05 to 86400"),
    "an interval beyond any float": (target("interval", "9" * 400), "interval: must be from 0.05"),
    "a zero timeout": (target("timeout", "0"), "[targets.a] timeout: must be from 0.1 to 3600"),
    "a timeout too long": (target("timeout", "3601"), "[targets.a] timeout: must be from 0.1"),
    "a capacity interval below a second": (
        target("capacity_interval", "0.5"),
        "[targets.a] capacity_interval: must be 0 (never) or from 1 to 86400 seconds, not 0.5",
    ),
    "a capacity interval too long": (
        target("capacity_interval", "86401"),
        "[targets.a] capacity_interval: must be 0 (never) or from 1 to 86400",
    ),
    "a negative capacity interval": (target("capacity_interval", "-1"), "capacity_interval: must"),
    "a capacity interval for a service without /available": (
        target("capacity_interval", "60", service="runway"),
        "[targets.a] capacity_interval: runway has no /scheduler/available to read",
    ),
    "plain http to a remote host": (
        target("url", '"http://api.example.com/v2/pixverse/scheduler/"'),
        "[targets.a] url: refusing plain http:// to 'api.example.com'",
    ),
    "a url of another scheme": (
        target("url", '"ftp://api.useapi.net/"'),
        "[targets.a] url: URL must start with https://",
    ),
    "a url without a host": (target("url", '"https:///x"'), "[targets.a] url: URL has no host"),
    "an empty url": (target("url", '""'), "[targets.a] url: is empty"),
    "a url that is no string": (target("url", "[1]"), "[targets.a] url: must be a string"),
    "two targets on the default url": (
        GOOD + '[targets.b]\nservice = "pixverse"\ntoken_env = "USEAPI_TOKEN"\n',
        "[targets.b] url: polls the same URL as [targets.a]",
    ),
    "two targets on one url written two ways": (
        GOOD
        + '[targets.b]\nservice = "pixverse"\ntoken_env = "USEAPI_TOKEN"\n'
        + 'url = "HTTPS://API.useapi.net:443/v2/pixverse/scheduler"\n',
        "[targets.b] url: polls the same URL as [targets.a]",
    ),
    "two targets on localhost and 127.0.0.1": (
        '[targets.a]\nservice = "kling"\ntoken_env = "USEAPI_TOKEN"\n'
        + 'url = "http://localhost:8765/v1/kling/scheduler"\n'
        + '[targets.b]\nservice = "kling"\ntoken_env = "USEAPI_TOKEN"\n'
        + 'url = "http://127.0.0.1:8765/v1/kling/scheduler/"\n',
        "[targets.b] url: polls the same URL as [targets.a]",
    ),
}


@pytest.mark.parametrize(("text", "says"), MISTAKES.values(), ids=MISTAKES.keys())
@pytest.mark.parametrize("command", ["run", "poll"])
def test_a_mistake_is_one_line_exit_2_naming_file_target_and_key(
    runner: CliRunner, tmp_path: Path, text: str, says: str, command: str
) -> None:
    path = write(tmp_path, text)
    (tmp_path / "two-lines").write_text(f"{TOKEN}\n{TOKEN}\n")
    env = {"EMPTY_TOKEN_VAR": " ", "SPACED_TOKEN_VAR": f"{TOKEN} {TOKEN}", "tok9Fz3Qa": ""}
    result = invoke(runner, tmp_path, command, "--config", str(path), env=env)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {path}: ")
    assert result.output.count("\n") == 1, result.output
    assert says in result.output
    assert TOKEN not in result.output
    assert "tok9Fz3Qa" not in result.output  # a mixed-case "name" may be a pasted token
    assert not (tmp_path / "recorder.db").exists()  # checked before anything started


@pytest.mark.parametrize("what", ["missing", "a directory"])
def test_a_config_file_that_cannot_be_read_is_named(
    runner: CliRunner, tmp_path: Path, what: str
) -> None:
    path = tmp_path / "targets.toml"
    if what == "a directory":
        path.mkdir()
    result = invoke(runner, tmp_path, "run", "--config", str(path))
    assert result.exit_code == 2
    reason = "No such file or directory" if what == "missing" else "Is a directory"
    assert result.output == f"Error: cannot read the config file {path}: {reason}\n"


def test_a_config_file_that_is_not_utf8_is_named(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "targets.toml"
    path.write_bytes(b"[targets.a]\nservice = '\xff'\n")
    result = invoke(runner, tmp_path, "run", "--config", str(path))
    assert (result.exit_code, result.output) == (2, f"Error: {path}: not UTF-8 text (byte 23)\n")


@pytest.mark.parametrize(
    ("command", "option"),
    [
        ("run", ["--url", PIXVERSE]),
        ("run", ["--token-file", "TOKEN_PATH"]),
        ("run", ["--interval", "10"]),
        ("poll", ["--url", PIXVERSE]),
        ("poll", ["--token-file", "TOKEN_PATH"]),
    ],
)
def test_config_with_a_single_target_option_is_a_usage_error(
    runner: CliRunner, tmp_path: Path, command: str, option: list[str]
) -> None:
    path = write(tmp_path, GOOD)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    given = [str(token_file) if value == "TOKEN_PATH" else value for value in option]
    args = [command, "--config", str(path), *given]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 2
    assert f"Error: --config and {option[0]} cannot be used together" in result.output
    assert TOKEN not in result.output


def test_help_documents_config_and_shows_no_token(runner: CliRunner) -> None:
    for command in ("run", "poll"):
        result = runner.invoke(cli, [command, "--help"], catch_exceptions=False)
        assert result.exit_code == 0
        assert "--config FILE" in result.output
        assert "[targets.NAME]" in result.output
        assert TOKEN not in result.output


# --- a valid file ------------------------------------------------------------------------------


def test_a_valid_file_with_several_targets_loads_in_order(tmp_path: Path) -> None:
    (tmp_path / "kling.token").write_text("\ufeffkling-token\n")
    path = write(
        tmp_path,
        """
[targets.pixverse-main]
service = "pixverse"
token_env = "USEAPI_TOKEN"

[targets."kling_2.b"]
service = "kling"
url = "https://api.useapi.net/v1/kling/scheduler?account=b"
token_file = "kling.token"     # beside this file
interval = 2.5
timeout = 30
capacity_interval = 0

[targets.runway]
service = "runway"
token_env = "RUNWAY_TOKEN"
interval = 60
""",
    )
    environ = {"USEAPI_TOKEN": TOKEN, "RUNWAY_TOKEN": " runway-token "}
    targets = load_targets(path, environ=environ, default_timeout=7.0)
    assert [t.name for t in targets] == ["pixverse-main", "kling_2.b", "runway"]
    pixverse, kling, runway = targets
    assert (pixverse.service, pixverse.url) == (services.get("pixverse"), PIXVERSE)
    assert (pixverse.interval, pixverse.timeout) == (10.0, 7.0)  # the defaults
    assert pixverse.capacity_interval == CAPACITY_INTERVAL_S  # pixverse has /available
    assert pixverse.token.reveal() == TOKEN
    assert kling.url == "https://api.useapi.net/v1/kling/scheduler?account=b"
    assert (kling.interval, kling.timeout, kling.capacity_interval) == (2.5, 30.0, 0.0)
    assert kling.token.reveal() == "kling-token"
    assert (runway.url, runway.capacity_interval) == (services.get("runway").default_url, 0.0)
    assert runway.token.reveal() == "runway-token"
    assert all(isinstance(t.interval, float) for t in targets)
    assert TOKEN not in repr(targets) and "kling-token" not in repr(targets)
    with pytest.raises(AttributeError):
        pixverse.interval = 1.0  # type: ignore[misc]


def test_insecure_allows_plain_http_to_a_remote_host(tmp_path: Path) -> None:
    path = write(tmp_path, target("url", '"http://scheduler.internal/v1/kling/scheduler"'))
    with pytest.raises(ConfigError, match="refusing plain http://"):
        load_targets(path, environ={"USEAPI_TOKEN": TOKEN})
    [loaded] = load_targets(path, environ={"USEAPI_TOKEN": TOKEN}, insecure=True)
    assert loaded.url == "http://scheduler.internal/v1/kling/scheduler"


def test_for_url_picks_the_service_by_path() -> None:
    assert services.for_url("http://127.0.0.1:8/v2/pixverse/scheduler/").name == "pixverse"
    assert services.for_url("https://api.useapi.net/v1/kling/scheduler/").name == "kling"
    assert services.for_url("https://example.com/other") is services.GENERIC
    with pytest.raises(KeyError, match="known: pixverse, kling"):
        services.get("nope")
