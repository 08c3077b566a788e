"""`--log-format json`: the text log's events, one JSON object per line, as safe as the text.

Nothing here asserts on time: the daemon runs wait for logged events, with a deadline that only
bounds a hang.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from recorder import db, logs
from recorder.cli import cli
from recorder.models import Job
from recorder.simulator import JobKind, SimConfig, Simulator
from tests.waiting import running, stop, wait_for

TOKEN = "tok-logfmt-5be21d"
INTERVAL = 0.25
NAME = "pix-main"
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
TEXT_LINE = re.compile(r"(?P<time>\S+Z) (?P<level>[A-Z]+) +(?P<message>.*)")
EVENT = re.compile(r"(?:\[(?P<target>[^\]]+)\] )?(?P<kind>appeared|vanished)   (?P<id>\S+)")


def record(message: str, *args: object, **attrs: Any) -> logging.LogRecord:
    entry = logging.LogRecord("recorder", logging.INFO, __file__, 1, message, args, None)
    entry.__dict__.update(attrs)
    return entry


def as_json(entry: logging.LogRecord) -> dict[str, Any]:
    line = logs.JsonFormatter().format(entry)
    assert "\n" not in line and line.isascii()
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def as_text(entry: logging.LogRecord) -> str:
    """The text format's message: what its line shows after the time and the level."""
    line = logs.SafeFormatter(logs.FORMAT, logs.DATE_FORMAT).format(entry)
    match = TEXT_LINE.fullmatch(line)
    assert match is not None, line
    return match["message"]


@pytest.mark.parametrize(
    "raw",
    ["user:1-video:2", "a\n2025-06-15T15:07:00Z INFO    forged\x1b[2J", "vid\u202eoe", "C:\\x"],
)
def test_the_message_is_the_text_lines_message_escaped_alike(raw: str) -> None:
    entry = record("[%s] appeared   %s type=video", "pix", raw, target="pix")
    parsed = as_json(entry)
    assert parsed["message"] == as_text(entry)
    assert parsed["target"] == "pix"
    assert parsed["level"] == "INFO"
    assert TIME.fullmatch(parsed["time"])


def test_a_line_about_no_target_has_no_target_key() -> None:
    assert set(as_json(record("stopped"))) == {"time", "level", "message"}


def test_the_time_is_utc_with_z() -> None:
    assert logs.utc_time(1_750_000_000.25) == "2025-06-15T15:06:40.250Z"


def test_a_traceback_is_one_escaped_field() -> None:
    try:
        raise ValueError("bad id \x1b]0;pwned\x07")
    except ValueError:
        entry = logging.LogRecord(
            "recorder", logging.ERROR, __file__, 1, "failed", None, sys.exc_info()
        )
    parsed = as_json(entry)
    assert parsed["message"] == "failed"
    assert parsed["exception"].startswith("Traceback (most recent call last):\n")
    assert parsed["exception"].endswith("ValueError: bad id \\x1b]0;pwned\\x07")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put the logging configuration back as it was after logs.setup changed it."""
    root, ours = logging.getLogger(), logging.getLogger("recorder")
    handlers, levels = root.handlers[:], (root.level, ours.level)
    yield
    root.handlers[:] = handlers
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


@pytest.mark.usefixtures("restored_logging")
def test_setup_json_logs_one_object_per_line() -> None:
    stream = io.StringIO()
    logs.setup(0, stream, fmt="json")
    logging.getLogger("recorder").warning("[%s] x\n", "t", extra=logs.about("t"))
    (line,) = stream.getvalue().splitlines()
    assert json.loads(line) | {"time": "-"} == {
        "time": "-",
        "level": "WARNING",
        "message": "[t] x\\n",
        "target": "t",
    }


def test_an_unknown_log_format_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["--log-format", "xml", "db", "path"])
    assert result.exit_code == 2
    assert "--log-format" in result.output


# --- a daemon run in each format ------------------------------------------------------------


def start(sim: Simulator, db_url: str, fmt: str, log: Path) -> subprocess.Popen[bytes]:
    """`recorder run --config` on one target, NAME, of `sim`, logging in `fmt` to `log`."""
    config = log.with_suffix(".toml")
    config.write_text(
        f'[targets.{NAME}]\nservice = "pixverse"\nurl = "{sim.url}"\n'
        f'token_env = "USEAPI_TOKEN"\ninterval = {INTERVAL}\ncapacity_interval = 1\n'
    )
    command = [sys.executable, "-m", "recorder", "--log-format", fmt, "--db", db_url, "run"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [*command, "--config", str(config)],
            env=os.environ | {"USEAPI_TOKEN": TOKEN},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def parse_text(text: str) -> list[dict[str, Any]]:
    """The text log's lines as the JSON log's objects (target from the [name] prefix)."""
    entries = []
    for line in text.splitlines():
        match = TEXT_LINE.fullmatch(line)
        assert match is not None, line
        entry = {"time": match["time"], "level": match["level"], "message": match["message"]}
        about = re.match(r"\[([^\]]+)\] ", match["message"])
        if about is not None:
            entry["target"] = about[1]
        entries.append(entry)
    return entries


def parse_json(text: str) -> list[dict[str, Any]]:
    """The JSON log's lines, each checked to be an object with time, level and message."""
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        assert {"time", "level", "message"} <= set(entry), line
        assert TIME.fullmatch(entry["time"]), line
        entries.append(entry)
    return entries


