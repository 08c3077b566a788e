"""Every bad option value or setting gets one clear line naming it, never a traceback.

Usage mistakes (a value click's parameter types refuse) exit 2, with click's usage header above
the one `Error:` line; mistakes found while running (a token file, a window) exit 1 with the
`Error:` line alone.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder import db, params
from recorder.cli import cli
from recorder.config import ConfigError, load_token
from recorder.simulator import JobKind, SimConfig, Simulator

TOKEN = "tok-bad-input-5c07e2"  # a distinctive token to look for in every output
LOOPBACK = "http://127.0.0.1:9/"  # never reached: every case here fails before a request


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("USEAPI_TOKEN", raising=False)
    monkeypatch.delenv("RECORDER_DB", raising=False)
    return CliRunner()


@pytest.fixture
def db_arg(tmp_path: Path) -> list[str]:
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    db.open_database(url).dispose()  # read commands need an existing recorder database
    return ["--db", url]


def invoke(runner: CliRunner, args: list[str], env: dict[str, str] | None = None) -> Result:
    return runner.invoke(cli, args, env=env, catch_exceptions=False)


def error_line(result: Result, exit_code: int) -> str:
    """The one `Error:` line of a failed command, after checking that nothing else was said."""
    assert result.exit_code == exit_code, result.output
    assert "Traceback" not in result.output
    lines = result.output.splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1, result.output
    others = [line for line in lines if line not in errors]
    if exit_code == 2:  # click's usage header: "Usage: ...", "Try '... --help' for help.", ""
        assert len(others) == 3 and others[0].startswith("Usage: "), result.output
        assert others[1].startswith("Try ") and others[2] == "", result.output
    else:
        assert others == [], result.output
    return errors[0]


# --- usage errors: the option's type refuses the value (exit 2) -------------------------------

HUGE_AGE = "99999999999d"
USAGE_ERRORS = [
    # (arguments, the option named, a fragment of the message)
    (["run", "--interval", "nan"], "--interval", "'nan' is not a finite number"),
    (["run", "--interval", "inf"], "--interval", "'inf' is not a finite number"),
    (["run", "--interval", "-inf"], "--interval", "'-inf' is not a finite number"),
    (["run", "--interval", "1e308"], "--interval", "more than the maximum, 86400 s (1 day)"),
    (["run", "--interval", "1e400"], "--interval", "more than the maximum"),
    (["run", "--interval", "-0"], "--interval", "'-0' is less than the minimum, 0.05 s"),
    (["run", "--interval", "1e-400"], "--interval", "'1e-400' is less than the minimum"),
    (["run", "--interval", "0.01"], "--interval", "less than the minimum, 0.05 s"),
    (["run", "--interval", "0x10"], "--interval", "'0x10' is not a number of seconds"),
    (["run", "--interval", "1_000"], "--interval", "'1_000' is not a number of seconds"),
    (["run", "--interval", ""], "--interval", "'' is not a number of seconds"),
    (["run", "--interval", "   "], "--interval", "'   ' is not a number of seconds"),
    (["run", "--interval", "5ms"], "--interval", "'5ms' is not a number of seconds"),
    (["run", "--interval", "2d"], "--interval", "'2d' is more than the maximum"),
    (["run", "--timeout", "nan"], "--timeout", "'nan' is not a finite number"),
    (["run", "--timeout", "inf"], "--timeout", "'inf' is not a finite number"),
    (["run", "--timeout", "1e308"], "--timeout", "more than the maximum, 3600 s (1 hour)"),
    (["poll", "--timeout", "nan"], "--timeout", "'nan' is not a finite number"),
    (["poll", "--timeout", "inf"], "--timeout", "'inf' is not a finite number"),
    (["poll", "--timeout", "1e308"], "--timeout", "more than the maximum, 3600 s (1 hour)"),
    (["poll", "--timeout", "0"], "--timeout", "'0' is less than the minimum, 0.1 s"),
    (["jobs", "--since", HUGE_AGE], "--since", "reaches back before 0001-01-01"),
    (["jobs", "--until", HUGE_AGE], "--until", "reaches back before 0001-01-01"),
    (["stats", "--since", HUGE_AGE], "--since", "reaches back before 0001-01-01"),
    (["stats", "--until", HUGE_AGE], "--until", "reaches back before 0001-01-01"),
    (["gaps", "--since", HUGE_AGE], "--since", "reaches back before 0001-01-01"),
    (["gaps", "--until", HUGE_AGE], "--until", "reaches back before 0001-01-01"),
    (["jobs", "--since", "9" * 400 + "d"], "--since", "reaches back before 0001-01-01"),
    (
        ["gaps", "--since", "0001-01-01T00:00:00+01:00"],
        "--since",
        "is out of range: in UTC it falls before 0001-01-01",
    ),
    (
        ["stats", "--until", "9999-12-31T23:00:00-01:00"],
        "--until",
        "is out of range: in UTC it falls after 9999-12-31T23:59:59Z",
    ),
    (
        ["jobs", "--until", "9999-12-31T23:59:59.9999Z"],
        "--until",
        "is out of range: in UTC it falls after 9999-12-31T23:59:59Z",
    ),
    (["jobs", "--since", "2026-13-01"], "--since", "cannot read '2026-13-01' as a time"),
    (["jobs", "--since", "-5m"], "--since", "cannot read '-5m' as a time"),
    (["jobs", "--since", ""], "--since", "'' is empty"),
    (["jobs", "--since", "  "], "--since", "'  ' is empty"),
    (["prune", "--polls-older-than", HUGE_AGE], "--polls-older-than", "reaches back before"),
    (["prune", "--polls-older-than", "yesterday"], "--polls-older-than", "cannot read"),
    (["jobs", "--limit", "9" * 30], "--limit", "is not in the range"),
    (["demo", "--seconds", "inf"], "--seconds", "'inf' is not a finite number"),
    (["demo", "--seconds", "1e308"], "--seconds", "more than the maximum, 86400 s (1 day)"),
    (["demo", "--interval", "nan"], "--interval", "'nan' is not a finite number"),
    (["status", "--max-age", "nan"], "--max-age", "'nan' is not a finite number"),
    (["simulate", "--token", "t", "--skew", "nan"], "--skew", "'nan' is not a finite number"),
    (["simulate", "--token", "t", "--skew", "1e308"], "--skew", "more than the maximum"),
    (["simulate", "--token", "t", "--skew", "-2d"], "--skew", "less than the minimum"),
    (["simulate", "--token", "t", "--slow-seconds", "inf"], "--slow-seconds", "not a finite"),
    (["simulate", "--token", "t", "--server-errors", "nan"], "--server-errors", "not a finite"),
    (["simulate", "--token", "t", "--garbage", "1.5"], "--garbage", "more than the maximum, 1"),
    (["simulate", "--token", "t", "--retry-after", "9" * 20], "--retry-after", "not in the range"),
    (["simulate", "--token", "t", "--kind", "video:nan:90"], "--kind", "in 'video:nan:90'"),
    (["simulate", "--token", "t", "--kind", "video:2:inf"], "--kind", "not a finite number"),
    (["simulate", "--token", "t", "--kind", "video:2"], "--kind", "is not TYPE:PER_MIN:MEAN_S"),
    (
        ["simulate", "--token", "t", "--service", "midjourney"],
        "--service",
        "'midjourney' is not a service the simulator knows: pixverse, kling, minimax, runway",
    ),
    (
        ["simulate", "--token", "t", "--service", "kling", "--service", "kling"],
        "--service",
        "'kling' is given twice",
    ),
]


@pytest.mark.parametrize(("args", "option", "message"), USAGE_ERRORS)
def test_a_bad_option_value_is_one_line_naming_the_option(
    runner: CliRunner, db_arg: list[str], args: list[str], option: str, message: str
) -> None:
    line = error_line(invoke(runner, [*db_arg, *args]), 2)
    assert line.startswith(f"Error: Invalid value for '{option}': ")
    assert message in line


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://rec:s3cret@db.example/recorder", "unsupported database driver 'mysql'"),
        ("mysql+pymysql://db.example/recorder", "unsupported database driver 'mysql+pymysql'"),
        ("foo://db.example/x", "unsupported database driver 'foo'"),
        ("postgresql://db.example/x", "unsupported database driver 'postgresql'"),
        ("recorder.db", "not a database URL: recorder.db"),
        ("", "not a database URL"),
    ],
)
def test_an_unsupported_database_says_which_are_supported(
    runner: CliRunner, url: str, message: str
) -> None:
    line = error_line(invoke(runner, ["--db", url, "jobs"]), 2)
    assert line.startswith("Error: Invalid value for '--db': ")
    assert message in line
    assert "supported: sqlite:///PATH and postgresql+psycopg://USER@HOST/DB" in line
    assert "s3cret" not in line


def test_an_unsupported_database_in_the_environment_is_refused_too(runner: CliRunner) -> None:
    result = invoke(runner, ["jobs"], env={"RECORDER_DB": "mysql://db.example/recorder"})
    assert "unsupported database driver 'mysql'" in error_line(result, 2)


@pytest.mark.parametrize("url", ["mysql://db.example/x", "foo://x", "not a url"])
def test_db_create_refuses_an_unsupported_driver(url: str) -> None:
    with pytest.raises(db.DatabaseError, match="supported: sqlite:///PATH and postgresql"):
        db.create(url)


# --- runtime errors: the token, the window (exit 1) --------------------------------------------


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "token"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            f"{TOKEN}\nsecond-{TOKEN}\n",
            "holds 2 lines: it should hold the token alone",
        ),
        (f"\n{TOKEN}\n\nother\n\n", "holds 2 lines"),
        (f"{TOKEN}\x01\n", "contains a control character, which an HTTP header cannot carry"),
        (f"{TOKEN}\x7f", "contains a control character"),
        (f"{TOKEN}\u00e9\n", "contains a non-ASCII character"),
        (f"Bearer {TOKEN}\n", "contains whitespace"),
        (f"{TOKEN}\u00a0x\n", "contains whitespace"),
        ("\n \n", "is empty"),
        ("\ufeff\n", "is empty"),
    ],
)
def test_a_bad_token_file_is_refused_in_one_line_without_the_token(
    runner: CliRunner, db_arg: list[str], token_file: Path, content: str, message: str
) -> None:
    token_file.write_text(content, encoding="utf-8")
    args = [*db_arg, "poll", "--url", LOOPBACK, "--token-file", str(token_file)]
    line = error_line(invoke(runner, args), 1)
    assert line.startswith(f"Error: the token file {token_file} ") or line.startswith(
        f"Error: the token in the token file {token_file} "
    )
    assert message in line
    assert TOKEN not in line


def test_a_token_file_that_is_not_utf8_is_refused(
    runner: CliRunner, db_arg: list[str], token_file: Path
) -> None:
    token_file.write_bytes(b"tok-\xff\xfe")
    args = [*db_arg, "run", "--url", LOOPBACK, "--token-file", str(token_file)]
    line = error_line(invoke(runner, args), 1)
    assert line == f"Error: cannot read the token file {token_file}: UnicodeDecodeError"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (f"{TOKEN}\n{TOKEN}", "the USEAPI_TOKEN environment variable holds 2 lines"),
        (
            f"{TOKEN}\x1b[0m",
            "USEAPI_TOKEN environment variable contains a control",
        ),
    ],
)
def test_a_bad_token_in_the_environment_is_refused_without_the_token(
    runner: CliRunner, db_arg: list[str], value: str, message: str
) -> None:
    result = invoke(runner, [*db_arg, "poll", "--url", LOOPBACK], env={"USEAPI_TOKEN": value})
    line = error_line(result, 1)
    assert message in line
    assert TOKEN not in line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["stats", "--until", "0001-01-01T05:00Z"],
            "Error: --until 0001-01-01T05:00:00Z leaves no room for the default 24-hour window "
            "before it: give --since as well",
        ),
        (
            ["gaps", "--since", "2026-11-02", "--until", "2026-11-01"],
            "Error: the window is empty: --since 2026-11-02T00:00:00Z is not before "
            "--until 2026-11-01T00:00:00Z",
        ),
        (["stats", "--since", "1h", "--until", "2h"], "Error: the window is empty: --since "),
    ],
)
def test_a_window_that_cannot_be_is_one_line(
    runner: CliRunner, db_arg: list[str], args: list[str], message: str
) -> None:
    assert error_line(invoke(runner, [*db_arg, *args]), 1).startswith(message)


def test_the_real_program_prints_no_traceback(tmp_path: Path) -> None:
    """The same through a real process: exit codes and stderr as a shell sees them."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    for args, code in ((["run", "--interval", "nan"], 2), (["--db", "foo://x", "jobs"], 2)):
        done = subprocess.run(
            [sys.executable, "-m", "recorder", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == code, done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
        assert [line for line in done.stderr.splitlines() if line.startswith("Error:")]


# --- good paths: valid values still work --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("10", 10.0),
        ("0.5", 0.5),
        (".5", 0.5),
        ("5.", 5.0),
        (" 7 ", 7.0),
        ("1E1", 10.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1.5h", 5400.0),
        ("1d", 86400.0),
        ("2 M", 120.0),
        ("0.05", 0.05),
        ("86400", 86400.0),
    ],
)
def test_seconds_accepts_numbers_and_units(text: str, seconds: float) -> None:
    assert params.Seconds(0.05, params.DAY).convert(text, None, None) == seconds


def test_seconds_turns_negative_zero_into_zero() -> None:
    value = params.Seconds(-params.DAY, params.DAY).convert("-0", None, None)
    assert value == 0.0 and math.copysign(1.0, value) == 1.0


def test_seconds_accepts_its_own_default() -> None:
    assert params.Seconds(0.05, params.DAY).convert(10.0, None, None) == 10.0
    with pytest.raises(click.BadParameter, match="not a finite number"):
        params.Seconds(0, 1).convert(math.nan, None, None)


@given(st.text(max_size=12) | st.from_regex(r"[-+]?[0-9.eE]{1,8}[smhd]?", fullmatch=True))
@settings(max_examples=300)
def test_seconds_is_finite_and_in_range_or_refused(text: str) -> None:
    kind = params.Seconds(0.05, params.DAY)
    try:
        value = kind.convert(text, None, None)
    except click.BadParameter:
        return
    assert math.isfinite(value) and 0.05 <= value <= params.DAY


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0001-01-01", datetime(1, 1, 1, tzinfo=UTC)),
        ("0001-01-01T00:00:00-01:00", datetime(1, 1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("9999-12-31T23:00:00+01:00", datetime(9999, 12, 31, 22, tzinfo=UTC)),
        ("2026-11-01T09:00+01:00", datetime(2026, 11, 1, 8, tzinfo=UTC)),
    ],
)
def test_when_accepts_the_extreme_times(text: str, expected: datetime) -> None:
    assert params.WHEN.convert(text, None, None).resolve(datetime.now(UTC)) == expected


def test_when_ages_count_back_from_the_commands_now() -> None:
    when = params.WHEN.convert("1.5h", None, None)
    now = datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert when.resolve(now) == now - timedelta(hours=1.5)
    assert params.WHEN.convert("now", None, None).resolve(now) == now


def test_job_kind_converts() -> None:
    assert params.JOB_KIND.convert(" video:2:90s", None, None) == JobKind("video", 2.0, 90.0)
    assert params.JOB_KIND.convert("image:0.5:2m", None, None) == JobKind("image", 0.5, 120.0)


@pytest.mark.parametrize(
    "args",
    [
        ["jobs", "--since", "0001-01-01", "--until", "9999-12-31T23:59:59Z", "--format", "json"],
        ["jobs", "--since", " 24h ", "--limit", "1000000000", "--format", "json"],
        ["gaps", "--since", "0001-01-01", "--until", "0001-01-02", "--format", "json"],
        ["gaps", "--since", "7d", "--format", "json"],
        ["stats", "--since", "2w", "--until", "now", "--format", "json"],
        ["prune", "--polls-older-than", "30d"],
        ["prune", "--polls-older-than", "2026-01-01T00:00:00+01:00"],
    ],
)
def test_valid_windows_and_cutoffs_still_work(
    runner: CliRunner, db_arg: list[str], args: list[str]
) -> None:
    result = invoke(runner, [*db_arg, *args])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args",
    [
        ["run", "--interval", "30s", "--timeout", "2m"],
        ["run", "--interval", "0.05", "--timeout", "3600"],
        ["poll", "--timeout", "0.1"],
    ],
)
def test_valid_intervals_and_timeouts_get_past_the_options(
    runner: CliRunner, db_arg: list[str], args: list[str]
) -> None:
    # Without a token the command stops right after its options were accepted.
    line = error_line(invoke(runner, [*db_arg, *args, "--url", LOOPBACK]), 1)
    assert line == "Error: no API token: set USEAPI_TOKEN or pass --token-file PATH"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    config = SimConfig(seed=4, token=TOKEN, kinds=(JobKind("video", 30, 60),), initial_jobs=2)
    with Simulator(config) as simulator:
        yield simulator


