"""Turn a scheduler answer into a Snapshot: pure functions, no I/O.

Upstream shapes differ per service and are loosely documented (see api-notes.md), so every
field is optional and a bad value only drops that value, never the poll. JSON ``null`` is
treated as an absent field, not as an invalid one.

A `Layout` says where a service's answer keeps each value of a job (recorder.services holds one
per service); the checking is the same for every layout. `parse_body` reads the generic layout,
which accepts every known shape at once: the fallback for a service without an adapter.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from recorder.snapshot import Item, Snapshot

__all__ = [
    "GENERIC_LAYOUT",
    "LIMITS",
    "Envelope",
    "IdParts",
    "Layout",
    "PayloadError",
    "bound_text",
    "decode_json",
    "is_storable",
    "no_id_parts",
    "normalize_items",
    "parse_account",
    "parse_body",
    "parse_elapsed",
    "parse_started",
    "parse_with",
    "user_id_parts",
]

ID_KEYS: Final = ("id", "videoId", "video_id", "imageId", "taskId", "job_id", "jobId", "jobid")
ELAPSED_KEYS: Final = ("elapsed", "elapsedSeconds")  # elapsedSeconds: Dreamina

# The longest text stored per field, in characters (docs/schema.md). Longer values are cut and
# keep a hash of the whole value, so distinct values stay distinct and the same value always
# maps to the same text: 512 characters of UTF-8 stay under PostgreSQL's B-tree row limit
# (2,704 bytes) in the unique index on job ids, with room to spare.
LIMITS: Final = {
    "id": 512,
    "type": 64,
    "account": 320,
    "user_id": 64,
    "started": 64,
    "replyUrl": 2048,
    "replyRef": 2048,
}
_HASH_CHARS: Final = 16

# Values above this are epoch milliseconds: 1e11 s is the year 5138, 1e11 ms is 1973.
_MS_THRESHOLD: Final = 1e11
# Keeps every accepted start convertible to a datetime on any platform; 0 is a typical
# "unknown" placeholder, not a real start.
_MAX_EPOCH: Final = 253402300800.0  # 10000-01-01T00:00:00Z
# Fits a signed 32-bit column; larger values are garbage for a job's age anyway.
_MAX_ELAPSED: Final = 2**31 - 1

# re.ASCII: \d would otherwise accept other scripts' digits, which int() happily converts.
# Bounded digit counts keep int() away from Python's 4300-digit conversion limit.
_ISO_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"\s*(?:(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2})(?::?(?P<om>\d{2}))?)?",
    re.ASCII,
)
_SECONDS_RE: Final = re.compile(r"\d{1,10}", re.ASCII)
_MM_SS_RE: Final = re.compile(r"(\d{1,9}):(\d{1,2})", re.ASCII)
_H_MM_SS_RE: Final = re.compile(r"(\d{1,9}):(\d{1,2}):(\d{1,2})", re.ASCII)
# An email cannot contain ':', so "<email>-<kind>" is split at its last '-'.
_USER_ID_RE: Final = re.compile(r"user:([^:-]+)-([^:]+):([^:]+)-([^:-]+):(.+)", re.DOTALL)
_LTX_ID_RE: Final = re.compile(r"email:([^:]+):(.+)", re.DOTALL)


class PayloadError(ValueError):
    """The answer body is not a list of executing jobs."""


class Envelope(enum.Enum):
    """Where an answer keeps its list of jobs."""

    LIST = "list"  # a JSON array (or the `executing` array of a /scheduler/available answer)
    BY_ACCOUNT = "by_account"  # {"executing": {"<region>:<account>": [...]}, ...}: Dreamina
    ANY = "any"  # either of them: the generic parser, which knows no service


@dataclass(frozen=True, slots=True)
class IdParts:
    """What a job id itself says about its job; None where it says nothing."""

    type: str | None = None
    account: str | None = None
    user_id: str | None = None


_NO_PARTS: Final = IdParts()


def no_id_parts(api_id: str) -> IdParts:
    """An id that says nothing about its job (a number, a bare UUID)."""
    return _NO_PARTS


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a service's answer keeps each value of a job; the parser checks every value.

    An id comes from the first of `id_keys` that holds a usable one. A type comes from
    `type_key`, else from the id (`id_parts`), else from which key held the id (`id_key_types`);
    an account from the id, else from `account_key`, else from the envelope's account key.
    """

    id_keys: tuple[str, ...]
    envelope: Envelope = Envelope.LIST
    type_key: str | None = "type"
    account_key: str | None = None
    started_key: str | None = "started"
    elapsed_keys: tuple[str, ...] = ("elapsed",)
    id_key_types: tuple[tuple[str, str], ...] = ()
    id_parts: Callable[[str], IdParts] = no_id_parts


