"""Alembic environment: runs migrations on the recorder's engine, or on a URL from alembic.ini."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine, text

from recorder import db
from recorder.models import Base

config = context.config
# An arbitrary constant: the advisory lock that serializes migrations on PostgreSQL.
LOCK_KEY = 7_220_431_905
target_metadata = Base.metadata


# Schema objects the models cannot declare, which autogenerate must not compare: the expression
# index of whole days' durations, written per backend by migration 0007.
UNDECLARED = {"ix_jobs_finished_day"}


def _compared(obj: object, name: str | None, type_: str, reflected: bool, other: object) -> bool:
    return not (type_ == "index" and name in UNDECLARED)


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    # Run as `alembic ...` from the source tree: the URL from alembic.ini, else the default.
    return db.create(db.resolve_url(config.get_main_option("sqlalchemy.url") or None))


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (`alembic upgrade --sql`)."""
    context.configure(
        include_object=_compared,
        url=db.resolve_url(config.get_main_option("sqlalchemy.url") or None),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on a live connection, in one transaction."""
    engine = _engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite cannot ALTER most things: batch mode copies the table instead.
            render_as_batch=True,
            compare_type=True,
            include_object=_compared,
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                # Recorders that start together on a new database take turns: the second
                # finds the schema migrated. (On SQLite, BEGIN IMMEDIATE does the same.)
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
            context.run_migrations()
    if "engine" not in config.attributes:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
