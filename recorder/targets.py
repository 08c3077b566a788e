"""Targets as people name them: by name, by service, or by URL (the reports' --target, --service).

A name comes first: ``--target pixverse`` is the target named so. Then a URL, as it was polled,
then any other spelling of it (recorder.urls.same_target_key): ``--target
https://api.useapi.net/v2/pixverse/scheduler`` finds the target first polled with a trailing
slash.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, select

from recorder.models import Target
from recorder.urls import same_target_key


class UnknownTarget(ValueError):
    """A --target or --service that names no target in the database."""


def target_id(conn: Connection, ref: str) -> int:
    """The id of the target named `ref`, else of the one polled at the URL `ref` (as recorded,
    else any spelling of it); UnknownTarget if there is none."""
    for condition in (
        Target.name == ref,
        Target.url == ref,
        Target.url_key == same_target_key(ref),
    ):
        found = conn.scalar(select(Target.id).where(condition))
        if found is not None:
            return int(found)
    raise UnknownTarget(f"no target named {ref!r}, nor polled at that URL, in this database")


def target_ids(conn: Connection, refs: Iterable[str]) -> list[int]:
    """The ids of the targets `refs` name (see `target_id`), in their order."""
    return [target_id(conn, ref) for ref in refs]


def service_target_ids(conn: Connection, services: Iterable[str]) -> list[int]:
    """The ids of the targets of `services`; UnknownTarget for a service no target has."""
    found: list[int] = []
    for service in services:
        ids = conn.scalars(select(Target.id).where(Target.service == service)).all()
        if not ids:
            raise UnknownTarget(f"no target of service {service!r} in this database")
        found += ids
    return found