def events(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The job ids that appeared and vanished; every line about the target names it."""
    found: dict[str, list[str]] = {"appeared": [], "vanished": []}
    for entry in entries:
        about_target = entry["message"].startswith(f"[{NAME}] ")
        assert (entry.get("target") == NAME) == about_target, entry
        assert about_target or "target" not in entry, entry
        match = EVENT.match(entry["message"])
        if match is not None:
            assert match["target"] == NAME and entry["level"] == "INFO", entry
            found[match["kind"]].append(match["id"])
    return found


def kinds(entries: list[dict[str, Any]]) -> set[str]:
    """What the lines say (each one's first word after its [target]): the log's shape."""
    return {re.sub(r"^\[[^\]]+\] ", "", entry["message"]).split()[0] for entry in entries}


def history(db_url: str) -> tuple[set[str], set[str]]:
    """The recorded job ids, and those of the finished jobs."""
    engine = db.create(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Job.api_id, Job.status)).all()
    finally:
        engine.dispose()
    return {row.api_id for row in rows}, {row.api_id for row in rows if row.status == "finished"}


def test_a_json_run_logs_the_text_runs_events(tmp_path: Path) -> None:
    world = SimConfig(
        seed=41,
        token=TOKEN,
        kinds=(JobKind("video", 40.0, 3.0), JobKind("image", 60.0, 1.5)),
        initial_jobs=2,
    )
    parse = {"text": parse_text, "json": parse_json}
    runs: dict[str, Any] = {}
    with ExitStack() as stack:
        for fmt in parse:
            sim = stack.enter_context(Simulator(world))
            db_url, log = f"sqlite:///{tmp_path / fmt}.db", tmp_path / f"{fmt}.log"
            process = start(sim, db_url, fmt, log)
            stack.callback(process.wait)
            stack.callback(process.kill)  # only if a wait below failed: stop() ends it first
            runs[fmt] = (db_url, log, process)
        for fmt, (_, log, process) in runs.items():

            def three_vanished(process: Any = process, log: Path = log, fmt: str = fmt) -> bool:
                running(process, log)
                return log.read_text().count("vanished   ") >= 3

            wait_for(three_vanished, message=f"three jobs to vanish in the {fmt} log")
        for _, log, process in runs.values():
            assert stop(process, log) == 0, log.read_text()
    shapes = {}
    for fmt, (db_url, log, _) in runs.items():
        text = log.read_text()
        assert TOKEN not in text
        assert "Traceback" not in text
        entries = parse[fmt](text)
        found = events(entries)
        recorded, finished = history(db_url)
        # One line per job that appeared, one per job that ended: the database's history.
        assert sorted(found["appeared"]) == sorted(recorded)
        assert sorted(found["vanished"]) == sorted(finished)
        assert len(finished) >= 3
        shapes[fmt] = kinds(entries)
    assert shapes["json"] == shapes["text"]
    assert {"recording", "reading", "appeared", "vanished", "stopping", "stopped"} <= shapes["json"]
