"""The HTML report in a real browser (headless Chromium): it renders without a console error
or a request, shows something (light, dark, narrow, printed), and carries stats' figures."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image

from recorder.cli import cli
from tests.browser import Rendered, blank, render
from tests.test_html_report import WINDOW, run, window_args

OVERFLOW = "document.documentElement.scrollWidth - window.innerWidth"
CHARTS = "document.querySelectorAll('svg[role=img] > title').length"


def report(url: str, path: Path, *args: str) -> Path:
    result = CliRunner().invoke(cli, ["--db", url, "report", "--html", str(path), *args])
    assert result.exit_code == 0, result.output
    return path


def assert_clean(rendered: Rendered, page: Path) -> None:
    assert rendered.console == []
    assert rendered.requests == [page.resolve().as_uri()] and rendered.blocked == []
    assert not blank(rendered.screenshot)


@pytest.mark.parametrize("by", [None, "type"])
def test_the_report_renders_in_chromium_with_the_stats_figures(
    history: tuple[str, list[Any], list[Any]], tmp_path: Path, by: str | None
) -> None:
    url = history[0]
    grouping = ["--by", by] if by else []
    page = report(url, tmp_path / "r.html", *window_args(*WINDOW), *grouping)
    rendered = render(page, full_page=True, expressions=(OVERFLOW, CHARTS))
    assert_clean(rendered, page)
    printed = run(url, "stats", *window_args(*WINDOW), *grouping, "--format", "json")
    assert json.loads(rendered.text["#stats"]) == json.loads(printed)
    groups = len(json.loads(printed)["groups"])
    assert rendered.values[CHARTS] == 3 * groups + 1  # three per group, and the longest jobs
    assert rendered.values[OVERFLOW] <= 0
    assert rendered.title.startswith("Job history ")


def test_dark_narrow_and_printed(history: tuple[str, list[Any], list[Any]], tmp_path: Path) -> None:
    page = report(history[0], tmp_path / "r.html", *window_args(*WINDOW), "--by", "type")
    light = render(page)
    dark = render(page, dark=True)
    assert_clean(dark, page)
    corner = (5, 5)
    light_bg = Image.open(io.BytesIO(light.screenshot)).convert("RGB").getpixel(corner)
    dark_bg = Image.open(io.BytesIO(dark.screenshot)).convert("RGB").getpixel(corner)
    assert sum(light_bg) > 600 and sum(dark_bg) < 150  # a light page, and a dark one
    narrow = render(page, width=360, height=800, expressions=(OVERFLOW,))
    assert_clean(narrow, page)
    assert narrow.values[OVERFLOW] <= 0  # wide tables scroll inside the page, not the page
    printed = render(page, media="print", full_page=True)
    assert_clean(printed, page)


def test_an_empty_window_renders_as_a_page_that_says_so(
    history: tuple[str, list[Any], list[Any]], tmp_path: Path
) -> None:
    empty = window_args(WINDOW[0] - 400 * 86400, WINDOW[0] - 399 * 86400)
    page = report(history[0], tmp_path / "e.html", *empty)
    rendered = render(page, selectors=("#stats", "#nothing h2"))
    assert_clean(rendered, page)
    assert rendered.text["#nothing h2"] == "Nothing in this window"
