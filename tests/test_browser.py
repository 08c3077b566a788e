"""tests/browser.py itself: what render() reports about tiny pages, and blank().

These never skip: without Chromium they fail, saying how to install it (.ci/run does).
"""

from __future__ import annotations

import io
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests import browser
from tests.browser import BrowserError, blank, render

EXTERNAL = "http://203.0.113.1/x.png"  # TEST-NET-3: never routed


def page(tmp_path: Path, body: str, head: str = "", name: str = "page.html") -> Path:
    path = tmp_path / name
    path.write_text(
        "<!doctype html>\n"
        f'<html><head><meta charset="utf-8"><title>Tiny page</title>{head}</head>\n'
        f"<body>{body}</body></html>\n",
        encoding="utf-8",
    )
    return path


def pixel(png: bytes, x: int, y: int) -> tuple[int, ...]:
    with Image.open(io.BytesIO(png)) as image:
        value = image.convert("RGB").getpixel((x, y))
    assert isinstance(value, tuple)
    return value


@pytest.fixture
def own_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A temp folder of this test's own for render()'s browser profile, to see it removed.

    Not under tmp_path: the profile's path must stay short (see _browser in browser.py).
    """
    folder = Path(tempfile.mkdtemp(prefix="rb-"))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    yield folder
    shutil.rmtree(folder)


def test_plain_page(tmp_path: Path, own_tmp: Path) -> None:
    path = page(tmp_path, '<h1>Stats</h1><p id="stats">42 jobs, 3 overdue</p>')

    shown = render(path, selectors=("#stats", "h1", "#missing"))

    assert shown.console == []
    assert shown.requests == [path.resolve().as_uri()]
    assert shown.blocked == []
    assert shown.text == {"#stats": "42 jobs, 3 overdue", "h1": "Stats"}
    assert shown.title == "Tiny page"
    assert shown.screenshot.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(shown.screenshot)) as image:
        assert image.size == (1280, 900)
    assert not blank(shown.screenshot)
    assert list(own_tmp.iterdir()) == []  # the browser's profile is gone


def test_viewport_size(tmp_path: Path) -> None:
    path = page(tmp_path, '<p id="stats">x</p>')

    shown = render(path, width=400, height=300)

    with Image.open(io.BytesIO(shown.screenshot)) as image:
        assert image.size == (400, 300)


def test_console_error_is_captured(tmp_path: Path) -> None:
    path = page(
        tmp_path,
        '<p id="stats">ok</p><script>console.log("fine"); console.error("x");'
        ' console.warn("careful", 2)</script>',
    )

    shown = render(path)

    uri = path.resolve().as_uri()
    assert shown.console == [f"error: x ({uri}:3)", f"warning: careful 2 ({uri}:3)"]
    assert shown.text == {"#stats": "ok"}


def test_uncaught_exception_is_captured(tmp_path: Path) -> None:
    path = page(tmp_path, "<script>\nnoSuchFunction();\n</script>")

    shown = render(path)

    assert len(shown.console) == 1
    assert shown.console[0].startswith("error: ReferenceError: noSuchFunction is not defined")
    assert shown.console[0].endswith(f"({path.resolve().as_uri()}:4)")


def test_csp_blocks_an_external_image(tmp_path: Path) -> None:
    path = page(
        tmp_path,
        f'<p id="stats">ok</p><img src="{EXTERNAL}" alt="">',
        head='<meta http-equiv="Content-Security-Policy" content="default-src \'none\'">',
    )

    shown = render(path)

    # The violation shows in the console...
    assert len(shown.console) == 1, shown.console
    assert shown.console[0].startswith(f"error: Loading the image '{EXTERNAL}' violates")
    assert "Content Security Policy" in shown.console[0]
    # ...and Chromium reports the request (requestWillBeSent comes before the CSP check), but
    # as blocked: it never went out.
    assert shown.requests == [path.resolve().as_uri(), EXTERNAL]
    assert shown.blocked == [EXTERNAL]


def test_dark_mode(tmp_path: Path) -> None:
    path = page(
        tmp_path,
        '<p id="stats">ok</p>',
        head="<style>body { background: #ffffff; }"
        " @media (prefers-color-scheme: dark) { body { background: #102030; } }</style>",
    )

    light = render(path)
    dark = render(path, dark=True)

    assert pixel(light.screenshot, 5, 5) == (255, 255, 255)
    assert pixel(dark.screenshot, 5, 5) == (0x10, 0x20, 0x30)


def test_print_media(tmp_path: Path) -> None:
    path = page(
        tmp_path,
        '<p id="stats">ok</p>',
        head="<style>body { background: #ffffff; }"
        " @media print { body { background: #00ff00; } }</style>",
    )

    screen = render(path)
    printed = render(path, media="print")

    assert pixel(screen.screenshot, 5, 5) == (255, 255, 255)
    assert pixel(printed.screenshot, 5, 5) == (0, 255, 0)


def test_full_page(tmp_path: Path) -> None:
    path = page(tmp_path, '<div style="height: 2000px" id="stats">tall</div>')

    shown = render(path, width=400, height=300, full_page=True)

    with Image.open(io.BytesIO(shown.screenshot)) as image:
        assert image.width == 400
        assert image.height >= 2000


def test_blank_page(tmp_path: Path) -> None:
    shown = render(page(tmp_path, ""))

    assert blank(shown.screenshot)
    assert shown.text == {}
    assert shown.console == []


def test_blank_on_images() -> None:
    def png(image: Image.Image) -> bytes:
        out = io.BytesIO()
        image.save(out, format="PNG")
        return out.getvalue()

    grey = Image.new("RGB", (50, 40), (200, 200, 200))
    assert blank(png(grey))
    grey.putpixel((3, 3), (203, 198, 200))  # a faint speck
    assert blank(png(grey))
    grey.putpixel((10, 10), (0, 0, 0))  # a real dot
    assert not blank(png(grey))


def test_failure_still_cleans_up(tmp_path: Path, own_tmp: Path) -> None:
    path = page(tmp_path, '<p id="stats">ok</p>')

    with pytest.raises(BrowserError, match="timed out"):
        render(path, timeout_s=0.001)

    assert list(own_tmp.iterdir()) == []


def test_missing_chromium_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECORDER_TEST_CHROMIUM", raising=False)
    monkeypatch.setattr(browser, "_CANDIDATES", ())
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(BrowserError, match="install Debian's chromium package"):
        render(page(tmp_path, ""))


def test_file_name_that_needs_quoting(tmp_path: Path) -> None:
    path = page(tmp_path, '<p id="stats">ok</p>', name="a page 'é' #1.html")

    shown = render(path)

    assert shown.text == {"#stats": "ok"}
    assert shown.requests == [path.resolve().as_uri()]
