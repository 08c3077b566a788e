"""STAND-IN for the services package (issue 11), built in another worktree: replaced at merge.

Only what `recorder.targets` and the CLI need, to the agreed contract: each useapi.net service's
name, default scheduler URL and parser, looked up by name (`get`) or by a URL's path
(`for_url`). Every service parses with `recorder.parse.parse_body` here.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from recorder.parse import parse_body
from recorder.snapshot import Snapshot

__all__ = ["GENERIC", "SERVICES", "Service", "for_url", "get"]


@dataclass(frozen=True, slots=True)
class Service:
    """One useapi.net service's scheduler endpoint."""

    name: str
    default_url: str
    has_available: bool

    def parse(self, body: bytes) -> Snapshot:
        """The scheduler list in `body`, normalized."""
        return parse_body(body)

    def available_url(self, url: str) -> str | None:
        """The /available endpoint beside the scheduler list `url`, if the service has one."""
        return url.rstrip("/") + "/available" if self.has_available else None


_API = "https://api.useapi.net"
SERVICES: Mapping[str, Service] = MappingProxyType(
    {
        service.name: service
        for service in (
            Service("pixverse", f"{_API}/v2/pixverse/scheduler/", True),
            Service("kling", f"{_API}/v1/kling/scheduler", True),
            Service("minimax", f"{_API}/v1/minimax/scheduler/", True),
            Service("runway", f"{_API}/v1/runwayml/scheduler/", False),
            Service("tempolor", f"{_API}/v1/tempolor/scheduler/", True),
            Service("ltxstudio", f"{_API}/v1/ltxstudio/scheduler", False),
            Service("riffusion", f"{_API}/v1/riffusion/scheduler", False),
            Service("dreamina", f"{_API}/v1/dreamina/scheduler", False),
        )
    }
)
GENERIC = Service("generic", "", False)


def get(name: str) -> Service:
    """The service called `name`; KeyError naming the known ones."""
    try:
        return SERVICES[name]
    except KeyError:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(SERVICES)}") from None


def for_url(url: str) -> Service:
    """The service whose scheduler path `url` has, else GENERIC."""
    path = _path(url)
    return next((s for s in SERVICES.values() if _path(s.default_url) == path), GENERIC)


def _path(url: str) -> str:
    return urllib.parse.urlsplit(url).path.rstrip("/")
