"""Tests for recorder.parse: table tests per rule, plus property tests on arbitrary input."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recorder.parse import (
    ID_KEYS,
    PayloadError,
    normalize_items,
    parse_account,
    parse_body,
    parse_elapsed,
    parse_started,
)
from recorder.snapshot import Item, Snapshot

PIXVERSE_ID = "user:12345-pixverse:you@example.com-video:123456789"
T0 = 1727229316.128  # 2024-09-25T01:55:16.128Z


def one(item: dict[str, Any]) -> Item:
    snapshot = normalize_items([item])
    assert len(snapshot.items) == 1
    return snapshot.items[0]


# --- parse_started ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-09-25T01:55:16.128Z", T0),
        ("2024-09-25T01:55:16Z", 1727229316.0),
        ("2024-09-25T01:55:16.128+00:00", T0),
        ("2024-09-25T03:55:16.128+02:00", T0),
        ("2024-09-24T20:25:16.128-05:30", T0),
        ("2024-09-25T03:55:16.128+0200", T0),
        ("2024-09-25T03:55:16.128+02", T0),
        ("2024-09-25T01:55:16.128", T0),  # no offset: the API documents UTC
        ("2024-09-25 01:55:16.128Z", T0),
        ("2024-09-25t01:55:16.128z", T0),
        ("2024-09-25T01:55Z", 1727229300.0),
        ("2024-09-25T01:55:16,128Z", T0),
        ("2024-09-25T01:55:16.128000001Z", T0 + 1e-9),
        ("  2024-09-25T01:55:16.128Z\n", T0),
        (1727229316, 1727229316.0),
        (1727229316.128, T0),
        (1727229316128, T0),  # milliseconds
        (100_000_000_001, 100_000_000.001),  # just above the 1e11 threshold: ms
        (100_000_000_000, 100_000_000_000.0),  # at the threshold: seconds
    ],
)
def test_parse_started_valid(value: object, expected: float) -> None:
    result = parse_started(value)
    assert result is not None
    assert result == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        "12:45:67.890Z",  # invalid seconds, seen in upstream examples
        "2024-09-25T12:45:67.890Z",
        "2024-09-25T12:60:00Z",
        "2024-09-25T24:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-09-25T01:55:16.128+24:00",
        "2024-09-25",  # a date alone is not a start time
        "2024-W39-3T01:55:16Z",
        "20240925T015516Z",
        "1969-12-31T23:59:59Z",  # before the epoch: not a real job start
        "2024-09-25T01:55:16.128Z trailing",
        "\uff12\uff10\uff12\uff14-09-25T01:55:16Z",  # full-width digits
        "",
        "yesterday",
        "1727229316",  # a numeric string is neither ISO nor a number
        True,
        False,
        None,
        [],
        [1727229316],
        {"t": 1},
        0,
        -5,
        math.nan,
        math.inf,
        -math.inf,
        1e300,
        10**400,
        -(10**400),
    ],
)
def test_parse_started_invalid(value: object) -> None:
    assert parse_started(value) is None


# --- parse_elapsed ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("03:57", 237),
        ("00:35", 35),
        ("0:00", 0),
        ("75:10", 4510),  # MM beyond 59
        ("1:02:03", 3723),
        ("12:00:00", 43200),
        (" 03:57 ", 237),
        ("42", 42),
        (42, 42),
        (0, 0),
        (42.0, 42),
        (42.9, 42),  # Dreamina's elapsedSeconds: whole seconds are enough
        (2**31 - 1, 2**31 - 1),
    ],
)
def test_parse_elapsed_valid(value: object, expected: int) -> None:
    assert parse_elapsed(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "-01:00",
        "03:60",
        "1:60:00",
        "1:02:03:04",
        "3:5x",
        "abc",
        "",
        "03:57.5",
        "\u0660\u0663:\u0665\u0667",  # Arabic-Indic digits
        "9" * 5000,
        -1,
        -0.5,
        2**31,
        10**400,
        -(10**400),
        math.nan,
        math.inf,
        True,
        None,
        [1],
        {"s": 1},
    ],
)
def test_parse_elapsed_invalid(value: object) -> None:
    assert parse_elapsed(value) is None


# --- parse_account ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api_id", "expected"),
    [
        (PIXVERSE_ID, ("12345", "you@example.com")),
        ("user:12345-pixverse:you@example.com-image:987", ("12345", "you@example.com")),
        ("user:1-pixverse:first-last@my-domain.com-video:42", ("1", "first-last@my-domain.com")),
        (
            "user:77-runwayml:a@b.com-task:0f8fad5b-d9cb-469f-a165-70867728950e",
            ("77", "a@b.com"),
        ),
        ("user:1-pixverse:a@b.com-video:12:34-56", ("1", "a@b.com")),
        ("user:5-tempolor:998877-job:abc", ("5", "998877")),
        ("email:me@x.io:0f8fad5b-d9cb-469f-a165-70867728950e-type:image", (None, "me@x.io")),
        ("email:not-an-email:uuid-type:image", (None, None)),
        ("123456789", (None, None)),
        ("user:12345", (None, None)),
        ("user:12345-pixverse:you@example.com", (None, None)),
        ("user:-pixverse:you@example.com-video:1", (None, None)),
        ("user:1-pixverse:you@example.com-video:", (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_account(api_id: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_account(api_id) == expected


# --- parse_body: shapes and errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\xff\xfe[]", "not UTF-8"),
        (b'[{"id": "caf\xe9"}]', "not UTF-8"),
        (b"", "empty"),
        (b"  \r\n ", "empty"),
        (b"<html><body>502 Bad Gateway</body></html>", "HTML"),
        (b"\n  <!DOCTYPE html><html></html>", "HTML"),
        (b"not json", "not JSON"),
        (b"[1, 2", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # too deep for the json module
        (b"[" + b"1" * 5000 + b"]", "not JSON"),  # over Python's int digit limit
        (b'{"error": "Unauthorized", "code": 401}', "object without an 'executing' list"),
        (b'{"executing": "none"}', "'executing' is a string"),
        (b'{"executing": null}', "'executing' is a null"),
        (b'"text"', "JSON string"),
        (b"42", "JSON number"),
        (b"null", "JSON null"),
        (b"true", "JSON boolean"),
    ],
)
def test_parse_body_rejects(body: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message) as caught:
        parse_body(body)
    assert isinstance(caught.value, ValueError)


def test_parse_body_documented_example() -> None:
    body = json.dumps(
        [
            {
                "id": PIXVERSE_ID,
                "type": "video",
                "started": "2024-09-25T01:55:16.128Z",
                "elapsed": "03:57",
                "replyUrl": "https://cb.example/x",
                "replyRef": "ref-1",
            },
            {
                "id": "user:12345-pixverse:you@example.com-image:id2",
                "type": "image",
                "started": "2024-09-25T01:58:18.555Z",
                "elapsed": "00:35",
            },
        ]
    ).encode()
    snapshot = parse_body(body)
    assert snapshot == Snapshot(
        items=(
            Item(
                api_id=PIXVERSE_ID,
                type="video",
                started_raw="2024-09-25T01:55:16.128Z",
                started=pytest.approx(T0),  # type: ignore[arg-type]
                elapsed_s=237,
                reply_url="https://cb.example/x",
                reply_ref="ref-1",
                account="you@example.com",
                user_id="12345",
            ),
            Item(
                api_id="user:12345-pixverse:you@example.com-image:id2",
                type="image",
                started_raw="2024-09-25T01:58:18.555Z",
                started=pytest.approx(1727229498.555),  # type: ignore[arg-type]
                elapsed_s=35,
                account="you@example.com",
                user_id="12345",
            ),
        )
    )


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"\xef\xbb\xbf[]",  # UTF-8 BOM
        b'{"executing": [], "available": []}',
        b'{"executing": {}, "total": 0}',
    ],
)
def test_parse_body_empty_lists(body: bytes) -> None:
    assert parse_body(body) == Snapshot(items=())


def test_parse_body_available_shape() -> None:
    body = json.dumps(
        {
            "executing": [{"id": PIXVERSE_ID, "type": "video"}],
            "available": [{"email": "you@example.com", "maxJobs": 3, "executing": 1}],
        }
    ).encode()
    assert parse_body(body).items == (
        Item(api_id=PIXVERSE_ID, type="video", account="you@example.com", user_id="12345"),
    )


def test_parse_body_dreamina_shape() -> None:
    body = json.dumps(
        {
            "executing": {
                "US:a@example.com": [
                    {"jobid": "j1", "submitId": "s1", "model": "m", "elapsedSeconds": 12},
                    {"jobid": "user:9-dreamina:b@example.com-job:j2", "replyUrl": "u"},
                ],
                "EU:c@example.com": [{"jobid": "j3", "email": "d@example.com"}],
                "broken": 5,
            },
            "total": 3,
        }
    ).encode()
    snapshot = parse_body(body)
    assert snapshot.items == (
        Item(api_id="j1", elapsed_s=12, account="a@example.com"),
        Item(
            api_id="user:9-dreamina:b@example.com-job:j2",
            reply_url="u",
            account="b@example.com",  # the id wins over the key
            user_id="9",
        ),
        Item(api_id="j3", account="d@example.com"),  # the email field wins over the key
    )
    assert snapshot.invalid_values == 1  # the non-list under "broken"


def test_parse_body_dreamina_duplicates_across_accounts() -> None:
    body = b'{"executing": {"US:a@x.io": [{"jobid": "j"}], "US:b@x.io": [{"jobid": "j"}]}}'
    snapshot = parse_body(body)
    assert snapshot.items == (Item(api_id="j", account="a@x.io"),)
    assert snapshot.duplicates == 1


# --- normalize_items: ids --------------------------------------------------------------------


@pytest.mark.parametrize("key", ID_KEYS)
def test_every_id_key_is_recognised(key: str) -> None:
    assert one({key: "abc"}).api_id == "abc"


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ({"id": "a", "videoId": "b"}, "a"),
        ({"videoId": "b", "video_id": "c"}, "b"),
        ({"id": "", "videoId": "b"}, "b"),  # an unusable id falls through to the next key
        ({"id": None, "jobid": "z"}, "z"),
        ({"id": 123456789}, "123456789"),  # Kling ids are numbers
        ({"id": 12.0}, "12"),
        ({"id": 1.5}, "1.5"),
        ({"id": 0}, "0"),
        ({"id": " padded "}, " padded "),  # kept exactly as sent
    ],
)
def test_id_choice(item: dict[str, Any], expected: str) -> None:
    assert one(item).api_id == expected


@pytest.mark.parametrize(
    "raw",
    [
        {},
        {"id": ""},
        {"id": "   "},
        {"id": None},
        {"id": True},
        {"id": [1]},
        {"id": {"v": 1}},
        {"id": math.nan},
        {"id": "\ud800"},  # lone surrogate: not storable as UTF-8
        {"id": "job\x001"},  # NUL: PostgreSQL text refuses it
        {"submitId": "s"},  # not an id key
        {"type": "video", "started": "2024-09-25T01:55:16Z"},
        "user:1-pixverse:a@b.c-video:1",
        42,
        None,
        [PIXVERSE_ID],
    ],
)
def test_untracked(raw: object) -> None:
    assert normalize_items([raw]) == Snapshot(items=(), untracked=1)


# --- normalize_items: fields -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "attr", "expected", "invalid"),
    [
        ("type", "video", "type", "video", 0),
        ("type", "music", "type", "music", 0),
        ("type", "", "type", None, 0),
        ("type", None, "type", None, 0),
        ("type", 3, "type", None, 1),
        ("type", ["video"], "type", None, 1),
        ("replyUrl", "https://cb.example/", "reply_url", "https://cb.example/", 0),
        ("replyUrl", 5, "reply_url", None, 1),
        ("replyUrl", {"u": 1}, "reply_url", None, 1),
        ("replyRef", "ref", "reply_ref", "ref", 0),
        ("replyRef", 7, "reply_ref", None, 1),
        ("replyRef", None, "reply_ref", None, 0),
        ("elapsed", "03:57", "elapsed_s", 237, 0),
        ("elapsed", 90, "elapsed_s", 90, 0),
        ("elapsed", "-00:05", "elapsed_s", None, 1),
        ("elapsed", "soon", "elapsed_s", None, 1),
        ("elapsed", False, "elapsed_s", None, 1),
        ("elapsedSeconds", 12, "elapsed_s", 12, 0),
        ("elapsedSeconds", -3, "elapsed_s", None, 1),
        ("started", "2024-09-25T01:55:16.128Z", "started", pytest.approx(T0), 0),
        ("started", 1727229316128, "started", pytest.approx(T0), 0),
        ("started", "12:45:67.890Z", "started", None, 1),
        ("started", True, "started", None, 1),
        ("started", [1], "started", None, 1),
        ("started", None, "started", None, 0),
        ("email", "e@x.io", "account", "e@x.io", 0),
        ("email", 5, "account", None, 1),
    ],
)
def test_field_rules(field: str, value: object, attr: str, expected: object, invalid: int) -> None:
    snapshot = normalize_items([{"id": "job", field: value}])
    assert getattr(snapshot.items[0], attr) == expected
    assert snapshot.invalid_values == invalid
    assert snapshot.untracked == 0


@pytest.mark.parametrize(
    ("value", "raw"),
    [
        ("2024-09-25T01:55:16.128Z", "2024-09-25T01:55:16.128Z"),
        (" 2024-09-25T01:55:16Z", " 2024-09-25T01:55:16Z"),  # raw is exactly as sent
        (1727229316, "1727229316"),
        (1727229316128, "1727229316128"),
        (1727229316.5, "1727229316.5"),
        ("12:45:67.890Z", None),  # no raw text when the value did not parse
        (None, None),
    ],
)
def test_started_raw(value: object, raw: str | None) -> None:
    assert one({"id": "j", "started": value}).started_raw == raw


def test_elapsed_prefers_elapsed_and_counts_both_fields() -> None:
    assert one({"id": "j", "elapsed": "01:00", "elapsedSeconds": 5}).elapsed_s == 60
    snapshot = normalize_items([{"id": "j", "elapsed": "x", "elapsedSeconds": 5}])
    assert snapshot.items[0].elapsed_s == 5
    assert snapshot.invalid_values == 1


@pytest.mark.parametrize(
    ("item", "user_id", "account"),
    [
        ({"id": PIXVERSE_ID}, "12345", "you@example.com"),
        ({"id": PIXVERSE_ID, "email": "other@example.com"}, "12345", "you@example.com"),
        ({"id": 77, "email": "kling@example.com"}, None, "kling@example.com"),
        ({"jobId": "email:ltx@example.com:uuid-1-type:image"}, None, "ltx@example.com"),
        ({"videoId": "plain-id"}, None, None),
        ({"videoId": "plain-id", "email": ""}, None, None),
    ],
)
def test_account(item: dict[str, Any], user_id: str | None, account: str | None) -> None:
    parsed = one(item)
    assert (parsed.user_id, parsed.account) == (user_id, account)


def test_all_fields_of_a_runway_item() -> None:
    api_id = "user:77-runwayml:a@b.com-task:0f8fad5b-d9cb-469f-a165-70867728950e"
    item = one({"taskId": api_id, "replyUrl": "https://cb/", "replyRef": "r"})
    assert item == Item(
        api_id=api_id, reply_url="https://cb/", reply_ref="r", account="a@b.com", user_id="77"
    )


# --- normalize_items: duplicates, order, counters --------------------------------------------


def test_duplicates_merge_first_non_none_wins() -> None:
    snapshot = normalize_items(
        [
            {"id": "a", "type": "video", "elapsed": "garbage"},
            {"id": "b"},
            {"id": "a", "type": "image", "elapsed": "00:10", "replyRef": "r1"},
            {"videoId": "a", "replyRef": "r2", "started": "2024-09-25T01:55:16.128Z"},
        ]
    )
    assert [item.api_id for item in snapshot.items] == ["a", "b"]
    merged = snapshot.items[0]
    assert merged.type == "video"
    assert merged.elapsed_s == 10
    assert merged.reply_ref == "r1"
    assert merged.started_raw == "2024-09-25T01:55:16.128Z"
    assert snapshot.duplicates == 2
    assert snapshot.invalid_values == 1


def test_number_and_string_ids_are_the_same_job() -> None:
    snapshot = normalize_items([{"id": 5}, {"id": "5"}])
    assert snapshot.items == (Item(api_id="5"),)
    assert snapshot.duplicates == 1


def test_order_is_kept() -> None:
    ids = ["z", "a", "m", "b"]
    assert [i.api_id for i in normalize_items([{"id": x} for x in ids]).items] == ids


def test_counters_add_up() -> None:
    snapshot = normalize_items(
        [
            {"id": "a", "type": 1, "started": "bad", "elapsed": "bad", "replyUrl": 1},
            "junk",
            {"id": ""},
            {"id": "a"},
        ]
    )
    assert snapshot == Snapshot(
        items=(Item(api_id="a"),), invalid_values=4, untracked=2, duplicates=1
    )


# --- property tests --------------------------------------------------------------------------

KNOWN_KEYS = (
    *ID_KEYS,
    "type",
    "started",
    "elapsed",
    "elapsedSeconds",
    "replyUrl",
    "replyRef",
    "email",
    "executing",
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats()
    | st.text()
)
ID_LIKE = st.sampled_from(
    [PIXVERSE_ID, "email:a@b.c:u-type:image", "user:1-x:y-z:", "dup", "", " "]
) | st.text(max_size=30)
JSON = st.recursive(
    SCALARS | ID_LIKE,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=40,
)
ITEM = st.dictionaries(st.sampled_from(KNOWN_KEYS), JSON | ID_LIKE, max_size=8)
ITEMS = st.lists(ITEM | JSON, max_size=12)


def check_snapshot(snapshot: Snapshot) -> None:
    ids = [item.api_id for item in snapshot.items]
    assert all(isinstance(api_id, str) and api_id.strip() for api_id in ids)
    assert len(ids) == len(set(ids))
    assert min(snapshot.invalid_values, snapshot.untracked, snapshot.duplicates) >= 0
    for item in snapshot.items:
        assert (item.started is None) == (item.started_raw is None)
        assert item.elapsed_s is None or item.elapsed_s >= 0


def parse_or_payload_error(body: bytes) -> None:
    try:
        snapshot = parse_body(body)
    except PayloadError:
        return
    check_snapshot(snapshot)


@settings(database=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_payload_error(body: bytes) -> None:
    parse_or_payload_error(body)


@settings(database=None)
@given(JSON)
def test_arbitrary_json_body_only_raises_payload_error(data: object) -> None:
    parse_or_payload_error(json.dumps(data).encode())


@settings(database=None)
@given(ITEMS)
def test_arbitrary_items_normalize(data: list[object]) -> None:
    snapshot = normalize_items(data)
    check_snapshot(snapshot)
    # Every input item is accounted for exactly once.
    assert len(snapshot.items) + snapshot.untracked + snapshot.duplicates == len(data)
    parse_or_payload_error(json.dumps(data).encode())
    parse_or_payload_error(json.dumps({"executing": data}).encode())


@settings(database=None)
@given(st.dictionaries(st.text(max_size=20), st.lists(ITEM, max_size=4) | JSON, max_size=4))
def test_arbitrary_dreamina_shapes(executing: dict[str, object]) -> None:
    parse_or_payload_error(json.dumps({"executing": executing}).encode())


@settings(database=None)
@given(JSON)
def test_field_helpers_never_raise(value: object) -> None:
    started = parse_started(value)
    assert started is None or started > 0
    elapsed = parse_elapsed(value)
    assert elapsed is None or elapsed >= 0
    if isinstance(value, str):
        user_id, account = parse_account(value)
        assert user_id is None or user_id
        assert account is None or account
