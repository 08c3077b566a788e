"""Render a local, self-contained HTML file in headless Chromium, for tests.

`render` starts Debian's `chromium` (headless, no sandbox: the suite may run as root) with a
throwaway profile, drives it over the DevTools protocol on 127.0.0.1, loads the file and
reports what a test wants to know: console warnings and errors, every URL the page asked for,
a PNG screenshot, the text of some elements and the title. `blank` tells a screenshot of
nothing (one colour) from one of a page.

Every wait has a deadline (generous: the machine may be loaded); only a hang takes that
long. The browser is killed and its profile removed however `render` ends. Chromium missing
is an error, not a skip: CI installs it (.ci/run).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket
from PIL import Image, ImageChops

# Only a hang takes this long; a loaded 2-core machine needs far less.
DEADLINE_S = 60.0

# The Debian package's real binary: /usr/bin/chromium is a shell wrapper that sources
# /etc/chromium.d (extension and GPU flags we do not want, and a /dev/shm check that breaks
# when findmnt prints two lines). Any other chromium on PATH is the fallback.
_CANDIDATES = ("/usr/lib/chromium/chromium",)
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root cannot use the setuid/namespace sandbox
    "--disable-gpu",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",  # any free port, written to <profile>/DevToolsActivePort
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
    "--disable-features=Translate,MediaRouter,OptimizationHints,DialMediaRouteProvider",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--mute-audio",
    "--hide-scrollbars",  # no scrollbar in the screenshot
    "--force-color-profile=srgb",  # pixel values as the CSS says them
    "--force-device-scale-factor=1",
    # No name resolves: a page that names another host fails fast instead of waiting for DNS.
    "--host-resolver-rules=MAP * ~NOTFOUND",
)


class BrowserError(Exception):
    """Chromium is missing, did not start, or did not answer in time."""


@dataclass(frozen=True)
class Rendered:
    """What the page did and showed."""

    console: list[str]  # warnings and errors, "level: text (url:line)", in order
    requests: list[str]  # every URL the page requested, its own file:// URL included
    # Those of `requests` that Chromium refused before they went out (a CSP, mixed content):
    # Network.requestWillBeSent reports a request before the checks that block it.
    blocked: list[str]
    screenshot: bytes  # PNG of the viewport (of the whole page with full_page=True)
    text: dict[str, str]  # selector -> textContent, for the selectors that matched
    title: str
    values: dict[str, Any] = field(default_factory=dict)  # expression -> its JSON value


def chromium() -> str:
    """The Chromium binary to run; a BrowserError saying how to get one if there is none."""
    override = os.environ.get("RECORDER_TEST_CHROMIUM")
    if override:
        if not os.access(override, os.X_OK):
            raise BrowserError(f"RECORDER_TEST_CHROMIUM={override} is not an executable")
        return override
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    for name in _NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError(
        "Chromium not found (looked for /usr/lib/chromium/chromium and chromium on PATH): "
        "install Debian's chromium package (`apt-get install --no-install-recommends "
        "chromium`; .ci/run does) or set RECORDER_TEST_CHROMIUM to a Chromium binary"
    )


def render(
    path: Path,
    *,
    width: int = 1280,
    height: int = 900,
    dark: bool = False,
    media: str | None = None,
    selectors: Sequence[str] = ("#stats",),
    full_page: bool = False,
    expressions: Sequence[str] = (),
    timeout_s: float = DEADLINE_S,
) -> Rendered:
    """Load `path` in headless Chromium and report what it did and showed.

    `dark` emulates prefers-color-scheme: dark (else light); `media` ("print", "screen")
    emulates a CSS media type; each of `expressions` is evaluated in the page, its value
    returned in `values`. The page is loaded once its load event has fired and two
    animation frames have passed. `timeout_s` bounds the whole call.
    """
    deadline = time.monotonic() + timeout_s
    url = path.resolve().as_uri()
    with _browser(deadline) as cdp:
        for domain in ("Runtime", "Log", "Network", "Page"):
            cdp.call(f"{domain}.enable")
        cdp.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        scheme = "dark" if dark else "light"
        cdp.call(
            "Emulation.setEmulatedMedia",
            media=media or "",
            features=[{"name": "prefers-color-scheme", "value": scheme}],
        )
        cdp.events.clear()  # the about:blank the browser started with
        navigated = cdp.call("Page.navigate", url=url)
        if navigated.get("errorText"):
            raise BrowserError(f"Chromium could not load {url}: {navigated['errorText']}")
        loader = navigated.get("loaderId")

        def committed(event: dict[str, Any]) -> bool:
            frame = event["params"]["frame"] if event["method"] == "Page.frameNavigated" else {}
            return bool(frame) and "parentId" not in frame and frame.get("loaderId") == loader

        # A load event is ours once the document has replaced the starting about:blank.
        after = cdp.wait_for_event(committed, f"Chromium to commit {url}")
        cdp.wait_for_event(
            lambda event: event["method"] == "Page.loadEventFired",
            f"the load event of {url}",
            since=after + 1,
        )
        cdp.evaluate(
            "new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))"
        )
        text: dict[str, str] = {}
        for selector in selectors:
            found = cdp.evaluate(
                f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                " return e === null ? null : e.textContent; })()"
            )
            if found is not None:
                text[selector] = found
        title = cdp.evaluate("document.title")
        values = {expression: cdp.evaluate(expression) for expression in expressions}
        if full_page:
            # Clipped to the content: captureBeyondViewport alone still shoots the viewport.
            size = cdp.call("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = cdp.call(
                "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip
            )
        else:
            shot = cdp.call("Page.captureScreenshot", format="png")
        console, requests, blocked = _console_and_requests(cdp.events)
        return Rendered(
            console=console,
            requests=requests,
            blocked=blocked,
            screenshot=base64.b64decode(shot["data"]),
            text=text,
            title=str(title),
            values=values,
        )


def blank(png: bytes, *, tolerance: int = 8) -> bool:
    """True when the image is one colour, give or take `tolerance` per channel.

    Every pixel is compared with the most frequent colour: a single antialiased character
    on an empty page is enough to make it not blank, a faint dither is not.
    """
    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    colours = image.getcolors(maxcolors=image.width * image.height)
    assert colours is not None  # maxcolors covers every pixel
    _count, dominant = max(colours, key=lambda pair: pair[0])
    assert isinstance(dominant, tuple)  # an RGB image's colours are (r, g, b)
    difference = ImageChops.difference(image, Image.new("RGB", image.size, dominant))
    extrema = difference.getextrema()  # per channel: (low, high)
    return all(isinstance(band, tuple) and band[1] <= tolerance for band in extrema)


# --- the DevTools protocol ---------------------------------------------------------------


class _Cdp:
    """One page's DevTools websocket: calls wait for their reply, events pile up in order."""

    def __init__(self, ws: websocket.WebSocket, deadline: float) -> None:
        self.ws = ws
        self.deadline = deadline
        self.events: list[dict[str, Any]] = []
        self._next_id = 0

    def _receive(self, awaiting: str) -> dict[str, Any]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise BrowserError(f"Chromium: timed out waiting for {awaiting}")
        self.ws.settimeout(left)
        try:
            raw = self.ws.recv()
        except websocket.WebSocketTimeoutException:
            raise BrowserError(f"Chromium: timed out waiting for {awaiting}") from None
        except (websocket.WebSocketException, OSError) as error:
            raise BrowserError(f"Chromium: connection lost waiting for {awaiting}") from error
        message: dict[str, Any] = json.loads(raw)
        if message.get("method") == "Page.javascriptDialogOpening":
            # An alert() would block the page, and this helper, until the deadline.
            self._send("Page.handleJavaScriptDialog", {"accept": True})
        return message

    def _send(self, method: str, params: dict[str, Any]) -> int:
        self._next_id += 1
        self.ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        return self._next_id

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        sent = self._send(method, params)
        while True:
            message = self._receive(f"the reply to {method}")
            if message.get("id") == sent:
                if "error" in message:
                    raise BrowserError(f"Chromium: {method} failed: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            if "method" in message:
                self.events.append(message)

    def wait_for_event(
        self, matches: Callable[[dict[str, Any]], bool], awaiting: str, since: int = 0
    ) -> int:
        """The index in `events` of the first event from `since` on that `matches`."""
        for index in range(since, len(self.events)):
            if matches(self.events[index]):
                return index
        while True:
            message = self._receive(awaiting)
            if "method" in message:
                self.events.append(message)
                if matches(message):
                    return len(self.events) - 1

    def evaluate(self, expression: str) -> Any:
        reply = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            thrown = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"Chromium: {expression!r} threw: {thrown}")
        return reply["result"].get("value")


