"""Tests for recorder.services: each service's adapter on its recorded-style fixture, the table,
URLs, hostile values in every shape, and a round-trip property per shape."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import recorder.services
from recorder.parse import LIMITS, PayloadError, bound_text, parse_body
from recorder.services import GENERIC, SERVICES, Capacity, Service, for_url, get
from recorder.simulator import SERVICE_PATHS
from recorder.snapshot import Item, Snapshot

FIXTURES = Path(__file__).parent / "fixtures" / "services"


def at(text: str) -> Any:
    """Epoch seconds of an ISO time, read without recorder.parse, compared to the microsecond."""
    return pytest.approx(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp(), abs=1e-6)


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


# --- each service's fixture --------------------------------------------------------------------

EXPECTED: dict[str, Snapshot] = {
    "pixverse": Snapshot(
        items=(
            Item(
                api_id="user:12345-pixverse:you@example.com-video:367181931620480",
                type="video",
                started_raw="2024-09-25T01:55:16.128Z",
                started=at("2024-09-25T01:55:16.128Z"),
                elapsed_s=237,
                reply_url="https://hooks.example.com/useapi/pixverse",
                reply_ref="order-20481",
                account="you@example.com",
                user_id="12345",
            ),
            Item(
                api_id="user:12345-pixverse:render-farm@example.org-image:367182042918976",
                type="image",
                started_raw="2024-09-25T01:58:38.555Z",
                started=at("2024-09-25T01:58:38.555Z"),
                elapsed_s=34,
                account="render-farm@example.org",
                user_id="12345",
            ),
            Item(  # no `type`: the id's kind names it
                api_id="user:12345-pixverse:render-farm@example.org-music:367182190555200",
                type="music",
                started_raw="2024-09-25T01:59:00.003Z",
                started=at("2024-09-25T01:59:00.003Z"),
                elapsed_s=13,
                account="render-farm@example.org",
                user_id="12345",
            ),
            Item(  # the 2024 endpoint's `videoId`, past an hour
                api_id="user:12345-pixverse:you@example.com-video:367180000000001",
                type="video",
                started_raw="2024-09-25T00:50:29.250Z",
                started=at("2024-09-25T00:50:29.250Z"),
                elapsed_s=68 * 60 + 44,
                account="you@example.com",
                user_id="12345",
            ),
        )
    ),
    "kling": Snapshot(
        items=(
            Item(
                api_id="123456789",
                started_raw="2025-04-18T12:34:56.789Z",
                started=at("2025-04-18T12:34:56.789Z"),
                elapsed_s=225,
                reply_url="https://example.com/webhook",
                reply_ref="reference-id",
                account="you@example.com",
            ),
            Item(
                api_id="987654321",
                started_raw="2025-04-18T12:38:12.004Z",
                started=at("2025-04-18T12:38:12.004Z"),
                elapsed_s=29,
                account="studio@example.com",
            ),
            # The upstream's own example has seconds of 67: that start drops, nothing else.
            Item(api_id="555000111", elapsed_s=154, account="studio@example.com"),
        ),
        invalid_values=1,
    ),
    "minimax": Snapshot(
        items=(
            Item(
                api_id="user:12345-minimax:you@example.com-video:377431834338367491",
                type="video",
                started_raw="2025-03-17T09:12:03.417Z",
                started=at("2025-03-17T09:12:03.417Z"),
                elapsed_s=242,
                reply_url="https://hooks.example.com/useapi/minimax",
                reply_ref="batch-7",
                account="you@example.com",
                user_id="12345",
            ),
            Item(
                api_id="user:12345-minimax:you@example.com-image:377432870190452741",
                type="image",
                started_raw="2025-03-17T09:15:49.020Z",
                started=at("2025-03-17T09:15:49.020Z"),
                elapsed_s=16,
                account="you@example.com",
                user_id="12345",
            ),
            Item(  # an image under `videoId`, started as epoch milliseconds
                api_id="user:12345-minimax:studio@example.com-image:377432911001288710",
                type="image",
                started_raw="1742202956130",
                started=at("2025-03-17T09:15:56.130Z"),
                elapsed_s=9,
                account="studio@example.com",
                user_id="12345",
            ),
            Item(  # a bare id: the key it came under is all that says what it is
                api_id="377432950000000000",
                type="image",
                started_raw="2025-03-17T09:16:01.555Z",
                started=at("2025-03-17T09:16:01.555Z"),
                elapsed_s=3,
            ),
        )
    ),
    "runway": Snapshot(
        items=(
            Item(
                api_id="user:12345-runwayml:you@example.com-task:0f8fad5b-d9cb-469f-a165-70867728950e",
                type="task",
                reply_url="https://hooks.example.com/useapi/runway",
                reply_ref="clip-7",
                account="you@example.com",
                user_id="12345",
            ),
            Item(
                api_id="user:12345-runwayml:studio@example.com-task:7c9e6679-7425-40de-944b-e07fc1f90ae7",
                type="task",
                account="studio@example.com",
                user_id="12345",
            ),
            Item(  # a number for replyUrl: dropped, and counted
                api_id="user:12345-runwayml:studio@example.com-task:9a2b4c1e-0d3f-4e5a-8b6c-7d8e9f0a1b2c",
                type="task",
                account="studio@example.com",
                user_id="12345",
            ),
        ),
        invalid_values=1,
    ),
    "tempolor": Snapshot(
        items=(
            Item(
                api_id="user:12345-tempolor:3391757024-job:abcdef123456789",
                started_raw="2025-05-15T12:34:56.789Z",
                started=at("2025-05-15T12:34:56.789Z"),
                elapsed_s=83,
                reply_url="https://example.com/callback",
                reply_ref="my-reference",
                account="3391757024",
                user_id="12345",
            ),
            Item(
                api_id="user:12345-tempolor:6728810453-job:0d1e2f3a4b5c6d7",
                started_raw="2025-05-15T12:35:40.112Z",
                started=at("2025-05-15T12:35:40.112Z"),
                elapsed_s=39,
                account="6728810453",
                user_id="12345",
            ),
            Item(  # no elapsed
                api_id="user:12345-tempolor:6728810453-job:99aa88bb77cc66d",
                started_raw="2025-05-15T12:36:12.000Z",
                started=at("2025-05-15T12:36:12.000Z"),
                account="6728810453",
                user_id="12345",
            ),
        )
    ),
    "ltxstudio": Snapshot(
        items=(
            Item(
                api_id="email:you@example.com:7a34b821-9fd0-405e-a21b-4abc6f7839e7-type:image",
                type="image",
                started_raw="2025-06-03T12:34:56.789Z",
                started=at("2025-06-03T12:34:56.789Z"),
                elapsed_s=45,
                reply_url="https://example.com/webhook",
                reply_ref="reference-id",
                account="you@example.com",
            ),
            Item(
                api_id="email:you@example.com:8b45c932-0ae1-416f-b32c-5bcd6f8940f8-type:video",
                type="video",
                started_raw="2025-06-03T12:32:10.250Z",
                started=at("2025-06-03T12:32:10.250Z"),
                elapsed_s=211,
                account="you@example.com",
            ),
            Item(  # `email` null: the id still names the account
                api_id="email:studio@example.com:1c2d3e4f-5a6b-4c7d-8e9f-0a1b2c3d4e5f-type:video",
                type="video",
                started_raw="2025-06-03T12:35:30.000Z",
                started=at("2025-06-03T12:35:30.000Z"),
                elapsed_s=11,
                account="studio@example.com",
            ),
        )
    ),
    "riffusion": Snapshot(
        items=(
            Item(
                api_id="5f0c8a1e-3b2d-4c6e-9a7f-1e2d3c4b5a69",
                started_raw="2025-02-12T01:55:16.128Z",
                started=at("2025-02-12T01:55:16.128Z"),
                elapsed_s=237,
                reply_url="https://hooks.example.com/useapi/riffusion",
                reply_ref="song-31",
                account="e3a1f0c2-7b6d-4e5f-8a9b-0c1d2e3f4a5b",
            ),
            Item(
                api_id="b7e6d5c4-a3b2-4c1d-8e0f-9a8b7c6d5e4f",
                started_raw="2025-02-12T01:58:38.228Z",
                started=at("2025-02-12T01:58:38.228Z"),
                elapsed_s=35,
                account="e3a1f0c2-7b6d-4e5f-8a9b-0c1d2e3f4a5b",
            ),
            Item(  # an empty user_id: no account
                api_id="0a9b8c7d-6e5f-4a3b-9c2d-1e0f9a8b7c6d",
                started_raw="2025-02-12T01:59:01.500Z",
                started=at("2025-02-12T01:59:01.500Z"),
                elapsed_s=12,
            ),
        )
    ),
    "dreamina": Snapshot(
        items=(
            Item(
                api_id="j0223140530123456789v-u12345-US:you@example.com:dreamina",
                type="seedance-2.0",
                elapsed_s=45,
                reply_url="https://your-domain.com/webhook",
                account="you@example.com",
            ),
            Item(  # a fraction of a second
                api_id="j0223140611987654321v-u12345-US:you@example.com:dreamina",
                type="seedance-2.0",
                elapsed_s=9,
                account="you@example.com",
            ),
            Item(  # no model
                api_id="j0223140422555444333v-u12345-US:studio@example.com:dreamina",
                elapsed_s=113,
                account="studio@example.com",
            ),
        )
    ),
}


@pytest.mark.parametrize("name", list(SERVICES))
def test_fixture_parses_to_the_expected_snapshot(name: str) -> None:
    assert SERVICES[name].parse(fixture(name)) == EXPECTED[name]


def test_adding_a_service_is_one_module_one_fixture_one_line() -> None:
    package = recorder.services
    modules = {m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")}
    assert modules == set(SERVICES)
    for name in modules:
        module = importlib.import_module(f"recorder.services.{name}")
        assert SERVICES[name] is module.SERVICE
        assert (FIXTURES / f"{name}.json").is_file()
    assert set(EXPECTED) == set(SERVICES)
    assert {p.stem for p in FIXTURES.glob("*.json")} == set(SERVICES)


def test_the_table() -> None:
    assert list(SERVICES) == [
        "pixverse",
        "kling",
        "minimax",
        "runway",
        "tempolor",
        "ltxstudio",
        "riffusion",
        "dreamina",
    ]
    assert all(name == service.name for name, service in SERVICES.items())
    with_available = {name for name, service in SERVICES.items() if service.has_available}
    # Riffusion's /available is documented upstream too (it is retired, but the shape stays).
    assert with_available == {"pixverse", "kling", "minimax", "tempolor", "riffusion"}
    assert all(s.default_url.startswith("https://api.useapi.net/v") for s in SERVICES.values())
    with pytest.raises(TypeError):
        SERVICES["x"] = GENERIC  # type: ignore[index]


def test_generic_is_todays_parser() -> None:
    assert (GENERIC.name, GENERIC.default_url, GENERIC.has_available) == ("generic", "", False)
    assert GENERIC.available_url("https://api.useapi.net/v2/pixverse/scheduler/") is None
    for name in SERVICES:
        assert GENERIC.parse(fixture(name)) == parse_body(fixture(name))


def test_the_generic_parser_reads_every_fixture_but_knows_less() -> None:
    # What the adapters add: PixVerse's type from the id, MiniMax's from its key, ...
    generic = parse_body(fixture("pixverse"))
    assert [i.type for i in generic.items] == ["video", "image", None, None]
    assert [i.api_id for i in generic.items] == [i.api_id for i in EXPECTED["pixverse"].items]


# --- the table's look-ups ----------------------------------------------------------------------


@pytest.mark.parametrize("name", [*SERVICES, "generic"])
def test_get(name: str) -> None:
    assert get(name).name == name


def test_get_unknown_lists_the_known_names() -> None:
    with pytest.raises(KeyError) as caught:
        get("midjourney")
    message = str(caught.value)
    assert message.startswith("unknown service 'midjourney'; known: pixverse, kling, ")
    assert message.endswith("dreamina, generic")


def variants(url: str) -> list[str]:
    path = urlsplit(url).path
    stripped = path.rstrip("/")
    return [
        url,
        url.rstrip("/"),
        url.rstrip("/") + "/",
        url.rstrip("/") + "//",
        url + "?verbose=1",
        url.replace("https://", "HTTPS://").upper(),
        f"http://127.0.0.1:8765{path}",
        f"http://127.0.0.1:8765{stripped}",
        f"http://localhost{stripped}/available",
        f"https://proxy.example.com/useapi{stripped}/",
    ]


@pytest.mark.parametrize("name", list(SERVICES))
def test_for_url_finds_the_service(name: str) -> None:
    service = SERVICES[name]
    for url in variants(service.default_url):
        assert for_url(url) is service, url


@pytest.mark.parametrize("name", list(SERVICES))
def test_for_url_on_the_simulators_urls(name: str) -> None:
    # The simulator serves each service at the path of its default URL (not shared code: two
    # independent statements of the same fact).
    assert SERVICE_PATHS[name] == urlsplit(SERVICES[name].default_url).path
    assert for_url(f"http://127.0.0.1:40123{SERVICE_PATHS[name]}") is SERVICES[name]


@pytest.mark.parametrize(
    "url",
    [
        "",
        "not a url",
        "http://[::1",  # urlsplit refuses it
        "https://api.useapi.net/",
        "https://api.useapi.net/v1/midjourney/scheduler",
        "https://api.useapi.net/v2/pixverse/videos/",
        "https://api.useapi.net/v2/pixverse/scheduler/123456",
        "https://api.useapi.net/v2/pixverse/scheduler/available/x",
        "https://api.useapi.net/scheduler",
        "https://api.useapi.net/v1/runway/scheduler",  # the upstream says runwayml
        "https://pixverse.example.com/",
        "http://127.0.0.1:8765/" + "a/" * 10_000,
    ],
)
def test_for_url_unknown_is_generic(url: str) -> None:
    assert for_url(url) is GENERIC


@pytest.mark.parametrize("name", list(SERVICES))
def test_available_url(name: str) -> None:
    service = SERVICES[name]
    url = service.available_url(service.default_url)
    if not service.has_available:
        assert url is None
        return
    assert url == service.default_url.rstrip("/") + "/available"
    assert service.available_url(service.default_url.rstrip("/")) == url
    assert service.available_url(url or "") == url
    assert for_url(url or "") is service
    local = f"http://127.0.0.1:8765{SERVICE_PATHS[name]}"
    assert service.available_url(local) == f"http://127.0.0.1:8765{urlsplit(url).path}"


# --- the body as a whole -----------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVICES))
@pytest.mark.parametrize(
    "body",
    [b"", b"<html>502</html>", b"[1, 2", b"\xff", b"42", b'"text"', b"null", b'{"error": "x"}'],
)
def test_an_unusable_body_is_a_payload_error(name: str, body: bytes) -> None:
    with pytest.raises(PayloadError):
        SERVICES[name].parse(body)


@pytest.mark.parametrize("name", list(SERVICES))
def test_the_wrong_envelope_is_a_payload_error(name: str) -> None:
    service = SERVICES[name]
    # A list service fed Dreamina's envelope, and Dreamina fed a list: misconfigured, not empty.
    other = fixture("pixverse" if name == "dreamina" else "dreamina")
    with pytest.raises(PayloadError, match=r"not an object|not a list"):
        service.parse(other)


@pytest.mark.parametrize("name", list(SERVICES))
def test_nothing_running(name: str) -> None:
    empty = b'{"executing": {}, "total": 0}' if name == "dreamina" else b"[]"
    assert SERVICES[name].parse(empty) == Snapshot(items=())
    # The /available answer's `executing` list reads too (Dreamina: an empty list of accounts).
    assert SERVICES[name].parse(b'{"executing": [], "available": []}') == Snapshot(items=())


def test_dreamina_keeps_other_accounts_when_one_is_garbage() -> None:
    body = {
        "executing": {
            "US:a@example.com": [{"jobid": "j1", "elapsedSeconds": 3}],
            "US:b@example.com": {"jobid": "j2"},
            "": [{"jobid": "j3"}],
        },
        "total": 3,
    }
    assert SERVICES["dreamina"].parse(json.dumps(body).encode()) == Snapshot(
        items=(Item(api_id="j1", elapsed_s=3, account="a@example.com"), Item(api_id="j3")),
        invalid_values=1,
    )


def test_an_item_without_the_services_id_is_untracked() -> None:
    # Another service's id key is not this one's: the item cannot be followed, and the client
    # then distrusts the whole list rather than close jobs that may still run.
    body = b'[{"id": "user:1-pixverse:a@b.c-video:1"}, {"job_id": "user:1-tempolor:7-job:2"}]'
    assert SERVICES["tempolor"].parse(body) == Snapshot(
        items=(Item(api_id="user:1-tempolor:7-job:2", account="7", user_id="1"),), untracked=1
    )


def test_duplicates_merge_as_in_the_generic_parser() -> None:
    body = json.dumps(
        [
            {"id": 7, "email": "a@example.com", "elapsed": "bad"},
            {"id": "7", "started": "2025-04-18T12:34:56.789Z", "elapsed": "00:05"},
        ]
    ).encode()
    assert SERVICES["kling"].parse(body) == Snapshot(
        items=(
            Item(
                api_id="7",
                started_raw="2025-04-18T12:34:56.789Z",
                started=at("2025-04-18T12:34:56.789Z"),
                elapsed_s=5,
                account="a@example.com",
            ),
        ),
        invalid_values=1,
        duplicates=1,
    )


# --- rendering a job in each shape (for the hostile values and the round trip) -----------------


@dataclass(frozen=True)
class Job:
    """What a job is, before a service's answer spells it."""

    key: str  # the job's own part of its id: digits, or a UUID-like token
    type: str
    account: str
    user_id: str
    started_ms: int
    elapsed: int
    reply_url: str | None = None
    reply_ref: str | None = None

    @property
    def started(self) -> str:
        moment = datetime.fromtimestamp(self.started_ms // 1000, UTC)
        return f"{moment:%Y-%m-%dT%H:%M:%S}.{self.started_ms % 1000:03d}Z"

    @property
    def mm_ss(self) -> str:
        return f"{self.elapsed // 60:02d}:{self.elapsed % 60:02d}"


def _timed(job: Job) -> dict[str, Any]:
    return {"started": job.started, "elapsed": job.mm_ss}


def _replies(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if job.reply_url is not None:
        out["replyUrl"] = job.reply_url
    if job.reply_ref is not None:
        out["replyRef"] = job.reply_ref
    return out


@dataclass(frozen=True)
class Shape:
    """A service's item for a job, and the Item the adapter must make of it."""

    item: Callable[[Job], dict[str, Any]]
    api_id: Callable[[Job], str]
    carries: frozenset[str]  # the Item fields the shape carries; the others must be None
    fixed_type: str | None = None  # Runway's "task"


def _carried(name: str, job: Job) -> Item:
    shape = SHAPES[name]
    values = {
        "type": job.type,
        "account": job.account,
        "user_id": job.user_id,
        "started_raw": job.started,
        "started": pytest.approx(job.started_ms / 1000, abs=1e-6),
        "elapsed_s": job.elapsed,
        "reply_url": job.reply_url,
        "reply_ref": job.reply_ref,
    }
    item = Item(api_id=shape.api_id(job), **{k: v for k, v in values.items() if k in shape.carries})
    return replace(item, type=shape.fixed_type) if shape.fixed_type else item


def _user(service: str, kind: str | None = None) -> Callable[[Job], str]:
    return lambda j: f"user:{j.user_id}-{service}:{j.account}-{kind or j.type}:{j.key}"


TIMED = frozenset({"started_raw", "started", "elapsed_s"})
REPLIES = frozenset({"reply_url", "reply_ref"})
SHAPES: dict[str, Shape] = {
    "pixverse": Shape(
        lambda j: {"id": _user("pixverse")(j), "type": j.type, **_timed(j), **_replies(j)},
        _user("pixverse"),
        frozenset({"type", "account", "user_id"}) | TIMED | REPLIES,
    ),
    "kling": Shape(
        lambda j: {"id": int(j.key), "email": j.account, **_timed(j), **_replies(j)},
        lambda j: str(int(j.key)),
        frozenset({"account"}) | TIMED | REPLIES,
    ),
    "minimax": Shape(
        lambda j: {
            ("videoId" if j.type == "video" else "imageId"): _user("minimax")(j),
            **_timed(j),
            **_replies(j),
        },
        _user("minimax"),
        frozenset({"type", "account", "user_id"}) | TIMED | REPLIES,
    ),
    "runway": Shape(
        lambda j: {"taskId": _user("runwayml", "task")(j), **_replies(j)},
        _user("runwayml", "task"),
        frozenset({"account", "user_id"}) | REPLIES,
        fixed_type="task",
    ),
    "tempolor": Shape(
        lambda j: {"job_id": _user("tempolor", "job")(j), **_timed(j), **_replies(j)},
        _user("tempolor", "job"),
        frozenset({"account", "user_id"}) | TIMED | REPLIES,
    ),
    "ltxstudio": Shape(
        lambda j: {
            "jobId": f"email:{j.account}:{j.key}-type:{j.type}",
            "email": j.account,
            **_timed(j),
            **_replies(j),
        },
        lambda j: f"email:{j.account}:{j.key}-type:{j.type}",
        frozenset({"type", "account"}) | TIMED | REPLIES,
    ),
    "riffusion": Shape(
        lambda j: {"job_id": j.key, "user_id": j.account, **_timed(j), **_replies(j)},
        lambda j: j.key,
        frozenset({"account"}) | TIMED | REPLIES,
    ),
    "dreamina": Shape(
        lambda j: {
            "jobid": j.key,
            "submitId": "a1b2c3d4-e5f6-4890-abcd-ef1234567890",
            "model": j.type,
            "elapsedSeconds": j.elapsed,
            **({} if j.reply_url is None else {"replyUrl": j.reply_url}),
        },
        lambda j: j.key,
        frozenset({"type", "account", "elapsed_s", "reply_url"}),
    ),
}


def body_of(name: str, items: list[tuple[Job, dict[str, Any]]]) -> bytes:
    """The answer listing `items` (job, its rendered item) in service `name`'s envelope."""
    if name != "dreamina":
        return json.dumps([item for _, item in items]).encode()
    executing: dict[str, list[dict[str, Any]]] = {}
    for job, item in items:
        executing.setdefault(f"US:{job.account}", []).append(item)
    return json.dumps({"executing": executing, "total": len(items)}).encode()


def test_shapes_cover_every_service() -> None:
    assert set(SHAPES) == set(SERVICES)


# --- hostile values ----------------------------------------------------------------------------

JOB_A = Job("415926535", "video", "alice@example.com", "12345", 1727229316128, 237, "https://cb/")
JOB_B = Job("271828182", "image", "bob@example.org", "12345", 1727229498555, 35, None, "ref-2")

HOSTILE: list[object] = [
    "x" * 100_000,
    "\x00nul",
    "\ud800",
    "",
    "   ",
    0,
    -1,
    1.5,
    1e308,
    10**30,
    True,
    None,
    [],
    ["video", 1],
    {"nested": {"deeper": [1, {"deepest": None}], "s": "x" * 5000}},
]
# The Item fields each key of an item feeds, beyond the id's own.
FEEDS = {
    "type": {"type"},
    "model": {"type"},
    "started": {"started", "started_raw"},
    "elapsed": {"elapsed_s"},
    "elapsedSeconds": {"elapsed_s"},
    "email": {"account"},
    "user_id": {"account"},
    "replyUrl": {"reply_url"},
    "replyRef": {"reply_ref"},
    "submitId": set(),
}


def _acceptable(field: str, value: object, expected: object) -> bool:
    """A field a hostile value fed is the expected value (a fallback), absent, or in bounds."""
    if value is None or value == expected:
        return True
    if field == "started":
        return isinstance(value, float) and value > 0
    if field == "elapsed_s":
        return isinstance(value, int) and 0 <= value < 2**31
    limits = {"started_raw": "started", "reply_url": "replyUrl", "reply_ref": "replyRef"}
    return isinstance(value, str) and len(value) <= LIMITS[limits.get(field, field)]


def _cases() -> list[tuple[str, str]]:
    return [(name, key) for name, shape in SHAPES.items() for key in shape.item(JOB_A)]


@pytest.mark.parametrize(("name", "key"), _cases(), ids=lambda v: str(v))
def test_a_hostile_value_costs_only_itself(name: str, key: str) -> None:
    shape, service = SHAPES[name], SERVICES[name]
    clean = shape.item(JOB_A)
    expected_a, expected_b = _carried(name, JOB_A), _carried(name, JOB_B)
    is_id = key not in FEEDS
    for value in HOSTILE:
        hostile = {**clean, key: value}
        snapshot = service.parse(body_of(name, [(JOB_A, hostile), (JOB_B, shape.item(JOB_B))]))
        assert expected_b in snapshot.items, (key, value)  # the neighbour is untouched
        assert snapshot.duplicates == 0
        assert snapshot.invalid_values <= 1  # one value, one count at most
        if is_id:
            assert len(snapshot.items) + snapshot.untracked == 2
            continue
        assert snapshot.untracked == 0
        (got,) = [item for item in snapshot.items if item.api_id == expected_a.api_id]
        for field in fields(Item):
            mine, theirs = getattr(got, field.name), getattr(expected_a, field.name)
            if field.name in FEEDS[key]:
                assert _acceptable(field.name, mine, theirs), (key, value, field.name, mine)
            else:
                assert mine == theirs, (key, value, field.name)


@pytest.mark.parametrize("name", list(SERVICES))
def test_a_huge_id_is_bounded_and_kept_apart(name: str) -> None:
    shape = SHAPES[name]
    job = replace(JOB_A, key="9" * 3000)  # digits, so that it is Kling's number too
    body = body_of(name, [(job, shape.item(job)), (JOB_B, shape.item(JOB_B))])
    snapshot = SERVICES[name].parse(body)
    assert snapshot.items == (
        replace(_carried(name, job), api_id=bound_text(shape.api_id(job), LIMITS["id"])),
        _carried(name, JOB_B),
    )
    assert snapshot.invalid_values == 1


@pytest.mark.parametrize("name", list(SERVICES))
@pytest.mark.parametrize("junk", [1, "item", None, [], [{"id": 1}], {}, {"nothing": "here"}])
def test_junk_items_are_untracked(name: str, junk: object) -> None:
    body = json.loads(body_of(name, [(JOB_B, SHAPES[name].item(JOB_B))]))
    listed = body["executing"][f"US:{JOB_B.account}"] if name == "dreamina" else body
    listed.append(junk)
    snapshot = SERVICES[name].parse(json.dumps(body).encode())
    assert snapshot == Snapshot(items=(_carried(name, JOB_B),), untracked=1)


# --- round trip --------------------------------------------------------------------------------

EMAILS = st.from_regex(
    r"[a-z0-9][a-z0-9._+-]{0,20}@[a-z0-9-]{1,12}(\.[a-z]{2,6}){1,2}", fullmatch=True
)
TYPES = st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True)
JOBS = st.builds(
    Job,
    key=st.from_regex(r"[1-9][0-9]{0,17}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}", fullmatch=True),
    type=TYPES,
    account=EMAILS,
    user_id=st.from_regex(r"[0-9]{1,9}", fullmatch=True),
    # 2001 to 2100, whole milliseconds, as the upstream keeps them
    started_ms=st.integers(978_307_200_000, 4_102_444_800_000),
    elapsed=st.integers(0, 10**6),
    reply_url=st.none() | st.just("https://hooks.example.com/x"),
    reply_ref=st.none()
    | st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=20),
)


