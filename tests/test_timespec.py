"""recorder.timespec: every mistake, out-of-range times included, is a TimeSpecError."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.timespec import LATEST, TimeSpecError, When, parse, parse_when, window

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", NOW),
        ("30m", NOW - timedelta(minutes=30)),
        ("1.5h", NOW - timedelta(hours=1.5)),
        ("7 d", NOW - timedelta(days=7)),
        ("2W", NOW - timedelta(weeks=2)),
        ("2026-10-01", datetime(2026, 10, 1, tzinfo=UTC)),
        ("2026-10-01T08:00Z", datetime(2026, 10, 1, 8, tzinfo=UTC)),
        ("2026-10-01T08:00+02:00", datetime(2026, 10, 1, 6, tzinfo=UTC)),
        ("0001-01-01T00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
        ("9999-12-31T23:59:59", LATEST),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected
    assert parse_when(parse(text), NOW) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("99999999999d", "'99999999999d' reaches back before 0001-01-01"),
        ("9" * 400 + "w", "reaches back before 0001-01-01"),
        ("800000d", "reaches back before 0001-01-01"),
        ("0001-01-01T00:00:00+01:00", "in UTC it falls before 0001-01-01"),
        ("9999-12-31T23:00:00-01:00", "in UTC it falls after 9999-12-31T23:59:59Z"),
        ("9999-12-31T23:59:59.5", "in UTC it falls after 9999-12-31T23:59:59Z"),
        ("", "'' is empty"),
        ("1e3d", "cannot read '1e3d' as a time"),
        ("tomorrow", "cannot read 'tomorrow' as a time"),
    ],
)
def test_bad_times_are_time_spec_errors(text: str, message: str) -> None:
    with pytest.raises(TimeSpecError, match=message.replace(".", r"\.").replace("+", r"\+")):
        parse_when(text, NOW)


def test_an_age_is_checked_against_now_when_resolved() -> None:
    when = parse("800000d")  # fits a timedelta
    assert when == When("800000d", ago=timedelta(days=800000))
    with pytest.raises(TimeSpecError, match="reaches back before 0001-01-01"):
        when.resolve(NOW)


def test_window_defaults_to_the_last_day() -> None:
    assert window(None, None, NOW) == (NOW - timedelta(hours=24), NOW)
    assert window(parse("2h"), parse("1h"), NOW) == (
        NOW - timedelta(hours=2),
        NOW - timedelta(hours=1),
    )


def test_window_refuses_an_empty_window() -> None:
    with pytest.raises(TimeSpecError, match="the window is empty: --since 2026-11-01T12:00:00Z"):
        window("now", "1h", NOW)


def test_window_near_the_year_1_needs_a_since() -> None:
    with pytest.raises(TimeSpecError, match="--until 0001-01-01T05:00:00Z leaves no room"):
        window(None, "0001-01-01T05:00Z", NOW)
    start, _ = window("0001-01-01", "0001-01-01T05:00Z", NOW)
    assert start == datetime(1, 1, 1, tzinfo=UTC)


@given(st.text(max_size=30) | st.from_regex(r"[0-9.]{1,25} ?[smhdw]", fullmatch=True))
@settings(max_examples=300)
def test_parse_when_gives_a_time_or_a_time_spec_error(text: str) -> None:
    try:
        moment = parse_when(text, NOW)
    except TimeSpecError:
        return
    assert moment.tzinfo is not None and moment <= LATEST
