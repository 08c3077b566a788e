"""The useapi.net services the recorder knows, each an adapter for its scheduler's answers.

Adding a service is one module here (its `SERVICE`: name, default URL, /available or not, and
where its answers keep each value), one fixture under tests/fixtures/services/, and one line in
the table below. A URL no service claims is read by `GENERIC`, which accepts every known shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from recorder.parse import GENERIC_LAYOUT
from recorder.services import (
    dreamina,
    kling,
    ltxstudio,
    minimax,
    pixverse,
    riffusion,
    runway,
    tempolor,
)
from recorder.services._base import Capacity, Service, parse_available
from recorder.urls import scheduler_name

__all__ = [
    "GENERIC",
    "SERVICES",
    "Capacity",
    "Service",
    "UnknownServiceError",
    "for_url",
    "get",
    "parse_available",
]

SERVICES: Final[Mapping[str, Service]] = MappingProxyType(
    {
        service.name: service
        for service in (
            pixverse.SERVICE,
            kling.SERVICE,
            minimax.SERVICE,
            runway.SERVICE,
            tempolor.SERVICE,
            ltxstudio.SERVICE,
            riffusion.SERVICE,
            dreamina.SERVICE,
        )
    }
)

GENERIC: Final = Service(name="generic", default_url="", has_available=False, layout=GENERIC_LAYOUT)


class UnknownServiceError(KeyError):
    """No service has that name; the message lists the known ones."""

    def __str__(self) -> str:
        # KeyError's own str() shows the repr of its argument, quotes and all.
        return str(self.args[0])


def get(name: str) -> Service:
    """The service called `name` ("generic" too); UnknownServiceError, a KeyError, if none is."""
    if name == GENERIC.name:
        return GENERIC
    try:
        return SERVICES[name]
    except KeyError:
        known = ", ".join([*SERVICES, GENERIC.name])
        raise UnknownServiceError(f"unknown service {name!r}; known: {known}") from None


def for_url(url: str) -> Service:
    """The service whose scheduler a URL's path names (``/v1/kling/scheduler``), else GENERIC.

    The same rule labels a target's service in the database (recorder.store), so a URL's
    parser and its target's service never disagree.
    """
    return _BY_PATH_NAME.get(scheduler_name(url) or "", GENERIC)


# The upstream's names in its paths (runwayml) are not always the service's (runway).
_BY_PATH_NAME: Final = {scheduler_name(s.default_url): s for s in SERVICES.values()}
