"""Normalized poll results: the one shape the client hands to the inference.

Times are floats: seconds since the Unix epoch, UTC. ``sent_at``/``received_at`` are on the
recorder's own clock; ``Item.started`` is on the API server's clock, which may be skewed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Outcome(StrEnum):
    """How a poll ended."""

    OK = "ok"
    NETWORK = "network"  # connection refused, reset, DNS, TLS
    TIMEOUT = "timeout"  # connect or read timeout
    AUTH = "auth"  # 401, 403
    PAYMENT = "payment"  # 402
    RATE_LIMITED = "rate_limited"  # 429
    SERVER = "server"  # 5xx, 596
    BAD_PAYLOAD = "bad_payload"  # not JSON, not a list, HTML, too large, not UTF-8
    HTTP_ERROR = "http_error"  # any other unexpected status (404, 400, ...)
    UNSTORABLE = "unstorable"  # the database would not take the list: kept in quarantine


@dataclass(frozen=True, slots=True)
class Item:
    """One job as listed by the scheduler endpoint, normalized."""

    api_id: str
    type: str | None = None
    started_raw: str | None = None  # exactly as the API sent it, for lossless storage
    started: float | None = None  # parsed `started`, epoch seconds on the server's clock
    elapsed_s: int | None = None  # parsed `elapsed`, whole seconds
    reply_url: str | None = None
    reply_ref: str | None = None
    account: str | None = None  # account email parsed from the id, when it has the known shape
    user_id: str | None = None  # useapi user id parsed from the id


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A successfully parsed list of executing jobs."""

    items: tuple[Item, ...]
    invalid_values: int = 0  # field values that did not parse and were treated as absent
    untracked: int = 0  # items without any usable id
    duplicates: int = 0  # items merged into an earlier item with the same id


@dataclass(frozen=True, slots=True)
class Failure:
    """A poll that produced no usable list."""

    outcome: Outcome
    message: str  # one line, never contains the token
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll produced, with its timing on the recorder's clock."""

    sent_at: float
    received_at: float
    http_status: int | None
    answer: Snapshot | Failure

    @property
    def ok(self) -> bool:
        """True when the poll produced a list."""
        return isinstance(self.answer, Snapshot)