@pytest.mark.parametrize(
    "content",
    [f"\ufeff{TOKEN}\n", f"\ufeff{TOKEN}", f"{TOKEN}\r\n", f"\n  {TOKEN}  \n\n"],
)
def test_a_token_file_with_a_bom_or_blank_lines_is_accepted(
    runner: CliRunner, db_arg: list[str], token_file: Path, sim: Simulator, content: str
) -> None:
    token_file.write_text(content, encoding="utf-8")
    args = [*db_arg, "poll", "--url", sim.url, "--token-file", str(token_file)]
    result = invoke(runner, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("ok: 2 job(s) listed")
    assert TOKEN not in result.output


def test_load_token_strips_the_bom(token_file: Path) -> None:
    token_file.write_bytes(b"\xef\xbb\xbf" + TOKEN.encode() + b"\r\n")
    assert load_token(token_file, environ={}).reveal() == TOKEN
    assert load_token(None, environ={"USEAPI_TOKEN": f"\ufeff{TOKEN}\n"}).reveal() == TOKEN


def test_load_token_errors_never_hold_the_token(token_file: Path) -> None:
    token_file.write_text(f"{TOKEN} {TOKEN}\n")
    with pytest.raises(ConfigError) as caught:
        load_token(token_file, environ={})
    assert TOKEN not in str(caught.value)