@dataclass
class _Tally:
    invalid: int = 0
    untracked: int = 0
    duplicates: int = 0


def parse_body(body: bytes) -> Snapshot:
    """Parse a raw answer body into a Snapshot, raising PayloadError when it is unusable."""
    return parse_with(body, GENERIC_LAYOUT)


def parse_with(body: bytes, layout: Layout) -> Snapshot:
    """Parse an answer laid out as `layout` says into a Snapshot (PayloadError: unusable)."""
    tally = _Tally()
    return _normalize(_entries(decode_json(body), layout.envelope, tally), layout, tally)


def normalize_items(data: list[object]) -> Snapshot:
    """Normalize a list of raw scheduler items into a Snapshot."""
    return _normalize(((raw, None) for raw in data), GENERIC_LAYOUT, _Tally())


def parse_started(value: object) -> float | None:
    """Parse an ISO-8601 string or epoch number (s or ms) into epoch seconds, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _epoch_number(value)
    if isinstance(value, str):
        return _iso_to_epoch(value.strip())
    return None


def parse_elapsed(value: object) -> int | None:
    """Parse MM:SS, H:MM:SS or a number of seconds into whole seconds, else None."""
    if isinstance(value, bool):
        return None
    seconds: int | None
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        # Dreamina's elapsedSeconds may carry a fraction; whole seconds are enough.
        seconds = math.floor(value) if math.isfinite(value) else None
    elif isinstance(value, str):
        seconds = _clock_to_seconds(value.strip())
    else:
        seconds = None
    if seconds is None or not 0 <= seconds <= _MAX_ELAPSED:
        return None
    return seconds


def parse_account(api_id: str) -> tuple[str | None, str | None]:
    """Return (user_id, account) from a useapi job id, or (None, None) for other shapes."""
    match = _USER_ID_RE.fullmatch(api_id)
    if match:
        return match.group(1), match.group(3)
    match = _LTX_ID_RE.fullmatch(api_id)
    if match and "@" in match.group(1):
        return None, match.group(1)
    return None, None


def user_id_parts(api_id: str) -> IdParts:
    """Type (its kind), account, user of a ``user:<user>-<service>:<account>-<kind>:<job>`` id."""
    match = _USER_ID_RE.fullmatch(api_id)
    if match is None:
        return _NO_PARTS
    return IdParts(type=match.group(4), account=match.group(3), user_id=match.group(1))


def _generic_id_parts(api_id: str) -> IdParts:
    # Account and user only: the generic parser has always read the type from `type` alone.
    user_id, account = parse_account(api_id)
    return IdParts(account=account, user_id=user_id)


GENERIC_LAYOUT: Final = Layout(
    id_keys=ID_KEYS,
    envelope=Envelope.ANY,
    account_key="email",
    elapsed_keys=ELAPSED_KEYS,
    id_parts=_generic_id_parts,
)


def decode_json(body: bytes) -> object:
    """The JSON value of an answer body; PayloadError when it is not UTF-8 JSON."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("answer is not UTF-8") from None
    text = text.lstrip("\ufeff \t\r\n")
    if not text:
        raise PayloadError("answer is empty")
    if text.startswith("<"):
        raise PayloadError("answer is HTML, not JSON")
    try:
        return json.loads(text)
    # ValueError also covers ints over Python's digit limit; RecursionError deep nesting.
    except (ValueError, RecursionError):
        raise PayloadError("answer is not JSON") from None


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _article(value: object) -> str:
    kind = _json_type(value)
    return f"an {kind}" if kind in ("object", "array") else f"a {kind}"


