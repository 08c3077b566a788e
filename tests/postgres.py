"""A throwaway PostgreSQL server for the test suite, and a fresh database per test.

Set RECORDER_TEST_POSTGRES_URL (a superuser URL, e.g. postgresql+psycopg://postgres@host/postgres)
to use a server of your own. Otherwise the suite starts one from the PostgreSQL server binaries
(initdb, pg_ctl) in a temporary directory on 127.0.0.1; the server refuses to run as root, so as
root it runs as the `postgres` user. With CI=true a missing PostgreSQL fails the run instead of
skipping its tests.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ENV_URL = "RECORDER_TEST_POSTGRES_URL"


class Unavailable(Exception):
    """No PostgreSQL can be had; the message says what is missing."""


def _bin_dir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    raise Unavailable(
        f"PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
        f"/usr/lib/postgresql/*/bin; install them or set {ENV_URL}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A PostgreSQL server the suite started, or was given."""

    admin_url: str
    data_dir: Path | None = None
    bin_dir: Path | None = None
    user: str | None = None
    options: str = ""

    def _run(self, *args: str) -> None:
        assert self.bin_dir is not None
        subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            user=self.user,
            cwd="/",
        )

    def restart(self) -> None:
        """Restart the server (fast shutdown: connections are cut)."""
        assert self.data_dir is not None, "only a server the suite started can be restarted"
        data, log = str(self.data_dir / "data"), str(self.data_dir / "log")
        # -l: without a log file the server would keep our captured pipes open.
        self._run("pg_ctl", "-D", data, "-l", log, "-m", "fast", "-w", "restart")

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped for the duration of the block, then started again."""
        assert self.data_dir is not None, "only a server the suite started can be stopped"
        data, log = str(self.data_dir / "data"), str(self.data_dir / "log")
        self._run("pg_ctl", "-D", data, "-m", "fast", "-w", "stop")
        try:
            yield
        finally:
            self._run("pg_ctl", "-D", data, "-o", self.options, "-l", log, "-w", "start")

    def stop(self) -> None:
        """Stop the server and remove its files."""
        if self.data_dir is None:
            return
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.data_dir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @contextlib.contextmanager
    def database(self) -> Iterator[str]:
        """A new, empty database for one test; dropped afterwards."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        admin = create_engine(self.admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(self.admin_url).set(database=name)
            yield url.render_as_string(hide_password=False)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            admin.dispose()


def start() -> Server:
    """The server to test against: $RECORDER_TEST_POSTGRES_URL, else a new one."""
    given = os.environ.get(ENV_URL)
    if given:
        return Server(admin_url=given)
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        raise Unavailable("psycopg is not installed: pip install '.[postgres]'") from exc
    bin_dir = _bin_dir()
    user = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError as exc:
            raise Unavailable(
                "running as root, and there is no `postgres` user to run the server"
            ) from exc
    base = Path(tempfile.mkdtemp(prefix="recorder-pg-"))
    if user is not None:
        shutil.chown(base, user=user)
    server = Server(admin_url="", data_dir=base, bin_dir=bin_dir, user=user)
    port = _free_port()
    server._run(
        "initdb",
        "-D",
        str(base / "data"),
        "-U",
        "recorder",
        "-A",
        "trust",
        "-E",
        "UTF8",
        "--no-sync",
    )
    options = (
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    server.options = options
    server._run(
        "pg_ctl", "-D", str(base / "data"), "-o", options, "-l", str(base / "log"), "-w", "start"
    )
    server.admin_url = f"postgresql+psycopg://recorder@127.0.0.1:{port}/postgres"
    return server


def unavailable(reason: str) -> None:
    """Skip, naming what is missing; with CI=true, fail: CI must test PostgreSQL."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is required in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL not available: {reason}")
