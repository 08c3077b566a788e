"""Text from the API reaches people escaped (tables, the log) and scripts exact (JSON, CSV)."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import sys
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from recorder import db, logs, reports
from recorder.cli import cli
from recorder.daemon import Daemon
from recorder.output import render, safe_text
from recorder.parse import normalize_items
from recorder.pipeline import Pipeline
from recorder.simulator import ManualClock
from recorder.snapshot import Failure, Outcome, PollResult
from recorder.store import Store

FORBIDDEN = {"Cc", "Cf", "Cs", "Zl", "Zp"}

# (raw, as shown): what an API could put in an id, a type or an error message.
HOSTILE = [
    pytest.param(
        "job\n2026-01-01T00:00:00Z INFO    forged",
        "job\\n2026-01-01T00:00:00Z INFO    forged",
        id="LF",
    ),
    pytest.param("job\rover", "job\\rover", id="CR"),
    pytest.param("a\tb", "a\\tb", id="TAB"),
    pytest.param("\x1b[2Jjob", "\\x1b[2Jjob", id="ESC-clear"),
    pytest.param("\x1b]0;pwned\x07job", "\\x1b]0;pwned\\x07job", id="OSC-title-BEL"),
    pytest.param("job\x07", "job\\x07", id="BEL"),
    pytest.param("job\x00", "job\\x00", id="NUL"),
    pytest.param("job\x7f", "job\\x7f", id="DEL"),
    pytest.param("\x9b31mjob", "\\x9b31mjob", id="C1-CSI"),
    pytest.param("job\x85next", "job\\x85next", id="C1-NEL"),
    pytest.param("abc\u202egpj.exe", "abc\\u202egpj.exe", id="RLO"),
    pytest.param("\u2066job\u2069", "\\u2066job\\u2069", id="LRI-PDI"),
    pytest.param("jo\u200db", "jo\\u200db", id="ZWJ"),
    pytest.param("jo\u200bb", "jo\\u200bb", id="ZWSP"),
    pytest.param("\ufeffjob", "\\ufeffjob", id="BOM"),
    pytest.param("job\u2028next\u2029", "job\\u2028next\\u2029", id="LS-PS"),
    pytest.param("job\U000e0041", "job\\U000e0041", id="TAG"),
    pytest.param("job\ud800", "job\\ud800", id="lone-surrogate"),
]

UNTOUCHED = [
    "user:12345-pixverse:alice@example.com-video:375619124",
    "Zoë Çağdaş Ñuñez",
    "日本語のジョブ",
    "видео",
    "🎬 video 👍🏽",
    "no\u00a0break",
    "e\u0301",  # a combining accent
    "",
    "C:\\data\\jobs",  # a backslash before anything that is not an escape stays single
    "a\\b",
    "trailing\\",
]


def forbidden_in(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) in FORBIDDEN]


_ESCAPE = re.compile(r"\\(?:([\\tnr])|x([0-9a-f]{2})|u([0-9a-f]{4})|U([0-9a-f]{8}))")
_NAMED = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def unescape(shown: str) -> str:
    """Read safe_text's escapes back; any other backslash is itself."""

    def one(match: re.Match[str]) -> str:
        named, *codes = match.groups()
        if named:
            return _NAMED[named]
        return chr(int(next(c for c in codes if c), 16))

    return _ESCAPE.sub(one, shown)


# --- safe_text ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
def test_control_and_format_characters_are_shown_as_escapes(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown
    assert unescape(shown) == raw


@pytest.mark.parametrize("text", UNTOUCHED)
def test_ordinary_text_is_untouched(text: str) -> None:
    assert safe_text(text) == text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\\nb", "a\\\\nb"),  # a literal backslash-n, not a line break
        ("C:\\temp", "C:\\\\temp"),
        ("\\x1b", "\\\\x1b"),
        ("\\u202e", "\\\\u202e"),
        ("\\\\", "\\\\\\"),  # the first precedes a backslash, the last precedes nothing
        ("\\\n", "\\\\\\n"),  # a backslash before an escaped line break
    ],
)
def test_a_backslash_is_doubled_only_where_it_would_read_as_an_escape(raw: str, shown: str) -> None:
    assert safe_text(raw) == shown
    assert unescape(shown) == raw


def test_a_literal_escape_and_the_character_look_different() -> None:
    assert safe_text("a\\nb") != safe_text("a\nb")
    assert safe_text("\\x1b") != safe_text("\x1b")


# Any character at all (surrogates included), with the interesting ones made common.
_ANY_CHAR = st.characters(codec=None, exclude_categories=()) | st.sampled_from(
    list("\\tnrxuU01bf\n\r\t\x00\x1b\x07\x7f\x9b\u202e\u2066\u200d\u2028\ufeff\ud800")
)


@given(st.text(_ANY_CHAR))
def test_safe_text_never_shows_a_control_or_format_character(text: str) -> None:
    assert forbidden_in(safe_text(text)) == []


