"""recorder.urls: a URL's service, its identity as a target, and a target's default name."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from recorder.urls import GENERIC, first_free_name, same_target_key, service_of_url

API = "https://api.useapi.net"


@pytest.mark.parametrize(
    ("url", "service"),
    [
        (f"{API}/v2/pixverse/scheduler/", "pixverse"),
        (f"{API}/v1/kling/scheduler/", "kling"),
        (f"{API}/v1/minimax/scheduler/", "minimax"),
        (f"{API}/v1/runwayml/scheduler/", "runway"),
        (f"{API}/v1/runwayml/", GENERIC),  # not its scheduler
        (f"{API}/v2/pixverse/videos/", GENERIC),  # not its scheduler
        (f"{API}/v1/kling/scheduler/available", "kling"),
        (f"{API}/v1/tempolor/scheduler/", "tempolor"),
        (f"{API}/v1/ltxstudio/scheduler/", "ltxstudio"),
        (f"{API}/v1/riffusion/scheduler/", "riffusion"),
        (f"{API}/v1/dreamina/scheduler", "dreamina"),
        (f"{API}/V2/PixVerse/scheduler/", "pixverse"),  # the label ignores case
        ("http://127.0.0.1:8765/v2/pixverse/scheduler/", "pixverse"),  # the simulator
        ("https://proxy.example/useapi/v2/pixverse/scheduler/", "pixverse"),  # behind a prefix
        ("api.useapi.net/v1/kling/scheduler/", "kling"),  # no scheme
        (f"{API}/v2/pixverse/scheduler/?email=a@example.com#top", "pixverse"),
        ("http://127.0.0.1:9/a/", GENERIC),
        (f"{API}/pixverse/scheduler/", "pixverse"),  # no version before it
        (f"{API}/v2/midjourney/scheduler/", GENERIC),  # not a service we know
        (f"{API}/v2/scheduler/?service=/v2/kling/", GENERIC),  # the query is not the path
        ("", GENERIC),
        ("http://[::1/v2/pixverse/scheduler/", "pixverse"),  # a broken IPv6 host
        ("not a url at all", GENERIC),
    ],
)
def test_the_service_of_a_url(url: str, service: str) -> None:
    assert service_of_url(url) == service


SAME = [
    (f"{API}/v2/pixverse/scheduler/", f"{API}/v2/pixverse/scheduler"),  # a trailing slash
    (f"{API}/v2/pixverse/scheduler/", "https://API.UseAPI.net/v2/pixverse/scheduler/"),
    (f"{API}/v1/kling/scheduler", "https://api.useapi.net:443/v1/kling/scheduler/"),
    ("http://example.com/a", "http://example.com:80/a/"),
    ("http://localhost:8765/v2/pixverse/scheduler/", "http://127.0.0.1:8765/v2/pixverse/scheduler"),
    ("http://LOCALHOST/x", "http://127.0.0.1:80/x"),
    ("HTTPS://api.useapi.net/x", f"{API}/x"),  # the scheme's case
    ("http://example.com", "http://example.com/"),
    ("http://example.com:/a", "http://example.com/a"),  # an empty port
    ("http://[::1]:8080/a", "http://[0:0:0:0:0:0:0:1]:8080/a/"),  # one IPv6 address
    ("http://[FE80::A]/x", "http://[fe80::a]/x"),
    ("http://user:Secret@Example.com/x", "http://user:Secret@example.com:80/x/"),
    (f"{API}/x/?email=a@example.com", f"{API}/x?email=a@example.com"),
    (f"{API}/x#recent", f"{API}/x"),  # a fragment is never sent
    ("", ""),
]
DIFFERENT = [
    (f"{API}/v2/pixverse/scheduler/?email=a@example.com", f"{API}/v2/pixverse/scheduler/"),
    (f"{API}/x?email=a@example.com", f"{API}/x?email=b@example.com"),
    (f"{API}/x?a=1&b=2", f"{API}/x?b=2&a=1"),  # a query is kept as written
    (f"{API}/V2/pixverse/scheduler/", f"{API}/v2/pixverse/scheduler/"),  # a path has case
    (f"{API}/x", "http://api.useapi.net/x"),
    ("https://api.useapi.net:8443/x", f"{API}/x"),
    ("http://example.com:443/x", "http://example.com/x"),  # 443 is not http's port
    ("https://example.com:80/x", "https://example.com/x"),
    ("http://[::1]/x", "http://127.0.0.1/x"),  # another loopback address
    ("http://localhost.example/x", "http://127.0.0.1/x"),
    ("http://alice@example.com/x", "http://bob@example.com/x"),
    ("http://alice@example.com/x", "http://example.com/x"),
    ("api.useapi.net/x", f"{API}/x"),  # no scheme: not a URL of that host
    ("", "/"),
    (f"{API}/x", f"{API}/x/y"),
    (f"{API}//x", f"{API}/x"),
]


@pytest.mark.parametrize(("a", "b"), SAME)
def test_spellings_of_one_endpoint_are_one_target(a: str, b: str) -> None:
    assert same_target_key(a) == same_target_key(b)


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_other_endpoints_are_other_targets(a: str, b: str) -> None:
    assert same_target_key(a) != same_target_key(b)


@pytest.mark.parametrize(
    "url",
    [
        "",
        " ",
        "/",
        "://",
        "http://",
        "http:///x",
        "http://[::1",
        "http://[not-an-address]/x",
        "http://example.com:99999/x",
        "http://example.com:port/x",
        "http://@/",
        "mailto:someone@example.com",
        "\x00\n\u202e",
        "http://" + "a" * 10_000,
    ],
)
def test_hostile_text_has_a_key_and_a_service(url: str) -> None:
    assert isinstance(same_target_key(url), str)
    assert service_of_url(url) == GENERIC


@given(st.text())
def test_any_text_has_a_key_and_a_service(text: str) -> None:
    assert isinstance(same_target_key(text), str)
    assert isinstance(service_of_url(text), str)


@st.composite
def urls(draw: st.DrawFn) -> str:
    scheme = draw(st.sampled_from(["http", "https", "HTTP", "ftp"]))
    user = draw(st.sampled_from(["", "user@", "user:pw@"]))
    host = draw(
        st.sampled_from(["api.useapi.net", "API.useapi.net", "localhost", "127.0.0.1", "[::1]"])
    )
    port = draw(st.sampled_from(["", ":80", ":443", ":8080", ":"]))
    path = "".join(draw(st.lists(st.sampled_from(["/v2", "/pixverse", "/Scheduler", "/"]))))
    query = draw(st.sampled_from(["", "?", "?a=1", "?a=1/"]))
    fragment = draw(st.sampled_from(["", "#x"]))
    return f"{scheme}://{user}{host}{port}{path}{query}{fragment}"


@given(urls())
def test_a_key_is_its_own_key(url: str) -> None:
    """The key is a spelling of the same endpoint: keying it again changes nothing."""
    key = same_target_key(url)
    assert same_target_key(key) == key


@pytest.mark.parametrize(
    ("taken", "name"),
    [
        (set(), "pixverse"),
        ({"pixverse"}, "pixverse-2"),
        ({"pixverse", "pixverse-2"}, "pixverse-3"),
        ({"pixverse-2"}, "pixverse"),
        ({"pixverse", "pixverse-3"}, "pixverse-2"),
        ({"kling"}, "pixverse"),
    ],
)
def test_the_first_free_name(taken: set[str], name: str) -> None:
    assert first_free_name("pixverse", taken) == name
