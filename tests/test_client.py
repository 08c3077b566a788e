"""Tests for recorder.client: requests_mock for classification, raw sockets for timeouts."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any

import pytest
import requests
import requests_mock

from recorder import __version__
from recorder.client import DeadlineAdapter, SchedulerClient, check_url, parse_retry_after
from recorder.secret import Secret
from recorder.snapshot import Failure, Outcome, PollResult, Snapshot

TOKEN = "tok-SECRET-0123456789abcdef"
GENEROUS_S = 30.0  # a bound on wall time that a loaded machine cannot break, a hang would
URL = "http://127.0.0.1:9/v2/pixverse/scheduler/"
ITEM = {"id": "user:1-pixverse:a@b.com-video:7", "type": "video", "elapsed": "00:05"}


@pytest.fixture
def adapter() -> requests_mock.Adapter:
    return requests_mock.Adapter()


@pytest.fixture
def client(adapter: requests_mock.Adapter) -> Iterator[SchedulerClient]:
    session = requests.Session()
    session.mount("http://", adapter)
    with session, SchedulerClient(URL, TOKEN, session=session) as polling_client:
        yield polling_client


def sent_request(adapter: requests_mock.Adapter) -> requests_mock.request.Request:
    request = adapter.last_request
    assert request is not None
    return request


def failure_of(result: PollResult) -> Failure:
    assert isinstance(result.answer, Failure)
    assert TOKEN not in result.answer.message
    assert TOKEN not in repr(result)
    assert "\n" not in result.answer.message
    return result.answer


# --- success ---------------------------------------------------------------------------------


def test_ok_list_and_request_headers(
    adapter: requests_mock.Adapter, client: SchedulerClient
) -> None:
    adapter.register_uri("GET", URL, json=[ITEM])
    result = client.poll()
    assert result.ok
    assert result.http_status == 200
    assert isinstance(result.answer, Snapshot)
    assert [item.api_id for item in result.answer.items] == [ITEM["id"]]
    sent = sent_request(adapter)
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["User-Agent"] == f"recorder/{__version__}"
    timeout: object = sent.timeout  # the stubs say int; requests passes the pair through
    assert timeout == (5.0, 20.0)


def test_ok_available_shape(adapter: requests_mock.Adapter, client: SchedulerClient) -> None:
    adapter.register_uri("GET", URL, json={"executing": [ITEM], "available": []})
    assert client.poll().ok


def test_no_token_sends_no_authorization(adapter: requests_mock.Adapter) -> None:
    adapter.register_uri("GET", URL, json=[])
    session = requests.Session()
    session.mount("http://", adapter)
    with session, SchedulerClient(URL, None, session=session, timeout=(1.0, 2.0)) as client:
        assert client.poll().ok
    assert "Authorization" not in sent_request(adapter).headers
    timeout: object = sent_request(adapter).timeout
    assert timeout == (1.0, 2.0)


def test_timing_uses_monotonic_delta(adapter: requests_mock.Adapter) -> None:
    adapter.register_uri("GET", URL, json=[])
    ticks = iter([100.0, 100.25])
    session = requests.Session()
    session.mount("http://", adapter)
    client = SchedulerClient(
        URL, TOKEN, session=session, wall_clock=lambda: 1_000.0, monotonic=lambda: next(ticks)
    )
    with session, client:
        result = client.poll()
    assert (result.sent_at, result.received_at) == (1_000.0, 1_000.25)


def test_backwards_monotonic_never_gives_negative_latency(adapter: requests_mock.Adapter) -> None:
    adapter.register_uri("GET", URL, json=[])
    ticks = iter([100.0, 99.0])
    session = requests.Session()
    session.mount("http://", adapter)
    client = SchedulerClient(
        URL, TOKEN, session=session, wall_clock=lambda: 1_000.0, monotonic=lambda: next(ticks)
    )
    with session, client:
        result = client.poll()
    assert result.received_at == result.sent_at == 1_000.0


# --- status codes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.HTTP_ERROR),
        (401, Outcome.AUTH),
        (402, Outcome.PAYMENT),
        (403, Outcome.AUTH),
        (404, Outcome.HTTP_ERROR),
        (412, Outcome.HTTP_ERROR),
        (422, Outcome.HTTP_ERROR),
        (429, Outcome.RATE_LIMITED),
        (500, Outcome.SERVER),
        (502, Outcome.SERVER),
        (503, Outcome.SERVER),
        (504, Outcome.SERVER),
        (596, Outcome.SERVER),
        (302, Outcome.HTTP_ERROR),
    ],
)
def test_status_classification(
    adapter: requests_mock.Adapter, client: SchedulerClient, status: int, outcome: Outcome
) -> None:
    body = {"error": f"upstream said: token {TOKEN} is no good", "code": status}
    adapter.register_uri("GET", URL, status_code=status, json=body)
    result = client.poll()
    failure = failure_of(result)
    assert failure.outcome is outcome
    assert result.http_status == status
    assert failure.message.startswith(f"HTTP {status}")
    assert "upstream said: token *** is no good" in failure.message
    assert failure.retry_after_s is None


def test_402_message(adapter: requests_mock.Adapter, client: SchedulerClient) -> None:
    error = "Account has no subscription or subscription expired"
    adapter.register_uri("GET", URL, status_code=402, json={"error": error, "code": 402})
    failure = failure_of(client.poll())
    assert failure.message == f"HTTP 402 Payment Required: {error}"


def test_596_message_without_json(adapter: requests_mock.Adapter, client: SchedulerClient) -> None:
    adapter.register_uri("GET", URL, status_code=596, text="<html>broken</html>")
    failure = failure_of(client.poll())
    assert (failure.outcome, failure.message) == (Outcome.SERVER, "HTTP 596")


def test_error_excerpt_is_one_short_line(
    adapter: requests_mock.Adapter, client: SchedulerClient
) -> None:
    error = "line one\nline\ttwo\x1b[31m\u202e" + "x" * 1000
    adapter.register_uri("GET", URL, status_code=500, json={"error": error})
    failure = failure_of(client.poll())
    assert failure.message.startswith("HTTP 500 Internal Server Error: line one line two [31m x")
    assert len(failure.message) < 260
    assert all(char.isprintable() for char in failure.message)


def test_token_cut_by_the_excerpt_limit_leaves_no_fragment(
    adapter: requests_mock.Adapter, client: SchedulerClient
) -> None:
    error = "y" * 190 + TOKEN
    adapter.register_uri("GET", URL, status_code=401, json={"error": error})
    failure = failure_of(client.poll())
    assert TOKEN[:8] not in failure.message


def test_non_string_error_field(adapter: requests_mock.Adapter, client: SchedulerClient) -> None:
    adapter.register_uri("GET", URL, status_code=400, json={"error": {"why": "bad"}})
    assert failure_of(client.poll()).message == 'HTTP 400 Bad Request: {"why": "bad"}'


def test_redirect_is_not_followed(adapter: requests_mock.Adapter, client: SchedulerClient) -> None:
    adapter.register_uri(
        "GET", URL, status_code=301, headers={"Location": "https://elsewhere.test/x"}
    )
    failure = failure_of(client.poll())
    assert failure.outcome is Outcome.HTTP_ERROR
    assert failure.message == "HTTP 301 Moved Permanently to https://elsewhere.test/x"
    assert adapter.call_count == 1


# --- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "30"}, 30.0),
        ({"Retry-After": " 0 "}, 0.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "9" * 50}, None),
        ({"Retry-After": ""}, None),
        # HTTP-date measured against the server's Date header, whatever our clock says.
        (
            {
                "Retry-After": "Wed, 25 Sep 2024 01:56:00 GMT",
                "Date": "Wed, 25 Sep 2024 01:55:15 GMT",
            },
            45.0,
        ),
        # Without a Date header: against our (injected) wall clock.
        ({"Retry-After": formatdate(2_000_120.0, usegmt=True)}, 120.0),
        ({"Retry-After": formatdate(1_000.0, usegmt=True)}, 0.0),  # in the past
        ({"Retry-After": "Wed, 99 Foo 2024 25:00:00 GMT"}, None),
    ],
)
def test_429_retry_after(
    adapter: requests_mock.Adapter, headers: dict[str, str], expected: float | None
) -> None:
    adapter.register_uri("GET", URL, status_code=429, headers=headers, json={"error": "busy"})
    session = requests.Session()
    session.mount("http://", adapter)
    with session, SchedulerClient(URL, TOKEN, session=session, wall_clock=lambda: 2e6) as client:
        failure = failure_of(client.poll())
    assert failure.outcome is Outcome.RATE_LIMITED
    assert failure.retry_after_s == expected
    if expected is not None:
        assert f"retry after {expected:g} s" in failure.message


def test_503_retry_after(adapter: requests_mock.Adapter, client: SchedulerClient) -> None:
    adapter.register_uri("GET", URL, status_code=503, headers={"Retry-After": "7"})
    failure = failure_of(client.poll())
    assert (failure.outcome, failure.retry_after_s) == (Outcome.SERVER, 7.0)


def test_parse_retry_after_direct() -> None:
    assert parse_retry_after(None, now=0.0) is None
    assert parse_retry_after("120", now=0.0) == 120.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:00 -0000", now=0.0) == 60.0


# --- bad payloads ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"text": "<!DOCTYPE html><html>Cloudflare</html>"}, "HTML"),
        ({"content": b"\xff\xfe\x00["}, "not UTF-8"),
        ({"text": "not json"}, "not JSON"),
        ({"json": {"error": "Unauthorized"}}, "without an 'executing' list: Unauthorized"),
        ({"json": "a string"}, "not a list"),
        ({"content": b""}, "empty"),
    ],
)
def test_200_bad_payload(
    adapter: requests_mock.Adapter, client: SchedulerClient, kwargs: dict[str, Any], fragment: str
) -> None:
    adapter.register_uri("GET", URL, status_code=200, **kwargs)
    result = client.poll()
    failure = failure_of(result)
    assert failure.outcome is Outcome.BAD_PAYLOAD
    assert result.http_status == 200
    assert failure.message.startswith("HTTP 200: ")
    assert fragment in failure.message


def big_body(size: int) -> bytes:
    return json.dumps([{"id": str(n)} for n in range(size // 10)]).encode()[:size]


def test_too_large_streamed(adapter: requests_mock.Adapter) -> None:
    adapter.register_uri("GET", URL, content=big_body(100_000))
    session = requests.Session()
    session.mount("http://", adapter)
    with session, SchedulerClient(URL, TOKEN, session=session, max_body_bytes=50_000) as client:
        failure = failure_of(client.poll())
    assert failure == Failure(Outcome.BAD_PAYLOAD, "answer larger than 50000 bytes")


def test_too_large_by_content_length(adapter: requests_mock.Adapter) -> None:
    adapter.register_uri("GET", URL, content=b"[]", headers={"Content-Length": "999999"})
    session = requests.Session()
    session.mount("http://", adapter)
    with session, SchedulerClient(URL, TOKEN, session=session, max_body_bytes=1000) as client:
        failure = failure_of(client.poll())
    assert failure == Failure(Outcome.BAD_PAYLOAD, "answer larger than 1000 bytes")


def test_body_at_the_limit_is_fine(adapter: requests_mock.Adapter) -> None:
    body = json.dumps([ITEM]).encode()
    adapter.register_uri("GET", URL, content=body)
    session = requests.Session()
    session.mount("http://", adapter)
    with session, SchedulerClient(URL, TOKEN, session=session, max_body_bytes=len(body)) as client:
        assert client.poll().ok


# --- transport errors (mocked) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "outcome", "fragment"),
    [
        (requests.exceptions.ConnectionError("refused"), Outcome.NETWORK, "network error"),
        (requests.exceptions.SSLError("bad cert"), Outcome.NETWORK, "network error"),
        (requests.exceptions.ConnectTimeout("slow"), Outcome.TIMEOUT, "connect timeout 5 s"),
        (requests.exceptions.ReadTimeout("slow"), Outcome.TIMEOUT, "read timeout 20 s"),
        (requests.exceptions.ChunkedEncodingError("cut"), Outcome.NETWORK, "mid-answer"),
        (requests.exceptions.ContentDecodingError("gz"), Outcome.BAD_PAYLOAD, "decompressed"),
        (requests.exceptions.ConnectionError(f"echo {TOKEN}"), Outcome.NETWORK, "echo ***"),
    ],
)
def test_transport_errors(
    adapter: requests_mock.Adapter,
    client: SchedulerClient,
    exc: Exception,
    outcome: Outcome,
    fragment: str,
) -> None:
    adapter.register_uri("GET", URL, exc=exc)
    result = client.poll()
    failure = failure_of(result)
    assert failure.outcome is outcome
    assert result.http_status is None
    assert fragment in failure.message


# --- secrets and repr ------------------------------------------------------------------------


def test_secret_is_masked() -> None:
    secret = Secret(TOKEN)
    assert secret.reveal() == TOKEN
    assert repr(secret) == str(secret) == f"{secret}" == "Secret('***')"
    assert TOKEN not in repr([secret])


def test_client_repr_shows_only_the_url() -> None:
    with SchedulerClient(URL, TOKEN) as client:
        assert repr(client) == f"SchedulerClient(url={URL!r})"
        assert TOKEN not in repr(vars(client) if hasattr(client, "__dict__") else client)
        assert client.url == URL


def test_token_accepts_secret_and_strips_newline(adapter: requests_mock.Adapter) -> None:
    adapter.register_uri("GET", URL, json=[])
    session = requests.Session()
    session.mount("http://", adapter)
    with session, SchedulerClient(URL, Secret(f" {TOKEN}\n"), session=session) as client:
        client.poll()
    assert sent_request(adapter).headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize("bad", [f"{TOKEN}\r\nX-Evil: 1", f"tok{TOKEN} with space", "tök"])
def test_token_with_header_breaking_characters_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be sent in an HTTP header") as caught:
        SchedulerClient(URL, bad)
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": (0.0, 1.0)},
        {"timeout": (1.0, float("inf"))},
        {"max_body_bytes": 0},
        {"deadline": 0.0},
        {"deadline": float("nan")},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be"):
        SchedulerClient(URL, TOKEN, **kwargs)


class CountingSession(requests.Session):
    closed = 0

    def close(self) -> None:
        self.closed += 1
        super().close()


def test_close_only_closes_owned_session(monkeypatch: pytest.MonkeyPatch) -> None:
    with CountingSession() as borrowed:
        with SchedulerClient(URL, TOKEN, session=borrowed):
            pass
        assert borrowed.closed == 0
    created: list[CountingSession] = []

    def make_session() -> CountingSession:
        created.append(CountingSession())
        return created[-1]

    monkeypatch.setattr(requests, "Session", make_session)
    with SchedulerClient(URL, TOKEN):
        pass
    assert [session.closed for session in created] == [1]


# --- check_url -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.useapi.net/v2/pixverse/scheduler/",
        "HTTPS://api.useapi.net/v2/pixverse/scheduler/",
        "http://127.0.0.1:8080/scheduler",
        "http://127.3.4.5/scheduler",
        "http://localhost/scheduler",
        "http://LOCALHOST./scheduler",
        "http://[::1]:8080/scheduler",
        "http://[::ffff:127.0.0.1]/scheduler",
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url) == url


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("http://api.useapi.net/v2/pixverse/scheduler/", "refusing plain http://"),
        ("http://10.0.0.1/scheduler", "refusing plain http://"),
        ("http://localhost.evil.com/scheduler", "refusing plain http://"),
        ("http://[::ffff:10.0.0.1]/scheduler", "refusing plain http://"),
        ("ftp://api.useapi.net/", "must start with https://"),
        ("file:///etc/passwd", "must start with https://"),
        ("api.useapi.net/v2/pixverse/scheduler/", "must start with https://"),
        ("", "must start with https://"),
        ("https:///scheduler", "no host"),
        ("https://[::1/scheduler", "invalid URL"),
        ("https://api.useapi.net:99999/", "invalid URL"),
    ],
)
def test_check_url_refuses(url: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        check_url(url)


def test_check_url_insecure_allows_plain_http() -> None:
    url = "http://api.useapi.net/v2/pixverse/scheduler/"
    assert check_url(url, insecure=True) == url
    with pytest.raises(ValueError, match="must start with https://"):
        check_url("ftp://x/", insecure=True)


# --- real sockets on 127.0.0.1 ---------------------------------------------------------------

Handler = Callable[[socket.socket, threading.Event], None]


@contextmanager
def raw_server(handler: Handler) -> Iterator[str]:
    """Serve one connection on 127.0.0.1 with handler; yield the URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                try:
                    read_request(conn)
                    handler(conn, stop)
                except OSError:
                    pass
            return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/scheduler/"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def read_request(conn: socket.socket) -> None:
    conn.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk


