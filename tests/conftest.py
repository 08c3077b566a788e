"""Shared fixtures: a fresh database per test, and helpers to feed the recorder without HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from recorder import db
from recorder.store import Store


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A URL for a new, empty database."""
    return f"sqlite:///{tmp_path / 'recorder.db'}"


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a new database, migrated to the newest schema."""
    engine = db.open_database(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine: Engine) -> Store:
    """A store on a new database."""
    return Store(engine)
