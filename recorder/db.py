"""Opening the database: where it lives by default, engine settings, and schema migrations."""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import platformdirs
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_DB = "RECORDER_DB"
# How long SQLite waits for another writer's lock before it gives up.
SQLITE_BUSY_TIMEOUT_MS = 10_000


class DatabaseError(Exception):
    """The database cannot be used as asked; the message says why, in one line."""


def default_path() -> Path:
    """The embedded default: a SQLite file in the user data directory."""
    return platformdirs.user_data_path("recorder", appauthor=False) / "recorder.db"


def resolve_url(url: str | None) -> str:
    """The database URL to use: the one given, else $RECORDER_DB, else the default file."""
    chosen = url or os.environ.get(ENV_DB)
    if chosen:
        return chosen
    return f"sqlite:///{default_path()}"


def masked(url: str) -> str:
    """The URL with any password replaced by ***, fit for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def describe_location(url: str) -> str:
    """Where a database URL points: the absolute file for SQLite, else the masked URL."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return masked(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(Path(parsed.database or "").expanduser().resolve())
    return masked(url)


def create(url: str) -> Engine:
    """An engine for `url`, with the settings the recorder relies on."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise DatabaseError(f"not a database URL: {masked(url)}") from exc
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed)
    # pre_ping: a restarted server's dead connections are replaced instead of failing a poll.
    return create_engine(parsed, pool_pre_ping=True, future=True)


def _sqlite_engine(url: URL) -> Engine:
    database = url.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the daemon's writes
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front, so a busy database waits here (busy
        # timeout) rather than failing half-way through a poll's transaction.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def migrations_path() -> Path:
    """The Alembic script directory: inside the installed package, else the source tree."""
    packaged = resources.files("recorder") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config that needs no alembic.ini in the working directory."""
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest schema revision this recorder knows."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("the recorder's migrations are missing")
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None for a new database)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Apply every migration the database lacks."""
    check_not_newer(engine)
    command.upgrade(alembic_config(engine), "head")


def check_not_newer(engine: Engine) -> None:
    """Refuse a database written by a newer recorder, whose schema we do not know."""
    current = current_revision(engine)
    if current is None:
        return
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise DatabaseError(
            f"the database is at schema revision {current}, which this recorder does not know "
            f"(newest known: {head_revision()}); it was written by a newer recorder: upgrade "
            "the recorder"
        )


def open_database(url: str | None) -> Engine:
    """Open the database, creating it or upgrading its schema as needed."""
    engine = create(resolve_url(url))
    try:
        if current_revision(engine) != head_revision():
            upgrade(engine)
    except DatabaseError:
        engine.dispose()
        raise
    except Exception as exc:
        engine.dispose()
        raise DatabaseError(f"cannot open {masked(resolve_url(url))}: {one_line(exc)}") from exc
    return engine


def one_line(exc: BaseException) -> str:
    """A database exception as one line, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