@pytest.mark.parametrize("name", list(SERVICES))
@settings(database=None, max_examples=60)
@given(jobs=st.lists(JOBS, max_size=6, unique_by=lambda j: j.key))
def test_rendered_items_parse_back(name: str, jobs: list[Job]) -> None:
    shape = SHAPES[name]
    if name == "kling":  # its ids are numbers
        jobs = [j for j in jobs if j.key.isdigit()]
    snapshot = SERVICES[name].parse(body_of(name, [(j, shape.item(j)) for j in jobs]))
    expected = [_carried(name, j) for j in jobs]
    if name == "dreamina":  # listed account by account
        order = list(dict.fromkeys(j.account for j in jobs))
        expected.sort(key=lambda i: order.index(i.account or ""))
    assert snapshot == Snapshot(items=tuple(expected))


# --- /scheduler/available ----------------------------------------------------------------------


def test_parse_available_documented_shapes() -> None:
    body = {
        "executing": [{"id": 1}],
        "available": [
            {"email": "a@example.com", "maxJobs": 5, "executing": 1, "available": 4},
            {"account": "<account_2>", "maxJobs": 5, "executing": 3, "available": 2},
            {"user_id": "12345", "maxJobs": 10, "executing": 0, "available": 10},
            {"user_id": 67890, "maxJobs": 5.0, "executing": 0, "available": 5},
        ],
    }
    assert SERVICES["kling"].parse_available(json.dumps(body).encode()) == [
        Capacity("a@example.com", 5, 1, 4),
        Capacity("<account_2>", 5, 3, 2),
        Capacity("12345", 10, 0, 10),
        Capacity("67890", 5, 0, 5),
    ]


