"""API faults: whatever the endpoint does, no crash, no job closed, the poll recorded with its kind.

Each case runs the daemon's own loop body (Daemon.tick, with the real client) against a raw
socket server on 127.0.0.1: one good answer listing two jobs, then the fault.
"""

from __future__ import annotations

import json
import logging
import random

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from recorder.cli import cli
from recorder.client import SchedulerClient
from recorder.daemon import Daemon
from recorder.models import Job, Poll, Transition
from recorder.pipeline import Pipeline
from recorder.simulator import format_started
from recorder.store import Store
from tests.faults.servers import Answer, ScriptedServer, closed_port_url, http

TOKEN = "tok-faults-77e1"
NOW = 1_800_000_000.0


def listing(n: int = 2) -> bytes:
    items = [
        {
            "id": f"user:1-pixverse:a@example.com-video:{k}",
            "type": "video",
            "started": format_started(NOW - 30 - k),
            "elapsed": "00:30",
        }
        for k in range(n)
    ]
    return json.dumps(items).encode()


GOOD = Answer(http(200, listing()))
JSON_ERROR = b'{"error": "upstream trouble", "code": 500}'
WRONG_TYPES = json.dumps(
    [{"id": [1], "type": 5, "started": {}, "elapsed": True, "replyUrl": 3, "replyRef": []}] * 3
).encode()

CASES = {
    "connection refused": (None, "network"),
    "read hangs past the timeout": (Answer(b"", hang_s=3.0), "timeout"),
    # Two minutes of answer, a byte every 0.1 s: no read timeout fires, the deadline does.
    "headers trickled past the deadline": (
        Answer(b"HTTP/1.1 200 OK\r\n", trickle=b"X-Padding: " + b"p" * 1200, every_s=0.1),
        "timeout",
    ),
    "body trickled past the deadline": (
        Answer(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1200\r\n\r\n",
            trickle=b" " * 1200,
            every_s=0.1,
        ),
        "timeout",
    ),
    "half a body": (
        Answer(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n[{"id"'
        ),
        "network",
    ),
    "HTML with 200": (
        Answer(http(200, b"<html><body>Just a moment...</body></html>", "text/html")),
        "bad_payload",
    ),
    "500": (Answer(http(500, JSON_ERROR)), "server"),
    "502": (Answer(http(502, b"<html>Bad gateway</html>", "text/html")), "server"),
    "503": (Answer(http(503, JSON_ERROR)), "server"),
    "504": (Answer(http(504, JSON_ERROR)), "server"),
    "596": (Answer(http(596, b'{"error": "account in error state", "code": 596}')), "server"),
    "429 with Retry-After": (Answer(http(429, b'{"code": 429}', Retry_After="3")), "rate_limited"),
    "429 without Retry-After": (Answer(http(429, b'{"code": 429}')), "rate_limited"),
    "401": (Answer(http(401, b'{"error": "Unauthorized", "code": 401}')), "auth"),
    "402": (
        Answer(
            http(
                402,
                b'{"error": "Account has no subscription or subscription expired", "code": 402}',
            )
        ),
        "payment",
    ),
    "10 MB of garbage": (
        Answer(http(200, random.Random(1).randbytes(10 * 1024 * 1024))),
        "bad_payload",
    ),
    "not UTF-8": (Answer(http(200, b'[{"id": "\xff\xfe"}]')), "bad_payload"),
    "a wrong type in every field": (Answer(http(200, WRONG_TYPES)), "bad_payload"),
}


def run_case(store: Store, fault: Answer | None) -> tuple[Daemon, str]:
    with ScriptedServer(GOOD, *([fault] if fault else [GOOD])) as server:
        good = SchedulerClient(server.url, TOKEN, timeout=(0.5, 1.0))
        bad = SchedulerClient(server.url if fault else closed_port_url(), TOKEN, timeout=(0.5, 1.0))
        clients = iter([good, bad, bad])
        pipeline = Pipeline(store, server.url, lambda: next(clients).poll(), gap_s=60.0)
        daemon = Daemon(pipeline, interval=0.01)
        assert daemon.tick() is not None
        daemon.tick()
        return daemon, server.url


@pytest.mark.parametrize("case", list(CASES))
def test_an_api_fault_closes_nothing_and_is_recorded(store: Store, case: str) -> None:
    fault, kind = CASES[case]
    daemon, _ = run_case(store, fault)
    with store.engine.connect() as conn:
        polls = conn.execute(select(Poll.outcome, Poll.error).order_by(Poll.id)).all()
        jobs = conn.execute(select(Job.status)).scalars().all()
        transitions = conn.execute(select(Transition.kind)).scalars().all()
    assert [p.outcome for p in polls] == ["ok", kind]
    assert polls[1].error and TOKEN not in polls[1].error
    assert jobs == ["running", "running"]
    assert transitions == ["appeared", "appeared"]
    assert daemon.health.failing == kind


def test_a_list_of_10000_items_is_recorded(store: Store) -> None:
    with ScriptedServer(GOOD, Answer(http(200, listing(10_000)))) as server:
        client = SchedulerClient(server.url, TOKEN, timeout=(0.5, 5.0))
        pipeline = Pipeline(store, server.url, client.poll, gap_s=60.0)
        daemon = Daemon(pipeline, interval=0.01)
        daemon.tick()
        recorded = daemon.tick()
    assert recorded is not None and recorded.result.ok
    with store.engine.connect() as conn:
        statuses = conn.execute(select(Job.status)).scalars().all()
    assert len(statuses) == 10_000 and set(statuses) == {"running"}


@pytest.mark.parametrize(("code", "kind"), [(401, "auth"), (402, "payment")])
def test_auth_and_payment_failures_are_said_once_loudly_and_show_unhealthy(
    store: Store, db_url: str, caplog: pytest.LogCaptureFixture, code: int, kind: str
) -> None:
    body = b'{"error": "no", "code": %d}' % code
    with ScriptedServer(GOOD, Answer(http(code, body))) as server:
        client = SchedulerClient(server.url, TOKEN, timeout=(0.5, 1.0))
        daemon = Daemon(Pipeline(store, server.url, client.poll, gap_s=60.0), interval=0.01)
        with caplog.at_level(logging.INFO, logger="recorder"):
            for _ in range(5):
                daemon.tick()
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(loud) == 1 and f"failing ({kind})" in loud[0].getMessage()
    result = CliRunner().invoke(cli, ["--db", db_url, "status", "--format", "json"])
    assert result.exit_code == 1
    (target,) = json.loads(result.output)
    assert (target["healthy"], target["last_outcome"], target["failing_polls"]) == (False, kind, 4)


def test_status_is_healthy_after_a_good_poll(store: Store, db_url: str) -> None:
    with ScriptedServer(GOOD) as server:
        client = SchedulerClient(server.url, TOKEN, timeout=(0.5, 1.0))
        Daemon(Pipeline(store, server.url, client.poll, gap_s=60.0), interval=0.01).tick()
    result = CliRunner().invoke(cli, ["--db", db_url, "status", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["healthy"] is True