def _entries(data: object, envelope: Envelope, tally: _Tally) -> list[tuple[object, str | None]]:
    """The raw items of an answer, each with the account its envelope files it under."""
    by_account = envelope is Envelope.BY_ACCOUNT
    if isinstance(data, list) and not by_account:
        return [(raw, None) for raw in data]
    if isinstance(data, dict) and "executing" in data:
        executing = data["executing"]
        # An `executing` list is taken even from a by-account service: an empty list is the
        # likeliest way for such an answer to say "nothing runs", and it cannot be misread.
        if isinstance(executing, list):
            return [(raw, None) for raw in executing]
        if isinstance(executing, dict) and envelope is not Envelope.LIST:
            return _by_account(executing, tally)
        wanted = "an object" if by_account else "a list"
        raise PayloadError(f"'executing' is {_article(executing)}, not {wanted}")
    if by_account:
        if isinstance(data, dict):
            raise PayloadError("answer is a JSON object without an 'executing' object")
        raise PayloadError(f"answer is a JSON {_json_type(data)}, not an object with 'executing'")
    if isinstance(data, dict):
        raise PayloadError("answer is a JSON object without an 'executing' list")
    raise PayloadError(f"answer is a JSON {_json_type(data)}, not a list")


def _by_account(executing: dict[Any, Any], tally: _Tally) -> list[tuple[object, str | None]]:
    entries: list[tuple[object, str | None]] = []
    for key, items in executing.items():
        if not isinstance(items, list):
            tally.invalid += 1
            continue
        account = _account_from_key(key)
        entries.extend((raw, account) for raw in items)
    return entries


def _account_from_key(key: str) -> str | None:
    # Dreamina keys accounts as "<region>:<email>", e.g. "US:you@example.com".
    _, sep, rest = key.partition(":")
    account = (rest if sep else key).strip()
    return account if account and is_storable(account) else None


def _normalize(
    entries: Iterable[tuple[object, str | None]], layout: Layout, tally: _Tally
) -> Snapshot:
    merged: dict[str, Item] = {}
    for raw, key_account in entries:
        item = _parse_item(raw, key_account, layout, tally)
        if item is None:
            tally.untracked += 1
        elif item.api_id in merged:
            tally.duplicates += 1
            merged[item.api_id] = _merge(merged[item.api_id], item)
        else:
            merged[item.api_id] = item
    # dict keeps first-insertion order, so items stay in the order the API listed them.
    return Snapshot(
        items=tuple(merged.values()),
        invalid_values=tally.invalid,
        untracked=tally.untracked,
        duplicates=tally.duplicates,
    )


def _parse_item(raw: object, key_account: str | None, layout: Layout, tally: _Tally) -> Item | None:
    if not isinstance(raw, dict):
        return None
    found = _find_id(raw, layout.id_keys)
    if found is None:
        return None
    id_key, api_id = found
    parts = layout.id_parts(api_id)
    started_raw, started = _started(_get(raw, layout.started_key), tally)
    account = parts.account
    if account is None:
        account = _text(_get(raw, layout.account_key), tally) or key_account
    kind = _text(_get(raw, layout.type_key), tally) or parts.type
    if kind is None:
        kind = next((t for key, t in layout.id_key_types if key == id_key), None)
    return Item(
        api_id=_bounded(api_id, "id", tally),
        type=_bounded_or_none(kind, "type", tally),
        started_raw=_bounded_or_none(started_raw, "started", tally),
        started=started,
        elapsed_s=_elapsed(raw, layout.elapsed_keys, tally),
        reply_url=_bounded_or_none(_text(raw.get("replyUrl"), tally), "replyUrl", tally),
        reply_ref=_bounded_or_none(_text(raw.get("replyRef"), tally), "replyRef", tally),
        account=_bounded_or_none(account, "account", tally),
        user_id=_bounded_or_none(parts.user_id, "user_id", tally),
    )


