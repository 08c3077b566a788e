"""The whole-poll deadline and abort(): whatever the server does, poll() comes back.

Each server below would keep an answer going for about two minutes, while the client's
deadline is one second. Wall times are only bounded generously (the machine is shared): a
poll that returns in under GENEROUS_S was cut, one that was not would take minutes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests
import requests_mock

from recorder.client import ABORTED_MESSAGE, DeadlineAdapter, SchedulerClient
from recorder.snapshot import Failure, Outcome, PollResult
from tests.faults.servers import Answer, ScriptedServer, http

TOKEN = "tok-deadline-5c2a"
GENEROUS_S = 30.0
TRICKLE = 1200  # pieces, one every 0.1 s: two minutes of answer
EVERY_S = 0.1

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
PAD = b"X-Padding: " + b"p" * TRICKLE + b"\r\n"
WHOLE = OK_HEAD + PAD + b"Content-Length: 2\r\n\r\n[]"
KEPT_ALIVE_OK = OK_HEAD + b"Content-Length: 2\r\n\r\n[]"
GOOD = Answer(http(200, b"[]"))  # Connection: close, so no keep-alive race with the close


def trickled(data: bytes = b"", trickle: bytes = b"", piece: int = 1) -> Answer:
    return Answer(data, trickle=trickle, piece=piece, every_s=EVERY_S)


# shape: (what the server does, the status the poll reports, the phase named in the message)
SHAPES: dict[str, tuple[Answer, int | None, str]] = {
    "silent after accepting": (Answer(hang_s=120.0), None, "waiting for the answer"),
    "status line trickled": (trickled(trickle=WHOLE), None, "waiting for the answer"),
    "headers trickled": (
        trickled(b"HTTP/1.1 200 OK\r\n", WHOLE.removeprefix(b"HTTP/1.1 200 OK\r\n")),
        None,
        "waiting for the answer",
    ),
    "body trickled under a Content-Length": (
        trickled(OK_HEAD + b"Content-Length: %d\r\n\r\n" % TRICKLE, b" " * TRICKLE),
        200,
        "reading the answer body",
    ),
    "chunks trickled": (
        trickled(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n", b"1\r\n \r\n" * TRICKLE, 7),
        200,
        "reading the answer body",
    ),
    "body until close, trickled": (
        trickled(OK_HEAD + b"\r\n", b" " * TRICKLE),
        200,
        "reading the answer body",
    ),
    "whole answer, never closed": (Answer(OK_HEAD + b"\r\n[]", hang_s=120.0), 200, "body"),
}


def client_for(
    url: str, *, deadline: float = 1.0, session: requests.Session | None = None
) -> SchedulerClient:
    """A client whose per-operation timeouts are far above the deadline: only it can cut."""
    return SchedulerClient(url, TOKEN, timeout=(60.0, 60.0), deadline=deadline, session=session)


def timed_poll(client: SchedulerClient) -> tuple[PollResult, float]:
    start = time.monotonic()
    result = client.poll()
    return result, time.monotonic() - start


def failure_of(result: PollResult) -> Failure:
    assert isinstance(result.answer, Failure)
    assert TOKEN not in result.answer.message
    assert "\n" not in result.answer.message
    return result.answer


def wait_until(condition: Callable[[], bool], within_s: float = GENEROUS_S) -> bool:
    """Wait for condition, checking every 50 ms, at most within_s; return whether it held."""
    end = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def deadline_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "recorder-deadline"]


def abort_once_requested(server: ScriptedServer, client: SchedulerClient) -> threading.Thread:
    """From another thread: abort the client as soon as the server has the request."""

    def run() -> None:
        if server.requested.wait(GENEROUS_S):
            client.abort()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def caller_session() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # no proxy from the environment for 127.0.0.1
        session.mount("http://", DeadlineAdapter())
        session.mount("https://", DeadlineAdapter())
        yield session


# --- the deadline ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
def test_a_stalling_server_is_cut_at_the_deadline(shape: str) -> None:
    answer, status, phase = SHAPES[shape]
    with ScriptedServer(answer) as server, client_for(server.url) as client:
        result, took = timed_poll(client)
    failure = failure_of(result)
    assert failure.outcome is Outcome.TIMEOUT
    assert phase in failure.message
    assert "(deadline 1 s for the poll)" in failure.message
    assert result.http_status == status
    assert took < GENEROUS_S


def test_a_caller_session_with_the_adapter_is_cut_too(caller_session: requests.Session) -> None:
    answer, _, _ = SHAPES["body trickled under a Content-Length"]
    with ScriptedServer(answer) as server:
        result, took = timed_poll(client_for(server.url, session=caller_session))
    assert failure_of(result) == Failure(
        Outcome.TIMEOUT, "timed out reading the answer body (deadline 1 s for the poll)"
    )
    assert took < GENEROUS_S


def test_a_stalled_tls_handshake_is_cut() -> None:
    # A TLS record header announcing 16 KiB, then its bytes one by one: the handshake waits.
    answer = trickled(trickle=b"\x16\x03\x03\x40\x00" + b"\x02" * TRICKLE)
    with ScriptedServer(answer) as server:
        url = server.url.replace("http://", "https://")
        with client_for(url) as client:
            result, took = timed_poll(client)
    failure = failure_of(result)
    assert (failure.outcome, result.http_status) == (Outcome.TIMEOUT, None)
    # Until the TLS handshake is done the socket timeout is the connect timeout, capped to the
    # deadline: on a starved machine it may fire first. Either way, two minutes were cut short.
    assert failure.message.startswith("timed out")
    assert took < GENEROUS_S


def test_a_kept_alive_connection_is_cut_on_its_next_poll() -> None:
    with (
        ScriptedServer(Answer(KEPT_ALIVE_OK, then=Answer(hang_s=120.0))) as server,
        client_for(server.url) as client,
    ):
        assert client.poll().ok
        result, took = timed_poll(client)
    assert server.connections == 1  # the second poll did reuse the connection
    assert failure_of(result).outcome is Outcome.TIMEOUT
    assert took < GENEROUS_S


def test_an_error_status_keeps_its_class_when_its_body_trickles() -> None:
    head = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\nContent-Length: %d\r\n\r\n"
    answer = trickled(head % TRICKLE, b" " * TRICKLE)
    with ScriptedServer(answer) as server, client_for(server.url) as client:
        result, took = timed_poll(client)
    assert failure_of(result) == Failure(
        Outcome.SERVER, "HTTP 503 Service Unavailable (retry after 7 s)", 7.0
    )
    assert took < GENEROUS_S


def test_the_deadline_caps_the_connect_timeout_and_defaults_to_the_larger() -> None:
    adapter = requests_mock.Adapter()
    adapter.register_uri("GET", "http://127.0.0.1:9/x", json=[])
    with requests.Session() as session:
        session.mount("http://", adapter)
        capped = SchedulerClient(
            "http://127.0.0.1:9/x", TOKEN, session=session, timeout=(5.0, 20.0), deadline=3.0
        )
        assert capped.poll().ok
        assert capped.deadline == 3.0
        assert adapter.last_request is not None
        timeout: object = adapter.last_request.timeout
        assert timeout == (3.0, 20.0)
        assert SchedulerClient("http://127.0.0.1:9/x", TOKEN, timeout=(5.0, 2.0)).deadline == 5.0


@pytest.mark.parametrize("deadline", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_deadline_is_refused(deadline: float) -> None:
    with pytest.raises(ValueError, match="deadline must be a positive number of seconds"):
        SchedulerClient("http://127.0.0.1:9/x", TOKEN, deadline=deadline)


# --- abort() ---------------------------------------------------------------------------------


def test_abort_ends_a_poll_waiting_on_a_silent_server() -> None:
    with (
        ScriptedServer(Answer(hang_s=120.0)) as server,
        client_for(server.url, deadline=120.0) as client,
    ):
        aborter = abort_once_requested(server, client)
        result, took = timed_poll(client)
        aborter.join(GENEROUS_S)
    assert failure_of(result) == Failure(Outcome.NETWORK, ABORTED_MESSAGE)
    assert result.http_status is None
    assert took < GENEROUS_S
    assert client.aborted


def test_abort_ends_a_poll_reading_a_trickled_body() -> None:
    answer, _, _ = SHAPES["body trickled under a Content-Length"]
    with ScriptedServer(answer) as server, client_for(server.url, deadline=120.0) as client:
        aborter = abort_once_requested(server, client)
        result, took = timed_poll(client)
        aborter.join(GENEROUS_S)
    assert failure_of(result) == Failure(Outcome.NETWORK, ABORTED_MESSAGE)
    assert took < GENEROUS_S


def test_after_abort_every_poll_fails_at_once_without_sending() -> None:
    with ScriptedServer(GOOD) as server, client_for(server.url) as client:
        client.abort()
        results = [client.poll() for _ in range(3)]
    assert [failure_of(result) for result in results] == [
        Failure(Outcome.NETWORK, ABORTED_MESSAGE)
    ] * 3
    assert all(result.http_status is None for result in results)
    assert server.connections == 0


def test_abort_is_sticky_after_the_poll_it_cut() -> None:
    with (
        ScriptedServer(Answer(hang_s=120.0)) as server,
        client_for(server.url, deadline=120.0) as client,
    ):
        aborter = abort_once_requested(server, client)
        first = client.poll()
        aborter.join(GENEROUS_S)
        second, took = timed_poll(client)
    assert failure_of(first) == failure_of(second) == Failure(Outcome.NETWORK, ABORTED_MESSAGE)
    assert server.connections == 1
    assert took < GENEROUS_S


@pytest.mark.parametrize("delay_s", [0.0, 0.0005, 0.002, 0.01, 0.05])
def test_abort_at_any_moment_ends_the_poll(delay_s: float) -> None:
    with (
        ScriptedServer(Answer(hang_s=120.0)) as server,
        client_for(server.url, deadline=120.0) as client,
    ):
        aborter = threading.Timer(delay_s, client.abort)
        aborter.start()
        result, took = timed_poll(client)
        aborter.join(GENEROUS_S)
    assert failure_of(result) == Failure(Outcome.NETWORK, ABORTED_MESSAGE)
    assert took < GENEROUS_S


def test_abort_never_raises() -> None:
    client = SchedulerClient("http://127.0.0.1:9/x", TOKEN)
    client.abort()  # idle
    client.abort()  # twice
    client.close()
    client.abort()  # closed
    assert client.aborted
    assert failure_of(client.poll()).message == ABORTED_MESSAGE


# --- threads ---------------------------------------------------------------------------------


def test_no_thread_outlives_its_poll() -> None:
    before = threading.active_count()
    with ScriptedServer(GOOD) as good, client_for(good.url) as client:
        for _ in range(40):
            assert client.poll().ok
            assert deadline_threads() == []
    with (
        ScriptedServer(Answer(hang_s=120.0)) as silent,
        client_for(silent.url, deadline=0.2) as client,
    ):
        for _ in range(3):
            assert failure_of(client.poll()).outcome is Outcome.TIMEOUT
            assert deadline_threads() == []
    # The servers' own threads end once their connections close.
    assert wait_until(lambda: threading.active_count() <= before), threading.enumerate()