def test_parse_available_drops_bad_values_only() -> None:
    body = {
        "available": [
            "junk",
            None,
            {"maxJobs": 3},  # whose?
            {"email": 5.5, "maxJobs": 3},
            {"email": "", "account": "\x00", "user_id": "u1", "maxJobs": -1, "executing": True},
            {"email": "a@x.io", "maxJobs": "3", "executing": 2.5, "available": 2**40},
            {"email": "a@x.io", "maxJobs": 4, "executing": 1, "available": None},
            {"email": "e" * 5000, "maxJobs": [3], "executing": {"n": 1}, "available": 1e400},
        ],
    }
    capacities = Service("x", "", True).parse_available(json.dumps(body).encode())
    assert capacities == [
        Capacity("u1", None, None, None),
        Capacity("a@x.io", 4, 1, None),  # the second line fills what the first left unknown
        Capacity(bound_text("e" * 5000, LIMITS["account"]), None, None, None),
    ]


@pytest.mark.parametrize(
    "body",
    [b"[]", b"{}", b'{"executing": []}', b'{"available": 5}', b'{"available": {}}', b"<html>"],
)
def test_parse_available_refuses_another_shape(body: bytes) -> None:
    with pytest.raises(PayloadError):
        SERVICES["pixverse"].parse_available(body)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["email", "account", "user_id", "maxJobs", "executing", "available"])
            | st.text(max_size=5),
            children,
            max_size=6,
        )
    ),
    max_leaves=30,
)


@settings(database=None)
@given(JSON)
def test_parse_available_only_raises_payload_error(data: object) -> None:
    for body in (data, {"available": data}, {"available": [data]}):
        try:
            capacities = GENERIC.parse_available(json.dumps(body).encode())
        except PayloadError:
            continue
        for capacity in capacities:
            assert capacity.account.strip()
            for count in (capacity.max_jobs, capacity.executing, capacity.available):
                assert count is None or 0 <= count < 2**31
