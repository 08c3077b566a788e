"""What a polled URL says by itself: the useapi.net service it belongs to, and its identity.

Pure functions of the URL's text, with no I/O: the store, the reports and migration 0009 (which
backfills the targets recorded before it) share them, so that they can never disagree.

* `service_of_url`: ``https://api.useapi.net/v2/pixverse/scheduler/`` is ``pixverse``; a path
  that names no known service is ``generic``.
* `same_target_key`: two spellings of one endpoint (host case, a trailing slash, a default port,
  ``localhost`` for ``127.0.0.1``) are one target, and keep one history.
* `first_free_name`: a target's default name, its service's, with ``-2``, ``-3``… when taken.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Container
from urllib.parse import SplitResult, urlsplit

GENERIC = "generic"
# The services migration 0009 knew, by the path segment before /scheduler (runway's is
# runwayml).
_SERVICES = {
    "pixverse": "pixverse",
    "kling": "kling",
    "minimax": "minimax",
    "runwayml": "runway",
    "tempolor": "tempolor",
    "ltxstudio": "ltxstudio",
    "riffusion": "riffusion",
    "dreamina": "dreamina",
}
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Names for the loopback address that reach the same server (IPv6's ::1 is another address:
# a server may listen on one and not the other).
_LOOPBACK = {"localhost": "127.0.0.1"}


def scheduler_name(url: str) -> str | None:
    """The path segment before ``scheduler`` in a scheduler URL (``/v1/runwayml/scheduler/`` →
    ``runwayml``; a trailing ``/available`` aside), lower-cased; None if there is none. Never
    raises."""
    try:
        path = urlsplit(url).path
    except ValueError:  # a bad [IPv6] address: the path is still what follows it
        path = re.split(r"[?#]", url, maxsplit=1)[0]
    # Split, not a regex search: linear however long or odd the path.
    segments = path.rstrip("/").lower().split("/")
    if segments[-1] == "available":
        segments.pop()
    if len(segments) >= 2 and segments[-1] == "scheduler" and segments[-2]:
        return segments[-2]
    return None


def service_of_url(url: str) -> str:
    """The service a scheduler URL names among those migration 0009 knew (``pixverse`` for
    ``/v2/pixverse/scheduler/``), or ``generic``.

    Frozen with the migration that labels the targets recorded before it; the recorder itself
    asks `recorder.services.for_url`, whose table grows with the adapters.
    """
    return _SERVICES.get(scheduler_name(url) or "", GENERIC)


def same_target_key(url: str) -> str:
    """The identity of a polled URL: equal for URLs that differ only in the case of the scheme
    or the host, a trailing slash of the path, a default port (80 for http, 443 for https),
    ``localhost`` for ``127.0.0.1``, the spelling of an IP address, or a fragment (never sent).

    Everything else is kept as given: the path's case, user info, the query (a query makes
    another target). A text that is not an absolute URL (no scheme or host, a bad port or IPv6
    address) is its own key, less a trailing slash; it never raises.
    """
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:  # a bad port or a bad [IPv6] address
        return url.rstrip("/") or url
    if not parts.scheme or not parts.netloc or host is None:
        return url.rstrip("/") or url
    scheme = parts.scheme.lower()
    host = _canonical_host(host)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        netloc += f":{port}"
    return _joined(parts, scheme, _userinfo(parts) + netloc)


def _canonical_host(host: str) -> str:
    """The host lower-cased (urlsplit did that), an IP address in its one written form, and
    ``localhost`` as ``127.0.0.1``."""
    host = _LOOPBACK.get(host, host)
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:  # a name
        return host


def _userinfo(parts: SplitResult) -> str:
    """The user info of the URL as written (case and all), with its ``@``; or nothing."""
    netloc = parts.netloc
    return netloc.rpartition("@")[0] + "@" if "@" in netloc else ""


def _joined(parts: SplitResult, scheme: str, netloc: str) -> str:
    key = f"{scheme}://{netloc}{parts.path.rstrip('/')}"
    return f"{key}?{parts.query}" if parts.query else key


def first_free_name(service: str, taken: Container[str]) -> str:
    """A target's default name: its service's, or the first of ``service-2``, ``service-3``…
    not `taken`."""
    name, number = service, 1
    while name in taken:
        number += 1
        name = f"{service}-{number}"
    return name
