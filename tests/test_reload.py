"""SIGHUP to `recorder run --config … --log-file …`: the config file is read again and the log
file opened again, while the targets that did not change poll on untouched.

Against the built-in simulator on 127.0.0.1, on SQLite and PostgreSQL. Nothing here asserts on
time: each step waits for what the database or the log shows, with a deadline. That a target
ran on untouched is checked in the database: its lease was never given up and taken again, and
no two of its polls are further apart than its interval and a generous tolerance.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from recorder.models import Lease, Poll, Target
from recorder.simulator import JobKind, SimConfig, Simulator
from tests.waiting import Unmet, peek, reader, running, stop, tail, wait_for

TOKEN = "tok-reload-7c3b90"
INTERVAL = 0.25
# Far above the interval: a loaded machine delays a poll by a little, a restart by its stop.
TOLERANCE_S = 3.0


@pytest.fixture
def sims() -> Iterator[list[Simulator]]:
    configs = [
        SimConfig(seed=70 + k, token=TOKEN, kinds=(JobKind("video", 30.0, 2.0),), initial_jobs=1)
        for k in range(2)
    ]
    with Simulator(configs[0]) as first, Simulator(configs[1]) as second:
        yield [first, second]


def write_config(path: Path, targets: dict[str, str], extra: str = "") -> None:
    lines = []
    for name, url in targets.items():
        lines += [
            f"[targets.{name}]",
            'service = "pixverse"',
            f'url = "{url}"',
            'token_env = "USEAPI_TOKEN"',
            f"interval = {INTERVAL}",
            "timeout = 5",
            "capacity_interval = 0",
            "",
        ]
    path.write_text("\n".join(lines) + extra)


def polls(live: Engine, name: str) -> list[float]:
    """When each poll of the target `name` was sent, in order."""
    query = (
        select(Poll.sent_at)
        .join(Target, Target.id == Poll.target_id)
        .where(Target.name == name)
        .order_by(Poll.id)
    )
    return [row[0].timestamp() for row in peek(live, query)]


def lease(live: Engine, name: str) -> tuple[str, float] | None:
    """Who holds the target `name`, and since when; None when nobody does."""
    query = select(Lease.holder, Lease.acquired_at).join(Target, Target.id == Lease.target_id)
    rows = peek(live, query.where(Target.name == name))
    return (rows[0][0], rows[0][1].timestamp()) if rows else None


def test_sighup_reloads_the_config_and_reopens_the_log(
    sims: list[Simulator], db_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "recorder.toml"
    write_config(config, {"one": sims[0].url})
    log = tmp_path / "recorder.log"
    out = tmp_path / "stderr.log"
    command = [sys.executable, "-m", "recorder", "--db", db_url, "--log-file", str(log)]
    command += ["run", "--config", str(config)]
    with out.open("wb") as stderr:
        process = subprocess.Popen(
            command, env=os.environ | {"USEAPI_TOKEN": TOKEN}, stdout=stderr, stderr=stderr
        )

    def alive() -> None:
        running(process, out if out.stat().st_size else log)

    def polled(name: str, more_than: int) -> bool | Unmet:
        alive()
        count = len(polls(live, name))
        return count > more_than or Unmet(f"{count} poll(s) of {name}")

    def logged(text: str, path: Path = log) -> bool | Unmet:
        alive()
        return (path.exists() and text in path.read_text()) or Unmet(tail(path, 600))

    try:
        with reader(db_url) as live:
            wait_for(lambda: polled("one", 3), message="the first target's polls")
            held = lease(live, "one")
            assert held is not None

            # A target added: it starts, and the first one polls on untouched.
            write_config(config, {"one": sims[0].url, "two": sims[1].url})
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: polled("two", 3), message="the added target's polls")
            wait_for(lambda: logged("1 target(s) added, 0 changed, 0 removed, 1 unchanged"))
            before = len(polls(live, "one"))
            wait_for(lambda: polled("one", before + 3), message="polls after the reload")

            # A file that fails its checks: one line, no token, and both targets poll on.
            write_config(config, {"one": sims[0].url, "two": sims[1].url}, f'token = "{TOKEN}"\n')
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: logged("SIGHUP: config file not reloaded"))
            counts = {name: len(polls(live, name)) for name in ("one", "two")}
            for name, count in counts.items():
                wait_for(lambda n=name, c=count: polled(n, c + 3), message=f"{name} after")

            # A target removed: it stops and gives its lease up; the process runs on.
            write_config(config, {"one": sims[0].url})
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: logged("[two] stopped: removed from the config file"))
            wait_for(lambda: lease(live, "two") is None, message="the removed target's lease")
            gone = len(polls(live, "two"))
            before = len(polls(live, "one"))
            wait_for(lambda: polled("one", before + 3), message="polls after the removal")
            assert len(polls(live, "two")) == gone

            # logrotate: the log moved away, SIGHUP opens the path again.
            log.rename(tmp_path / "recorder.log.1")
            process.send_signal(signal.SIGHUP)
            wait_for(lambda: logged("SIGHUP: log file opened again"), message="the new log")
            wait_for(lambda: logged("0 target(s) added, 0 changed, 0 removed, 1 unchanged"))

            # The first target was never stopped: the same lease, and no gap in its polls.
            assert lease(live, "one") == held
            sent = polls(live, "one")
    finally:
        code = stop(process, log)
    assert code == 0, tail(log) + tail(out)
    spacing = [b - a for a, b in itertools.pairwise(sent)]
    assert max(spacing) <= INTERVAL + TOLERANCE_S, max(spacing)
    old, new = (tmp_path / "recorder.log.1").read_text(), log.read_text()
    assert "[one] recording" in old
    assert "0 target(s) added, 0 changed, 0 removed" not in old
    assert "SIGHUP: log file opened again" in new.splitlines()[0]
    assert "[one] recording" not in new
    assert "stopped" in new.splitlines()[-1]
    assert TOKEN not in old + new + out.read_text()
    assert "Traceback" not in old + new
    assert out.read_text() == ""  # with --log-file, nothing on stderr
