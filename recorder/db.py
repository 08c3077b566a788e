"""Opening the database: where it lives by default, engine settings, and schema migrations."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

import platformdirs

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL

# SQLAlchemy and Alembic are imported by the functions that use them, not here: `recorder
# --help` needs neither (SQLAlchemy's import is most of a command's start-up), and a database
# at HEAD_REVISION, as every report and every recording after the first finds it, needs no
# Alembic. tests/test_startup_imports.py checks what each command imports.

ENV_DB = "RECORDER_DB"
# The newest schema revision, known without reading the migration scripts (importing Alembic
# and loading its scripts would cost a report more than its query). A database at this
# revision needs no migration; any other revision is judged by the scripts themselves.
# tests/test_startup_imports.py checks it against Alembic's head: a new migration updates it.
HEAD_REVISION = "0012"
VERSION_TABLE = "alembic_version"
# How long SQLite waits for another writer's lock before it gives up.
SQLITE_BUSY_TIMEOUT_MS = 10_000


# How long to wait for a PostgreSQL server to accept a connection: a host that is down must not
# hold a poll (or a stop request) for the minutes a TCP connect can take.
PG_CONNECT_TIMEOUT_S = 10


class DatabaseError(Exception):
    """The database cannot be used as asked; the message says why, in one line."""


class DatabaseGone(DatabaseError):
    """The SQLite file was deleted or replaced while the recorder had it open."""


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
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", url)


def describe_location(url: str) -> str:
    """Where a database URL points: the absolute file for SQLite, else the masked URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return masked(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return str(Path(parsed.database or "").expanduser().resolve())
    return masked(url)


# The drivers the recorder is tested with, and how to write a URL for each.
SUPPORTED_DRIVERS = ("sqlite", "sqlite+pysqlite", "postgresql+psycopg")
_SUPPORTED = "supported: sqlite:///PATH and postgresql+psycopg://USER@HOST/DB"


def check_url(url: str) -> URL:
    """`url` parsed, if it names a supported driver; else a DatabaseError saying which are."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseError(f"not a database URL: {masked(url)} ({_SUPPORTED})") from None
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise DatabaseError(
            f"unsupported database driver {parsed.drivername!r} in {masked(url)} ({_SUPPORTED})"
        )
    return parsed


def create(url: str, *, readonly: bool = False) -> Engine:
    """An engine for `url`, with the settings the recorder relies on.

    A read-only engine never writes, never takes SQLite's write lock (its transactions are
    plain deferred ones, so a long report never stalls the recording), and creates nothing: a
    missing SQLite file is a DatabaseError.
    """
    from sqlalchemy import create_engine

    parsed = check_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_reader(parsed) if readonly else _sqlite_engine(parsed)
    connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    if readonly:
        connect_args["options"] = "-c default_transaction_read_only=on"
    try:
        # pre_ping: a restarted server's dead connections are replaced instead of failing a poll.
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except ImportError:
        raise DatabaseError(
            f"the {parsed.drivername} driver is not installed: pip install 'recorder[postgres]'"
        ) from None


def sqlite_path(url: URL) -> Path | None:
    """The file behind a SQLite URL; None for an in-memory database."""
    database = url.database or ""
    if url.query.get("mode") == "memory" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):
        # A URI filename: SQLite decodes its %-escapes, so the file is the decoded path.
        database = unquote(database.removeprefix("file:").split("?")[0])
        if database in ("", ":memory:"):
            return None
    return Path(database).expanduser().resolve()


def require_file(url: str) -> None:
    """Refuse a database that vanishes with its connection (SQLite in memory): nothing kept."""
    parsed = check_url(url)
    if parsed.get_backend_name() == "sqlite" and sqlite_path(parsed) is None:
        raise DatabaseError(
            f"{masked(url)} is an in-memory database, which keeps nothing once the recorder "
            "stops (and each connection would see its own): give a file, sqlite:///PATH"
        )


def _sqlite_engine(url: URL) -> Engine:
    from sqlalchemy import create_engine, event

    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    identity: list[os.stat_result] = []  # the file as first opened

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
        if path is not None and not identity:
            identity.append(path.stat())

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if identity:
            _check_same_file(path, identity[0])
        # IMMEDIATE takes the write lock up front, so a busy database waits here (busy
        # timeout) rather than failing half-way through a poll's transaction.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _check_same_file(path: Path | None, first: os.stat_result) -> None:
    """Writes to a deleted or replaced file would go into the void: stop them."""
    assert path is not None
    try:
        now = path.stat()
    except FileNotFoundError:
        raise DatabaseGone(
            f"the database file {path} was deleted; nothing more is written"
        ) from None
    except OSError as exc:
        raise DatabaseGone(f"the database file {path} cannot be checked: {exc}") from None
    if not os.path.samestat(now, first):
        raise DatabaseGone(
            f"the database file {path} was replaced by another file; nothing more is written "
            "to either (restart the recorder to record into the new one)"
        )


def _sqlite_reader(url: URL) -> Engine:
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine import URL

    path = sqlite_path(url)
    if path is None:
        raise DatabaseError(
            f"{masked(url.render_as_string())} is an in-memory database: it holds nothing to read"
        )
    if not path.is_file():
        raise DatabaseError(
            f"no database at {path}: nothing has been recorded there (record with `recorder "
            "run`, or pass --db / set RECORDER_DB to the database you mean)"
        )
    # A URI: `#`, `?` and `%` in the path must be escaped, or SQLite opens another file (built
    # with URL.create: a URL string would have its escapes decoded again).
    reader = URL.create(
        "sqlite", database=f"file:{quote(str(path))}", query={"mode": "ro", "uri": "true"}
    )
    engine = create_engine(reader, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.execute("PRAGMA query_only=ON")
        dbapi_connection.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Deferred: a read transaction sees one snapshot and never blocks the daemon's writes.
        connection.exec_driver_sql("BEGIN")

    return engine


def migrations_path() -> Path:
    """The Alembic script directory: inside the installed package, else the source tree."""
    packaged = resources.files("recorder") / "migrations"
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(engine: Engine | None = None) -> Config:
    """An Alembic config that needs no alembic.ini in the working directory."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    if engine is not None:
        config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    """The newest schema revision this recorder knows, read from its migration scripts."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError("the recorder's migrations are missing")
    return head


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None for a new database).

    Read as Alembic reads it (`MigrationContext.get_current_revision`), without loading Alembic.
    """
    with engine.connect() as connection:
        if not connection.dialect.has_table(connection, VERSION_TABLE):
            return None
        heads = connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").all()
    if len(heads) > 1:
        from alembic.util import CommandError

        raise CommandError(
            f"Version table '{VERSION_TABLE}' has more than one head present; "
            "please use get_current_heads()"
        )
    return str(heads[0][0]) if heads else None