def _console_and_requests(
    events: list[dict[str, Any]],
) -> tuple[list[str], list[str], list[str]]:
    """The console lines, requested URLs and blocked URLs in the events."""
    console: list[str] = []
    requests: list[str] = []
    urls: dict[str, str] = {}  # requestId -> URL
    blocked: list[str] = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in (
            "warning",
            "error",
            "assert",
        ):
            level = "warning" if params["type"] == "warning" else "error"
            text = " ".join(_describe(arg) for arg in params.get("args", []))
            frames = params.get("stackTrace", {}).get("callFrames", [])
            where = (frames[0]["url"], frames[0]["lineNumber"] + 1) if frames else None
            console.append(_line(level, text, where))
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text", "")
            where = (details.get("url", ""), details.get("lineNumber", -1) + 1)
            console.append(_line("error", text, where))
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("warning", "error"):
            entry = params["entry"]
            where = (entry["url"], entry.get("lineNumber", -1) + 1) if entry.get("url") else None
            console.append(_line(entry["level"], entry["text"], where))
        elif method == "Network.requestWillBeSent":
            requests.append(params["request"]["url"])
            urls[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed" and params.get("blockedReason"):
            blocked.append(urls.get(params["requestId"], f"(request {params['requestId']})"))
    return console, requests, blocked


def _describe(arg: dict[str, Any]) -> str:
    if "value" in arg:
        value = arg["value"]
        return value if isinstance(value, str) else json.dumps(value)
    return str(arg.get("unserializableValue") or arg.get("description") or arg.get("type"))


def _line(level: str, text: str, where: tuple[str, int] | None) -> str:
    return f"{level}: {text}" + (f" ({where[0]}:{where[1]})" if where else "")


# --- the browser process ---------------------------------------------------------------


@contextlib.contextmanager
def _browser(deadline: float) -> Iterator[_Cdp]:
    """A fresh headless Chromium, connected to its page; killed and removed afterwards."""
    binary = chromium()
    profile = Path(tempfile.mkdtemp(prefix="recorder-chromium-"))
    # Everything Chromium writes goes under the profile, removed afterwards: its crash report
    # folders (XDG_CONFIG_HOME), dconf and NSS files (HOME), and its singleton socket
    # (TMPDIR) unless that socket's path, TMPDIR + 46 characters, would be too long for a
    # unix socket (107 at most): Chromium dies of that at start.
    env = {
        **os.environ,
        "HOME": str(profile),
        "XDG_CONFIG_HOME": str(profile / ".config"),
        "XDG_CACHE_HOME": str(profile / ".cache"),
    }
    if len(str(profile)) <= 60:
        env["TMPDIR"] = str(profile)
    process: subprocess.Popen[bytes] | None = None
    ws: websocket.WebSocket | None = None
    try:
        with (profile / "stderr.log").open("wb") as stderr:
            process = subprocess.Popen(
                [binary, *_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                cwd=profile,
                env=env,
                start_new_session=True,  # its own process group: killed as a whole
            )
        port = _devtools_port(process, profile, deadline)
        ws = websocket.create_connection(
            _page_websocket(port, deadline),
            timeout=max(deadline - time.monotonic(), 0.1),
            suppress_origin=True,  # Chromium refuses websocket origins it was not told about
            http_no_proxy=["127.0.0.1"],  # whatever http_proxy/no_proxy say
        )
        yield _Cdp(ws, deadline)
    except BrowserError as error:
        raise BrowserError(f"{error}\n{_stderr_tail(profile)}") from error
    finally:
        closing = False
        if ws is not None:
            with contextlib.suppress(Exception):
                # Asked to close, Chromium ends its helper processes itself.
                ws.send(json.dumps({"id": 0, "method": "Browser.close", "params": {}}))
                closing = True
            with contextlib.suppress(Exception):
                ws.close(timeout=1)
        if process is not None:
            _kill(process, closing)
        _remove(profile)


def _devtools_port(process: subprocess.Popen[bytes], profile: Path, deadline: float) -> int:
    """The port Chromium chose, from the file it writes once DevTools listens."""
    active = profile / "DevToolsActivePort"
    while True:
        with contextlib.suppress(OSError, ValueError, IndexError):
            # The first line is the port; the file may be seen before it is whole.
            lines = active.read_text().splitlines()
            if len(lines) >= 2:
                return int(lines[0])
        if process.poll() is not None:
            raise BrowserError(f"Chromium exited with status {process.returncode} at start")
        if time.monotonic() > deadline:
            raise BrowserError(f"Chromium: timed out waiting for {active}")
        time.sleep(0.05)


def _page_websocket(port: int, deadline: float) -> str:
    """The websocket URL of the browser's page target (a new one if it has none yet)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy
    base = f"http://127.0.0.1:{port}"

    def ask(path: str, method: str = "GET") -> Any:
        timeout = max(deadline - time.monotonic(), 0.1)
        request = urllib.request.Request(base + path, method=method)
        try:
            with opener.open(request, timeout=timeout) as response:
                return json.load(response)
        except OSError as error:
            raise BrowserError(f"Chromium: {method} {base}{path} failed: {error}") from error

    for target in ask("/json/list"):
        if target.get("type") == "page" and target.get("webSocketDebuggerUrl"):
            return str(target["webSocketDebuggerUrl"])
    return str(ask("/json/new?about:blank", method="PUT")["webSocketDebuggerUrl"])


def _kill(process: subprocess.Popen[bytes], closing: bool) -> None:
    """End Chromium and every process it started (its process group).

    `closing`: Browser.close was sent, so first give it a moment to exit by itself.
    """
    stages: list[tuple[signal.Signals | None, float]] = [
        (signal.SIGTERM, 10.0),
        (signal.SIGKILL, 30.0),
    ]
    if closing:
        stages.insert(0, (None, 10.0))
    for sig, grace in stages:
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The browser is gone; its helpers may linger a moment: make sure they do not.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        return


def _remove(profile: Path) -> None:
    """Remove the profile; a helper process still dying may write to it for a moment."""
    deadline = time.monotonic() + 10.0
    while True:
        try:
            shutil.rmtree(profile)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                shutil.rmtree(profile, ignore_errors=True)
                return
            time.sleep(0.05)


def _stderr_tail(profile: Path, lines: int = 20) -> str:
    try:
        tail = (profile / "stderr.log").read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no Chromium stderr)"
    return "Chromium stderr (last lines):\n" + "\n".join(tail)