@given(st.text(_ANY_CHAR))
def test_safe_text_reads_back_exactly_so_different_texts_look_different(text: str) -> None:
    assert unescape(safe_text(text)) == text


@given(
    st.text(st.characters(codec=None, exclude_categories=tuple(FORBIDDEN), exclude_characters="\\"))
)
def test_safe_text_leaves_text_without_controls_or_backslashes_alone(text: str) -> None:
    assert safe_text(text) == text


# --- the table, and JSON and CSV ----------------------------------------------------------------


def table(rows: list[dict[str, object]], columns: tuple[str, ...] | None = None) -> str:
    out = io.StringIO()
    render(rows, "table", out, columns)
    return out.getvalue()


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
def test_the_table_shows_hostile_text_escaped_on_one_line(raw: str, shown: str) -> None:
    job = {
        "id": raw,
        "type": raw,
        "account": raw,
        "status": "finished",
        "started_at": None,
        "duration_s": 1.0,
        "duration_min_s": 0.5,
        "duration_max_s": 1.5,
        "closed_across_gap": False,
        "target_name": raw,
    }
    text = table([reports.table_row(job)], reports.TABLE_COLUMNS)
    lines = text.split("\n")
    assert len(lines) == 4 and lines[-1] == ""  # header, rule, one row
    assert forbidden_in(text.replace("\n", "")) == []
    assert lines[2].startswith(f"{shown}  ") and lines[2].count(shown) >= 3  # id, type, account


def test_the_table_escapes_column_names() -> None:  # `recorder sql` chooses its own
    text = table([{"a\x1b[2Jb": 1}])
    assert text.splitlines()[0] == "a\\x1b[2Jb"


@given(st.text(_ANY_CHAR))
def test_any_text_makes_one_table_row(text: str) -> None:
    out = table([{"id": text, "n": 1}])
    assert out.count("\n") == 3
    assert forbidden_in(out.replace("\n", "")) == []


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_json_keeps_the_exact_value(fmt: str, raw: str, shown: str) -> None:
    out = io.StringIO()
    render([{"id": raw}], fmt, out)
    value = json.loads(out.getvalue())
    assert (value[0] if fmt == "json" else value)["id"] == raw
    assert forbidden_in(out.getvalue().replace("\n", "")) == []  # JSON escapes them itself


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
def test_csv_keeps_the_exact_value(raw: str, shown: str) -> None:
    out = io.StringIO()
    render([{"id": raw, "n": 1}], "csv", out)
    assert out.getvalue().startswith("id,n\n") and out.getvalue().endswith(",1\n")
    assert list(csv.DictReader(io.StringIO(out.getvalue(), newline=""))) == [{"id": raw, "n": "1"}]


# --- the log ------------------------------------------------------------------------------------


def formatter() -> logs.SafeFormatter:
    return logs.SafeFormatter(logs.FORMAT, logs.DATE_FORMAT)


@pytest.mark.parametrize(("raw", "shown"), HOSTILE)
def test_a_log_line_with_hostile_args_is_one_line_without_controls(raw: str, shown: str) -> None:
    record = logging.LogRecord(
        "recorder", logging.INFO, __file__, 1, "appeared   %s type=%s", (raw, raw), None
    )
    line = formatter().format(record)
    assert "\n" not in line
    assert forbidden_in(line) == []
    assert line.endswith(f"INFO    appeared   {shown} type={shown}")


def test_a_hostile_message_itself_is_escaped() -> None:
    record = logging.LogRecord("recorder", logging.WARNING, __file__, 1, "x\n\x1b[2J", None, None)
    assert formatter().format(record).endswith("WARNING x\\n\\x1b[2J")


def test_a_traceback_keeps_its_lines_and_loses_its_controls() -> None:
    try:
        raise ValueError("bad id \x1b]0;pwned\x07 \u202eevil")
    except ValueError:
        record = logging.LogRecord(
            "recorder", logging.ERROR, __file__, 1, "failed %s", ("\x1b[2J",), sys.exc_info()
        )
    record.stack_info = "Stack (most recent call last):\n  frame \x1b[2J"
    text = formatter().format(record)
    lines = text.split("\n")
    assert lines[0].endswith("ERROR   failed \\x1b[2J")
    assert lines[1] == "Traceback (most recent call last):"
    assert "ValueError: bad id \\x1b]0;pwned\\x07 \\u202eevil" in lines
    assert lines[-1] == "  frame \\x1b[2J"
    assert forbidden_in(text.replace("\n", "")) == []


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
@pytest.mark.parametrize(
    ("verbosity", "level"), [(-1, logging.WARNING), (0, logging.INFO), (2, logging.DEBUG)]
)
def test_setup_logs_safe_utc_lines(verbosity: int, level: int) -> None:
    stream = io.StringIO()
    logs.setup(verbosity, stream)
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler.formatter, logs.SafeFormatter)
    assert handler.formatter.converter is time.gmtime
    assert logging.getLogger("recorder").level == level
    logging.getLogger("recorder").warning("vanished   %s", "x\n\x1b[2J")
    assert re.fullmatch(r"\S+Z WARNING vanished   x\\n\\x1b\[2J\n", stream.getvalue())


