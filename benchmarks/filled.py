"""Filled databases for the report benchmarks: filled once, kept, reused while they hold the fill.

Filling 10,000,000 jobs takes many minutes, so a filled database is kept under a name that says
what it holds (`Spec.name`): on SQLite a file of that name in the directory given, on
PostgreSQL a database of that name beside the one given (on the same server, made with CREATE
DATABASE, as `recreate_postgres` makes the other benchmarks' throwaway databases). Each holds a
one-row marker table, `benchmark_fill`, written last: the fill it holds (jobs, targets, days,
seed and the fill's version), when its history ends, the fill's figures, and what its rollups
were rebuilt for. A database without the marker, or with another fill in it, is emptied and
filled again; one that holds the fill is reused, its schema upgraded and its rollups rebuilt
when the recorder has moved on since.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import make_url

from benchmarks import fill
from recorder import db

MARKER = "benchmark_fill"
PG_NAME_MAX = 63  # PostgreSQL's longest identifier


@dataclass(frozen=True)
class Spec:
    """A fill: `jobs` finished jobs on `targets` targets over `days` days, from `seed`."""

    jobs: int
    targets: int
    days: float
    seed: int = 1

    @property
    def name(self) -> str:
        """The kept database's name (a file name, a PostgreSQL database name)."""
        days = f"{self.days:g}".replace(".", "_")
        return f"fill_{self.jobs}j_{self.targets}t_{days}d_s{self.seed}"

    def key(self) -> str:
        """What the marker records of the fill, to compare with the one asked for."""
        return json.dumps(asdict(self) | {"version": fill.FILL_VERSION}, sort_keys=True)


@dataclass(frozen=True)
class Filled:
    """A database that holds a fill."""

    url: str
    spec: Spec
    end: float  # the history's end, epoch seconds: recent windows are measured back from it
    reused: bool
    figures: dict[str, Any]  # the fill's counts and seconds, from the run that filled it


def sqlite(spec: Spec, directory: Path) -> Filled:
    """The fill in the SQLite file `directory`/NAME.db, reused or made."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{spec.name}.db"
    url = f"sqlite:///{path}"
    if path.exists():
        found = _reuse(url, spec)
        if found is not None:
            return found
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    # The file is the benchmark's own: no syncs during the fill.
    return _fill(url, spec, durable=False)


def postgres(spec: Spec, server: str) -> Filled:
    """The fill in the PostgreSQL database NAME beside `server`'s, reused or made."""
    name, url = _beside(server, spec.name)
    if _exists(server, name):
        found = _reuse(url, spec)
        if found is not None:
            return found
    recreate_postgres(server, spec.name)
    return _fill(url, spec, durable=True)


def recreate_postgres(server: str, suffix: str) -> str:
    """An empty PostgreSQL database beside `server`'s, named with `suffix`: its URL."""
    name, url = _beside(server, suffix)
    drop_postgres(server, suffix)
    with _admin(server) as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return url


def drop_postgres(server: str, suffix: str) -> None:
    """Drop the database beside `server`'s named with `suffix`, if there is one."""
    name, _ = _beside(server, suffix)
    with _admin(server) as conn:
        conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _beside(server: str, suffix: str) -> tuple[str, str]:
    """The name and URL of the database SERVERDB_SUFFIX on `server`'s server."""
    given = make_url(server)
    name = f"{given.database}_{suffix}"
    if len(name.encode()) > PG_NAME_MAX:
        raise ValueError(f"database name {name!r} is longer than PostgreSQL allows")
    return name, given.set(database=name).render_as_string(hide_password=False)


def _exists(server: str, name: str) -> bool:
    with _admin(server) as conn:
        found = conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
        ).first()
    return found is not None


@contextmanager
def _admin(server: str) -> Iterator[Connection]:
    """A connection to `server`'s database that runs CREATE and DROP DATABASE (autocommit)."""
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            yield conn
    finally:
        engine.dispose()


def _reuse(url: str, spec: Spec) -> Filled | None:
    """The database at `url` if it holds `spec`'s fill, brought up to date; else None."""
    plain = create_engine(url)
    try:
        before = db.current_revision(plain)
    finally:
        plain.dispose()
    engine = db.open_database(url)  # upgrades the schema if the recorder has moved on
    try:
        with engine.connect() as conn:
            if not conn.dialect.has_table(conn, MARKER):
                return None
            row = conn.execute(text(f"SELECT fill, end_ts, figures, rollups FROM {MARKER}")).first()
        if row is None or row.fill != spec.key():
            return None
        figures = json.loads(row.figures)
        stamp = fill.rollups_stamp()
        # Upgrading through revision 0007 has just built the rollups with this code.
        built_by_upgrade = before is not None and before < "0007"
        if stamp != row.rollups and not built_by_upgrade:
            rebuilt = fill.rebuild_rollups(engine)
            if rebuilt is not None:
                figures["rollups_rebuilt_on_reuse_s"] = round(rebuilt, 2)
                fill.settle(engine)
            with engine.begin() as conn:
                conn.execute(text(f"UPDATE {MARKER} SET rollups = :stamp"), {"stamp": stamp})
        return Filled(url, spec, float(row.end_ts), True, figures)
    finally:
        engine.dispose()


def _fill(url: str, spec: Spec, *, durable: bool) -> Filled:
    """Fill the empty database at `url`, settle it, and mark it as holding `spec`."""
    engine = db.open_database(url)
    try:
        end = time.time()
        figures = fill.fill(
            engine, spec.jobs, spec.days, spec.seed, end, targets=spec.targets, durable=durable
        )
        figures["settle_s"] = round(fill.settle(engine), 2)
        figures["seconds"] = round(figures["seconds"] + figures["settle_s"], 1)
        with engine.begin() as conn:
            conn.exec_driver_sql(
                f"CREATE TABLE {MARKER} (fill TEXT NOT NULL, end_ts DOUBLE PRECISION NOT NULL, "
                "figures TEXT NOT NULL, rollups TEXT)"
            )
            conn.execute(
                text(f"INSERT INTO {MARKER} VALUES (:fill, :end, :figures, :rollups)"),
                {
                    "fill": spec.key(),
                    "end": end,
                    "figures": json.dumps(figures),
                    "rollups": fill.rollups_stamp(),
                },
            )
    finally:
        engine.dispose()
    return Filled(url, spec, end, False, figures)
