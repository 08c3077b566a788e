"""What every service adapter is made of: `Service`, and the capacity answer's `Capacity`.

A service says where its answers keep each value (a `recorder.parse.Layout`); the checking is
recorder.parse's, the same for every service, so a hostile value costs only itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from recorder.parse import (
    GENERIC_LAYOUT,
    LIMITS,
    Layout,
    PayloadError,
    bound_text,
    decode_json,
    is_storable,
    parse_with,
)
from recorder.snapshot import Snapshot

__all__ = ["Capacity", "Service", "parse_available"]

# PixVerse and Kling key accounts by email, MiniMax by account, TemPolor and Riffusion by user id.
_ACCOUNT_KEYS: Final = ("email", "account", "user_id")
# Fits a signed 32-bit column; a larger count of jobs is garbage.
MAX_COUNT: Final = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Capacity:
    """One account's line of a /scheduler/available answer; None where a value was unusable."""

    account: str
    max_jobs: int | None
    executing: int | None
    available: int | None


@dataclass(frozen=True, slots=True)
class Service:
    """One useapi.net service's scheduler: where it is, and where its answers keep each value."""

    name: str
    default_url: str  # the scheduler list URL; "" for the generic fallback
    has_available: bool  # it answers /scheduler/available beside the list
    layout: Layout = GENERIC_LAYOUT
    # It answers what became of a job after it left the list (recorder.outcomes).
    has_outcomes: bool = False

    def parse(self, body: bytes) -> Snapshot:
        """The list answer as a Snapshot; PayloadError when the body is not such a list."""
        return parse_with(body, self.layout)

    def available_url(self, url: str) -> str | None:
        """The /scheduler/available URL beside the list URL `url`; None without one."""
        if not self.has_available:
            return None
        parts = urlsplit(url)
        path = parts.path.rstrip("/")
        if not path.endswith("/available"):
            path += "/available"
        return urlunsplit(parts._replace(path=path))

    def parse_available(self, body: bytes) -> list[Capacity]:
        """Each account's capacity in a /scheduler/available answer (PayloadError: not one)."""
        return parse_available(body)


def parse_available(body: bytes) -> list[Capacity]:
    """Each account's capacity in a /scheduler/available answer, in the order listed.

    An entry without a usable account is dropped, a bad number becomes None, and a later entry
    for the same account only fills what the first one left unknown; PayloadError when the body
    is not an object with an `available` list at all.
    """
    data = decode_json(body)
    entries = data.get("available") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise PayloadError("answer is not a JSON object with an 'available' list")
    merged: dict[str, Capacity] = {}
    for raw in entries:
        capacity = _capacity(raw)
        if capacity is None:
            continue
        earlier = merged.get(capacity.account)
        merged[capacity.account] = capacity if earlier is None else _merge(earlier, capacity)
    return list(merged.values())


def _capacity(raw: object) -> Capacity | None:
    if not isinstance(raw, dict):
        return None
    account = _account(raw)
    if account is None:
        return None
    return Capacity(
        account=account,
        max_jobs=_count(raw.get("maxJobs")),
        executing=_count(raw.get("executing")),
        available=_count(raw.get("available")),
    )


def _account(raw: dict[Any, Any]) -> str | None:
    for key in _ACCOUNT_KEYS:
        value = raw.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # a numeric user id
        if isinstance(value, str) and value.strip() and is_storable(value):
            return bound_text(value, LIMITS["account"])
    return None


def _count(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_COUNT:
        return value
    return None


def _merge(first: Capacity, later: Capacity) -> Capacity:
    values = {f.name: getattr(first, f.name) for f in fields(Capacity)}
    for name, value in values.items():
        if value is None:
            values[name] = getattr(later, name)
    return Capacity(**values)