def _get(raw: dict[Any, Any], key: str | None) -> object:
    return None if key is None else raw.get(key)


def bound_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, ending in a hash of the whole when it was longer."""
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_CHARS]
    return f"{text[: limit - _HASH_CHARS - 1]}~{digest}"


def _bounded(text: str, field: str, tally: _Tally) -> str:
    if len(text) <= LIMITS[field]:
        return text
    tally.invalid += 1  # clamped: counted like a value the parser could not use as it came
    return bound_text(text, LIMITS[field])


def _bounded_or_none(text: str | None, field: str, tally: _Tally) -> str | None:
    return None if text is None else _bounded(text, field, tally)


def _find_id(raw: dict[Any, Any], keys: tuple[str, ...]) -> tuple[str, str] | None:
    for key in keys:
        api_id = _id_value(raw.get(key))
        if api_id is not None:
            return key, api_id
    return None


def _id_value(value: object) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str) and value.strip() and is_storable(value):
        return value
    return None


def _text(value: object, tally: _Tally) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not is_storable(value):
        tally.invalid += 1
        return None
    return value or None


def is_storable(text: str) -> bool:
    """True when every database can store `text`: no NUL, no lone surrogate."""
    # JSON "\ud800" decodes to a lone surrogate that no UTF-8 database column accepts, and
    # PostgreSQL text refuses NUL ("\u0000").
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _started(value: object, tally: _Tally) -> tuple[str | None, float | None]:
    if value is None:
        return None, None
    started = parse_started(value)
    if started is None:
        tally.invalid += 1
        return None, None
    raw = value if isinstance(value, str) else json.dumps(value)
    return raw, started


def _elapsed(raw: dict[Any, Any], keys: tuple[str, ...], tally: _Tally) -> int | None:
    result: int | None = None
    for key in keys:
        value = raw.get(key)
        if value is None:
            continue
        parsed = parse_elapsed(value)
        if parsed is None:
            tally.invalid += 1
        elif result is None:
            result = parsed
    return result


def _epoch_number(value: float) -> float | None:
    try:
        number = float(value)
    except OverflowError:  # an int beyond float range
        return None
    if not math.isfinite(number):
        return None
    return _in_range(number / 1000 if number > _MS_THRESHOLD else number)


def _iso_to_epoch(text: str) -> float | None:
    match = _ISO_RE.fullmatch(text)
    if not match:
        return None
    year, month, day, hour, minute, second = (int(g or 0) for g in match.groups()[:6])
    fraction = match.group(7) or ""
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=_zone(match))
    except ValueError:  # e.g. 12:45:67, Feb 30, an offset of 24 h or more
        return None
    seconds = moment.timestamp() + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)
    return _in_range(seconds)


def _zone(match: re.Match[str]) -> timezone:
    # No offset at all: the API documents its times as UTC.
    if match.group("sign") is None:
        return UTC
    offset = timedelta(hours=int(match.group("oh")), minutes=int(match.group("om") or 0))
    return timezone(-offset if match.group("sign") == "-" else offset)


def _in_range(seconds: float) -> float | None:
    return seconds if 0 < seconds < _MAX_EPOCH else None


def _clock_to_seconds(text: str) -> int | None:
    if _SECONDS_RE.fullmatch(text):
        return int(text)
    match = _MM_SS_RE.fullmatch(text)
    if match:
        minutes, secs = int(match.group(1)), int(match.group(2))
        return minutes * 60 + secs if secs < 60 else None
    match = _H_MM_SS_RE.fullmatch(text)
    if match:
        hours, minutes, secs = (int(g) for g in match.groups())
        return hours * 3600 + minutes * 60 + secs if minutes < 60 and secs < 60 else None
    return None


def _merge(first: Item, later: Item) -> Item:
    values: dict[str, Any] = {}
    for field in fields(Item):
        value = getattr(first, field.name)
        values[field.name] = getattr(later, field.name) if value is None else value
    return Item(**values)