def upgrade(engine: Engine) -> None:
    """Apply every migration the database lacks."""
    from alembic import command

    check_not_newer(engine)
    command.upgrade(alembic_config(engine), "head")


def check_not_newer(engine: Engine) -> None:
    """Refuse a database written by a newer recorder, whose schema we do not know."""
    current = current_revision(engine)
    if current is None or current == HEAD_REVISION:
        return
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if current not in known:
        raise DatabaseError(
            f"the database is at schema revision {current}, which this recorder does not know "
            f"(newest known: {head_revision()}); it was written by a newer recorder: upgrade "
            "the recorder"
        )


def open_database(url: str | None, *, adopt: bool = False) -> Engine:
    """Open the database for writing, creating it or upgrading its schema as needed.

    A database with tables of its own and no recorder schema is another program's: it is
    refused unless `adopt` (`recorder db upgrade`) says to add the recorder's tables to it.
    """
    resolved = resolve_url(url)
    engine = create(resolved)
    with _disposed_on_error(engine, f"cannot open {masked(resolved)}"):
        current = current_revision(engine)
        if current is None and not adopt and _has_tables(engine):
            raise DatabaseError(
                f"{describe_location(resolved)} is not a recorder database: it holds other "
                "tables and no recorder schema. Pass the right --db, or run `recorder db "
                "upgrade` on it to add the recorder's tables anyway"
            )
        # Only a database not at HEAD_REVISION loads the migration scripts (and Alembic).
        if current != HEAD_REVISION and current != head_revision():
            upgrade(engine)
    return engine


def open_readonly(url: str | None) -> Engine:
    """Open an existing recorder database for reading only; create and change nothing."""
    resolved = resolve_url(url)
    engine = create(resolved, readonly=True)
    where = describe_location(resolved)
    with _disposed_on_error(engine, f"cannot read {masked(resolved)}"):
        current = current_revision(engine)
        if current is None:
            raise DatabaseError(
                f"{where} holds no recorder history (not a recorder database, or nothing was "
                "recorded into it yet)"
            )
        if current != HEAD_REVISION:  # only then are the migration scripts read
            check_not_newer(engine)
            head = head_revision()
            if current != head:
                raise DatabaseError(
                    f"{where} is at schema revision {current}, older than this recorder's "
                    f"({head}): run `recorder db upgrade` first (`recorder run` does it too)"
                )
    return engine


@contextmanager
def _disposed_on_error(engine: Engine, failing: str) -> Iterator[None]:
    """Dispose of `engine` if the block fails; any failure becomes one DatabaseError line."""
    try:
        yield
    except DatabaseError:
        engine.dispose()
        raise
    except Exception as exc:
        engine.dispose()
        raise DatabaseError(f"{failing}: {one_line(exc)}") from exc


def _has_tables(engine: Engine) -> bool:
    from sqlalchemy import inspect

    return bool(inspect(engine).get_table_names())


def one_line(exc: BaseException) -> str:
    """A database exception as one line, without the SQL and parameters SQLAlchemy appends."""
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else type(exc).__name__