def poll_real(url: str, max_body_bytes: int = 1_000_000) -> tuple[PollResult, float]:
    """Poll url once (0.3 s read timeout, 1 s deadline); return the result and its duration."""
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment for 127.0.0.1
        session.mount("http://", DeadlineAdapter())
        client = SchedulerClient(
            url,
            TOKEN,
            timeout=(2.0, 0.3),
            deadline=1.0,
            max_body_bytes=max_body_bytes,
            session=session,
        )
        start = time.monotonic()
        result = client.poll()
        return result, time.monotonic() - start


def never_answer(conn: socket.socket, stop: threading.Event) -> None:
    stop.wait(10)


def half_body_then_close(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        b'[{"id": "user:1-pixverse:a@b.com-video:1", "ty'
    )


def half_body_then_hang(conn: socket.socket, stop: threading.Event) -> None:
    half_body_then_close(conn, stop)
    stop.wait(10)


def trickle(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
    conn.sendall(b"Transfer-Encoding: chunked\r\n\r\n")
    while not stop.wait(0.05):
        conn.sendall(b"1\r\n \r\n")


def chunked_too_large(conn: socket.socket, stop: threading.Event) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    piece = b" " * 4096
    for _ in range(100):
        conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    conn.sendall(b"0\r\n\r\n")


def good_answer(conn: socket.socket, stop: threading.Event) -> None:
    body = json.dumps([ITEM]).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def test_real_server_ok() -> None:
    with raw_server(good_answer) as url:
        result, _ = poll_real(url)
    assert result.ok


def test_real_server_that_never_answers_times_out() -> None:
    with raw_server(never_answer) as url:
        result, took = poll_real(url)
    failure = failure_of(result)
    assert failure.outcome is Outcome.TIMEOUT
    assert result.http_status is None
    assert took < GENEROUS_S


def test_real_server_half_body_then_close_is_network() -> None:
    with raw_server(half_body_then_close) as url:
        result, _ = poll_real(url)
    failure = failure_of(result)
    assert failure.outcome is Outcome.NETWORK
    assert failure.message == (
        "connection broke mid-answer: ProtocolError: Connection broken: "
        "IncompleteRead(46 bytes read, 154 more expected)"
    )
    assert result.http_status == 200


def test_real_server_half_body_then_hang_times_out() -> None:
    with raw_server(half_body_then_hang) as url:
        result, took = poll_real(url)
    failure = failure_of(result)
    assert failure.outcome is Outcome.TIMEOUT
    assert "answer body" in failure.message
    assert took < GENEROUS_S


def test_real_server_trickling_body_hits_the_deadline() -> None:
    with raw_server(trickle) as url:
        result, took = poll_real(url)
    failure = failure_of(result)
    assert failure.outcome is Outcome.TIMEOUT
    assert took < GENEROUS_S


def test_real_server_chunked_too_large() -> None:
    with raw_server(chunked_too_large) as url:
        result, _ = poll_real(url, max_body_bytes=100_000)
    assert failure_of(result) == Failure(Outcome.BAD_PAYLOAD, "answer larger than 100000 bytes")


def test_connection_refused_is_network() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result, _ = poll_real(f"http://127.0.0.1:{port}/scheduler/")
    failure = failure_of(result)
    assert failure.outcome is Outcome.NETWORK
    assert "Connection refused" in failure.message
    assert "object at 0x" not in failure.message