# --- end to end: an API that sends hostile ids ---------------------------------------------------

T0 = 1_750_000_000.0  # 2025-06-15T15:06:40Z
URL = "http://127.0.0.1:9/v2/pixverse/scheduler/"
EVIL_ID = (
    "user:1-pixverse:a@b.c-video:1\n2025-06-15T15:07:00Z INFO    forged\x1b[2J\x1b]0;pwned\x07"
)
EVIL_TYPE = "vid\u202eoe\u2066"
CALM_ID = "user:1-pixverse:a@b.c-image:2"


def item(api_id: str, type_: str, elapsed: str) -> dict[str, str]:
    return {"id": api_id, "type": type_, "started": "2025-06-15T15:06:30Z", "elapsed": elapsed}


@pytest.fixture
def hostile_history(tmp_path: Path, restored_logging: None) -> tuple[str, str]:
    """A database recorded from an API that sent hostile text, and the daemon's log of it."""
    url = f"sqlite:///{tmp_path / 'r.db'}"
    clock = ManualClock(T0)
    answers = [
        [item(EVIL_ID, EVIL_TYPE, "00:10"), item(CALM_ID, "image", "00:10")],
        [item(CALM_ID, "image", "00:20")],  # the hostile job vanishes
    ]

    def poll() -> PollResult:
        clock.advance(10)
        if not answers:
            return PollResult(clock.t, clock.t, 503, Failure(Outcome.SERVER, "HTTP 503\x1b[2J"))
        return PollResult(clock.t, clock.t + 0.05, 200, normalize_items(answers.pop(0)))

    stream = io.StringIO()
    logs.setup(0, stream)
    engine = db.open_database(url)
    try:
        daemon = Daemon(Pipeline(Store(engine), URL, poll, gap_s=30), 10.0, monotonic=clock)
        for _ in range(3):
            daemon.tick()
            clock.advance(10)
    finally:
        engine.dispose()
    return url, stream.getvalue()


def test_the_daemon_log_shows_hostile_ids_escaped(hostile_history: tuple[str, str]) -> None:
    _, log_text = hostile_history
    lines = log_text.splitlines()
    assert forbidden_in(log_text.replace("\n", "")) == []
    assert all(re.match(r"\S+Z (INFO |WARNING) ", line) for line in lines)
    assert not any(re.match(r"\S+ INFO +forged", line) for line in lines)
    shown = safe_text(EVIL_ID)
    assert any(f"appeared   {shown} type={safe_text(EVIL_TYPE)}" in line for line in lines)
    assert any(f"vanished   {shown} after" in line for line in lines)


def run(url: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--db", url, *args], catch_exceptions=False)
    return result.stdout


def test_jobs_table_shows_hostile_ids_escaped(hostile_history: tuple[str, str]) -> None:
    url, _ = hostile_history
    out = run(url, "jobs", "--format", "table")
    assert out.count("\n") == 4  # header, rule, two jobs
    assert forbidden_in(out.replace("\n", "")) == []
    assert safe_text(EVIL_ID) in out and safe_text(EVIL_TYPE) in out


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv"])
def test_jobs_for_scripts_keep_hostile_ids_exact(
    hostile_history: tuple[str, str], fmt: str
) -> None:
    url, _ = hostile_history
    out = run(url, "jobs", "--format", fmt, "--order", "id")
    if fmt == "json":
        rows = json.loads(out)
    elif fmt == "jsonl":
        rows = [json.loads(line) for line in out.splitlines()]
    else:
        rows = list(csv.DictReader(io.StringIO(out, newline="")))
    assert {(r["id"], r["type"]) for r in rows} == {(EVIL_ID, EVIL_TYPE), (CALM_ID, "image")}


def test_status_table_shows_a_hostile_error_escaped(hostile_history: tuple[str, str]) -> None:
    url, _ = hostile_history
    out = run(url, "status", "--format", "table")
    assert out.count("\n") == 3
    assert forbidden_in(out.replace("\n", "")) == []
    assert "HTTP 503\\x1b[2J" in out


def test_stats_table_shows_a_hostile_type_escaped(hostile_history: tuple[str, str]) -> None:
    url, _ = hostile_history
    window = ["--since", "2025-06-15T15:00:00Z", "--until", "2025-06-15T16:00:00Z"]
    out = run(url, "stats", *window, "--by", "type", "--format", "table")
    assert forbidden_in(out.replace("\n", "")) == []
    assert safe_text(EVIL_TYPE) in out
