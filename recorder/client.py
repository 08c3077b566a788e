"""HTTP client for one scheduler endpoint: one GET per poll, every outcome classified.

poll() never raises for anything the network or the server does; it returns a PollResult
whose answer is a Snapshot or a Failure. Failure messages are one line and never contain
the token.

Decisions worth knowing:

* Redirects are not followed: a 3xx is an HTTP_ERROR naming the Location, so the token is
  never sent anywhere but the configured URL.
* A body cut short (connection closed before Content-Length or the last chunk) is NETWORK:
  the transport failed, the payload itself was not shown to be malformed.
* One deadline bounds the whole poll (connect, status line, headers and body together),
  by default the larger of the two timeouts. A per-read timeout alone is no bound: a server
  sending a byte every half second resets it forever. Every connection of the poll is kept
  under a duplicate of its socket descriptor, and a watchdog (one threading.Timer per poll,
  joined before poll() returns) shuts the connection down through it at the deadline; the
  blocked recv returns at once whatever layer (TLS handshake, proxy tunnel, headers, body)
  was waiting. A duplicate, not the socket object itself: http.client closes the socket
  object of a `Connection: close` answer while the body is still read through its file,
  and the duplicate is owned by the watchdog alone, so it can never shut down a descriptor
  number that has since been reused. The answer of a cut poll is TIMEOUT, whatever
  half-answer the cut left behind; only an error status whose headers had arrived keeps its
  own classification (without the excerpt). Connections are watched only through
  DeadlineAdapter, which the client's own session mounts; a session passed in should mount
  it too (a mocking adapter needs none). Not covered: the name lookup and the TCP connect
  itself, which only the connect timeout (capped to the deadline) bounds.
* abort() (from any thread) cuts the poll in flight the same way and makes every later
  poll fail at once without sending anything: the way out for a daemon that is stopping.
* Retry-After is honoured on 429 and 503; an HTTP-date is measured against the server's
  Date header when present (immune to our clock skew), else against our wall clock.
"""

from __future__ import annotations

import contextlib
import enum
import ipaddress
import itertools
import json
import math
import os
import re
import socket
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Callable
from datetime import UTC
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

import requests
import requests.adapters
import urllib3.connection
import urllib3.connectionpool
import urllib3.exceptions
import urllib3.poolmanager
from requests.structures import CaseInsensitiveDict

from recorder import __version__
from recorder.clock import SteadyClock
from recorder.parse import PayloadError, parse_body
from recorder.secret import Secret
from recorder.snapshot import Failure, Outcome, PollResult, Snapshot

__all__ = [
    "ABORTED_MESSAGE",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_TIMEOUT",
    "DeadlineAdapter",
    "SchedulerClient",
    "check_url",
    "parse_retry_after",
]

DEFAULT_TIMEOUT: Final = (5.0, 20.0)
DEFAULT_MAX_BODY_BYTES: Final = 32 * 1024 * 1024
ABORTED_MESSAGE: Final = "aborted: the recorder is stopping"

_CHUNK_BYTES: Final = 16 * 1024
# Only the `error` excerpt is needed from a failed answer; no reason to hold more.
_ERROR_BODY_BYTES: Final = 64 * 1024
_EXCERPT_CHARS: Final = 200
_RETRY_AFTER_STATUSES: Final = frozenset({429, 503})
_RETRY_SECONDS_RE: Final = re.compile(r"[0-9]{1,10}(?:\.[0-9]{1,6})?")
_CONTENT_LENGTH_RE: Final = re.compile(r"[0-9]{1,20}")
# urllib3 prefixes reasons with "<HTTPConnection object at 0x...>: ", noise in a log line.
_OBJECT_REPR_RE: Final = re.compile(r"<[^<>]*>:\s*")
_TRANSPORT_ERRORS: Final = (requests.RequestException, urllib3.exceptions.HTTPError, OSError)

Clock = Callable[[], float]
A = TypeVar("A")
# What a request does with a 2xx answer: the poll's Snapshot, or fetch()'s raw body.
_Success = Callable[[requests.Response, "_Watch"], "A | Failure"]


class _Abort(Exception):
    """Carries a Failure out of a nested read."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.message = message


class _Cut(enum.Enum):
    """Why a poll's connections were shut down under it."""

    DEADLINE = "deadline"
    ABORT = "abort"


class _HasFileno(Protocol):
    def fileno(self) -> int: ...


_WATCH_SERIALS: Final = itertools.count(1)


class _Watch:
    """The connections of one poll, and the watchdog that cuts them at the deadline or on abort.

    Each connection is held through a duplicate of its descriptor (a guard): shutting the
    guard down shuts down the TCP connection under every layer above it, and unblocks a recv
    in the polling thread. The guards belong to the watch alone and are created, shut down
    and closed under its lock, so a shutdown can never reach a descriptor number reused by
    someone else.
    """

    def __init__(self, seconds: float) -> None:
        self.serial = next(_WATCH_SERIALS)
        self._lock = threading.Lock()
        self._guards: list[socket.socket] = []
        self._cut: _Cut | None = None
        self._closed = False
        self._timer = threading.Timer(seconds, self.cut, args=(_Cut.DEADLINE,))
        self._timer.name = "recorder-deadline"
        self._timer.daemon = True

    @property
    def cut_by(self) -> _Cut | None:
        """Why the connections were cut, or None while they are not."""
        return self._cut

    def guard(self, sock: _HasFileno) -> None:
        """Hold sock's connection through a duplicate descriptor; cut it now if already due."""
        try:
            fd = os.dup(sock.fileno())
        except (OSError, ValueError):
            return  # already closed: nothing left to cut
        with self._lock:
            if self._closed:
                os.close(fd)
                return
            try:
                guard = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                return
            self._guards.append(guard)
            if self._cut is not None:
                _shut(guard)

    def cut(self, why: _Cut) -> None:
        """Shut every connection of the poll down (the first reason given is kept)."""
        with self._lock:
            if self._closed:
                return
            if self._cut is None:
                self._cut = why
            for guard in self._guards:
                _shut(guard)

    def __enter__(self) -> Self:
        """Start the watchdog and make this the watch of the calling thread's connections."""
        self._timer.start()  # first: if no thread can be started, no guard is ever taken
        _ACTIVE.watch = self
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the watchdog (its thread is joined) and close the guards."""
        self._timer.cancel()
        self._timer.join()
        _ACTIVE.watch = None
        with self._lock:
            self._closed = True
            guards, self._guards = self._guards, []
            for guard in guards:
                guard.close()


class _Active(threading.local):
    watch: _Watch | None = None


_ACTIVE: Final = _Active()


def _shut(sock: socket.socket) -> None:
    # OSError: not connected any more, or the peer reset it first; cut all the same.
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _guard_for_this_poll(sock: _HasFileno | None, watched_by: int = 0) -> int:
    """Hand sock to the poll running on this thread, unless its watch holds it already."""
    watch = _ACTIVE.watch
    if watch is None or sock is None:
        return 0
    if watch.serial != watched_by:
        watch.guard(sock)
    return watch.serial


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    """A connection the poll in progress on its thread can cut (see _Watch)."""

    _watched_by = 0  # serial of the watch that last took a guard on the socket

    def _new_conn(self) -> socket.socket:
        # Guarded from the moment it is connected: a proxy tunnel or a TLS handshake that
        # stalls is cut like everything after it.
        sock = super()._new_conn()
        self._watched_by = _guard_for_this_poll(sock)
        return sock

    def request(self, *args: Any, **kwargs: Any) -> None:
        """Send a request; a kept-alive socket is first guarded for this poll."""
        self._watched_by = _guard_for_this_poll(self.sock, self._watched_by)
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(_WatchedHTTPConnection, urllib3.connection.HTTPSConnection):
    """The https:// flavour of _WatchedHTTPConnection."""


class _WatchedHTTPConnectionPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


_WATCHED_POOLS: Final = {
    "http": _WatchedHTTPConnectionPool,
    "https": _WatchedHTTPSConnectionPool,
}


def _watch_pools(manager: urllib3.poolmanager.PoolManager) -> None:
    # A SOCKS manager brings pool classes of its own: those stay (no hard deadline there).
    if manager.pool_classes_by_scheme == urllib3.poolmanager.pool_classes_by_scheme:
        manager.pool_classes_by_scheme = _WATCHED_POOLS


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter whose connections a SchedulerClient can cut at its deadline or on abort().

    The client's own session mounts it; mount it on a session you pass to SchedulerClient
    to keep the deadline hard. Outside a poll it behaves as a plain HTTPAdapter.
    """

    def init_poolmanager(
        self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any
    ) -> None:
        """Create the pool manager, with connection pools the deadline can reach."""
        super().init_poolmanager(connections, maxsize, block, **pool_kwargs)
        _watch_pools(self.poolmanager)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        """Return the proxy manager for proxy, with connection pools the deadline can reach."""
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        _watch_pools(manager)
        return manager


class SchedulerClient:
    """Polls one scheduler URL over a single requests.Session, one poll at a time."""

    def __init__(
        self,
        url: str,
        token: str | Secret | None,
        *,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
        deadline: float | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        wall_clock: Clock | None = None,
        monotonic: Clock = time.monotonic,
        session: requests.Session | None = None,
        parse: Callable[[bytes], Snapshot] = parse_body,
    ) -> None:
        """Create a client; a session passed in stays owned by the caller and is not closed.

        timeout is the (connect, read) pair of per-operation timeouts; deadline bounds the
        whole poll (by default the larger timeout), and caps the connect timeout, since a TCP
        connect under way cannot be cut. A session passed in should mount DeadlineAdapter for
        the deadline to cut a stalled read. parse turns a 2xx body into a Snapshot, raising
        PayloadError when it cannot (a service's adapter, e.g. recorder.services.get(...).parse).
        """
        _check_timeout(timeout)
        total = max(timeout) if deadline is None else deadline
        if not (math.isfinite(total) and total > 0):
            raise ValueError("deadline must be a positive number of seconds")
        if max_body_bytes <= 0:
            raise ValueError("max_body_bytes must be positive")
        self._url = url
        self._token = _make_secret(token)
        self._deadline = float(total)
        self._timeout = (min(float(timeout[0]), total), float(timeout[1]))
        self._max_body_bytes = max_body_bytes
        self._parse = parse
        # Poll times advance with the monotonic clock: a step of the host clock cannot bend them.
        self._wall_clock = (
            wall_clock if wall_clock is not None else SteadyClock(monotonic=monotonic)
        )
        self._monotonic = monotonic
        self._owns_session = session is None
        if session is None:
            session = requests.Session()
            session.mount("https://", DeadlineAdapter())
            session.mount("http://", DeadlineAdapter())
        self._session = session
        # Guards _aborted and _watch, the two things abort() shares with the polling thread.
        self._lock = threading.Lock()
        self._aborted = False
        self._watch: _Watch | None = None

    @property
    def url(self) -> str:
        """The polled URL."""
        return self._url

    @property
    def deadline(self) -> float:
        """Seconds a whole poll may take (connect, headers and body together), plus slack."""
        return self._deadline

    @property
    def aborted(self) -> bool:
        """True once abort() was called: every poll from then on fails at once."""
        return self._aborted

    def __repr__(self) -> str:
        """Show the URL only, never the token."""
        return f"SchedulerClient(url={self._url!r})"

    def __enter__(self) -> Self:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the client."""
        self.close()

    def close(self) -> None:
        """Close the session if this client created it."""
        if self._owns_session:
            self._session.close()

    def abort(self) -> None:
        """Cut the poll in flight, if any, and fail every later poll without sending it.

        Safe from any thread, never raises, and may be called any number of times. The poll
        in flight returns promptly with a NETWORK Failure saying the recorder is stopping
        (an error status whose headers had come keeps its own Failure; a TCP connect or name
        lookup under way is not interrupted: it ends within the connect timeout). Not for a
        signal handler: it takes a lock; let the handler hand the request to a thread, as
        Daemon.run does.
        """
        with self._lock:
            self._aborted = True
            watch = self._watch
        if watch is not None:
            watch.cut(_Cut.ABORT)

    def poll(self) -> PollResult:
        """GET the URL once and classify what happened, within the deadline."""
        sent_at = self._wall_clock()
        start = self._monotonic()
        status, answer = self._exchange(self._success)
        # Latency from the monotonic clock: a wall-clock step mid-poll cannot make it negative.
        received_at = sent_at + max(0.0, self._monotonic() - start)
        return PollResult(sent_at, received_at, status, answer)

    def fetch(self, url: str | None = None) -> tuple[int | None, bytes | Failure]:
        """GET the URL once by the rules of poll() (deadline, body size, token, no redirects,
        abort); the HTTP status and the 2xx body as it came, unparsed, or the Failure.

        `url`, if given, is another path on the client's own scheme, host and port (a job's
        page beside the list: recorder.outcomes); the token goes nowhere else (ValueError).
        """
        if url is not None and not _same_origin(url, self._url):
            raise ValueError("a client fetches only from the origin of its own URL")
        return self._exchange(self._body, url or self._url)

    def _exchange(
        self, success: _Success[A], url: str | None = None
    ) -> tuple[int | None, A | Failure]:
        watch = _Watch(self._deadline)
        with self._lock:
            if self._aborted:
                return None, self._failure(Outcome.NETWORK, ABORTED_MESSAGE)
            self._watch = watch
        try:
            with watch:
                return self._fetch(watch, success, url or self._url)
        finally:
            with self._lock:
                self._watch = None

    def _fetch(
        self, watch: _Watch, success: _Success[A], url: str
    ) -> tuple[int | None, A | Failure]:
        try:
            response = self._session.get(
                url,
                headers=self._headers(),
                timeout=self._timeout,
                stream=True,
                allow_redirects=False,
            )
        except _TRANSPORT_ERRORS as exc:
            return None, self._failure(*self._classify_exception(exc, watch))
        with response:
            cut = watch.cut_by
            if cut is not None:
                # Cut while the headers came in: the status and headers may be fragments.
                return None, self._failure(*self._cut_failure(cut, in_body=False))
            if 200 <= response.status_code < 300:
                return response.status_code, success(response, watch)
            return response.status_code, self._status_failure(response, watch)

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"recorder/{__version__}", "Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        return headers

    def _body(self, response: requests.Response, watch: _Watch) -> bytes | Failure:
        try:
            return self._read(response, self._max_body_bytes, watch)
        except _Abort as abort:
            return self._failure(abort.outcome, abort.message)

    def _success(self, response: requests.Response, watch: _Watch) -> Snapshot | Failure:
        body = self._body(response, watch)
        if isinstance(body, Failure):
            return body
        try:
            snapshot = self._parse(body)
        except PayloadError as exc:
            message = f"HTTP {response.status_code}: {exc}{self._excerpt_suffix(body)}"
            return self._failure(Outcome.BAD_PAYLOAD, message)
        if snapshot.untracked:
            # A job whose id we cannot read would look finished: a list with such items is
            # not trusted to be complete, so it closes nothing and opens nothing.
            total = len(snapshot.items) + snapshot.untracked + snapshot.duplicates
            message = (
                f"HTTP {response.status_code}: {snapshot.untracked} of {total} item(s) have no "
                "usable id; the list cannot be trusted to be complete"
            )
            return self._failure(Outcome.BAD_PAYLOAD, message)
        return snapshot

    def _status_failure(self, response: requests.Response, watch: _Watch) -> Failure:
        status = response.status_code
        try:
            body = self._read(response, _ERROR_BODY_BYTES, watch)
        except _Abort:
            body = b""  # the status alone classifies the failure
        retry_after = None
        if status in _RETRY_AFTER_STATUSES:
            retry_after = parse_retry_after(
                response.headers.get("Retry-After"), now=self._server_now(response.headers)
            )
        message = _status_line(status)
        if retry_after is not None:
            message += f" (retry after {retry_after:g} s)"
        if 300 <= status < 400 and "Location" in response.headers:
            message += f" to {self._clip(response.headers['Location'])}"
        message += self._excerpt_suffix(body)
        return self._failure(_status_outcome(status), message, retry_after)

    def _read(self, response: requests.Response, limit: int, watch: _Watch) -> bytes:
        declared = _content_length(response.headers)
        if declared is not None and declared > limit:
            raise _Abort(Outcome.BAD_PAYLOAD, f"answer larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(_CHUNK_BYTES):
                size += len(chunk)
                if size > limit:
                    raise _Abort(Outcome.BAD_PAYLOAD, f"answer larger than {limit} bytes")
                chunks.append(chunk)
                if watch.cut_by is not None:
                    break  # also stops an adapter the watchdog cannot reach, between chunks
        except _TRANSPORT_ERRORS as exc:
            raise _Abort(*self._classify_exception(exc, watch, in_body=True)) from exc
        cut = watch.cut_by
        if cut is not None:
            # The end the cut made looks like a clean end of a body read until close.
            raise _Abort(*self._cut_failure(cut, in_body=True))
        return b"".join(chunks)

    def _cut_failure(self, cut: _Cut, *, in_body: bool) -> tuple[Outcome, str]:
        if cut is _Cut.ABORT:
            return Outcome.NETWORK, ABORTED_MESSAGE
        waiting = "reading the answer body" if in_body else "waiting for the answer"
        return Outcome.TIMEOUT, f"timed out {waiting} (deadline {self._deadline:g} s for the poll)"

    def _classify_exception(
        self, exc: BaseException, watch: _Watch, *, in_body: bool = False
    ) -> tuple[Outcome, str]:
        cut = watch.cut_by
        if cut is not None:
            # Whatever broke, it broke because the watchdog or abort() cut the connection.
            return self._cut_failure(cut, in_body=in_body)
        connect, read = self._timeout
        if isinstance(exc, requests.ConnectTimeout):
            return Outcome.TIMEOUT, f"timed out connecting (connect timeout {connect:g} s)"
        if isinstance(exc, requests.Timeout):
            return Outcome.TIMEOUT, f"timed out waiting for the answer (read timeout {read:g} s)"
        if _caused_by_read_timeout(exc):
            return Outcome.TIMEOUT, self._body_timeout_message()
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return Outcome.NETWORK, f"connection broke mid-answer: {_describe(exc)}"
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            return Outcome.BAD_PAYLOAD, f"answer could not be decompressed: {_describe(exc)}"
        return Outcome.NETWORK, f"network error: {_describe(exc)}"

    def _body_timeout_message(self) -> str:
        return f"timed out reading the answer body (read timeout {self._timeout[1]:g} s)"

    def _server_now(self, headers: CaseInsensitiveDict[str]) -> float:
        server_date = _http_date(headers.get("Date"))
        return self._wall_clock() if server_date is None else server_date

    def _failure(
        self, outcome: Outcome, message: str, retry_after_s: float | None = None
    ) -> Failure:
        return Failure(outcome, self._scrub(self._clip(message, 1000)), retry_after_s)

    def _excerpt_suffix(self, body: bytes) -> str:
        error = _error_text(body)
        excerpt = None if error is None else self._clip(error)
        return f": {excerpt}" if excerpt else ""

    def _clip(self, text: str, limit: int = _EXCERPT_CHARS) -> str:
        # Scrub before cutting, so a token split by the cut cannot leave a fragment behind.
        return _one_line(self._scrub(text), limit)

    def _scrub(self, text: str) -> str:
        # Defence in depth: no code path should put the token in a message, but if an
        # upstream error or exception text ever echoes it, it must not reach a log.
        if self._token is None:
            return text
        return text.replace(self._token.reveal(), "***")


def check_url(url: str, *, insecure: bool = False) -> str:
    """Return url if it is https://, or http:// to a loopback host (any host if insecure)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a malformed port
    except ValueError as exc:
        raise ValueError(f"invalid URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"URL must start with https:// (got scheme {scheme or 'none'!r})")
    if not host:
        raise ValueError("URL has no host")
    if scheme == "http" and not insecure and not _is_loopback(host):
        raise ValueError(
            f"refusing plain http:// to {host!r}: the API token would travel unencrypted; "
            "use https://, or allow it explicitly (insecure)"
        )
    return url


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Parse a Retry-After header (seconds or HTTP-date, relative to now) into seconds."""
    if value is None:
        return None
    text = value.strip()
    if _RETRY_SECONDS_RE.fullmatch(text):
        return float(text)
    moment = _http_date(text)
    if moment is None:
        return None
    return max(0.0, moment - now)


def _http_date(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        moment = parsedate_to_datetime(value.strip())
        # "-0000" parses as naive; HTTP dates are always GMT.
        seconds = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return seconds if math.isfinite(seconds) else None


def _same_origin(url: str, other: str) -> bool:
    """True when both URLs have one scheme, host and port (the port as given or implied)."""
    try:
        a, b = urllib.parse.urlsplit(url), urllib.parse.urlsplit(other)
        ports = (a.port, b.port)
    except ValueError:
        return False
    default = {"http": 80, "https": 443}
    return (
        a.scheme.lower() == b.scheme.lower()
        and (a.hostname or "") == (b.hostname or "")
        and (ports[0] or default.get(a.scheme.lower()))
        == (ports[1] or default.get(b.scheme.lower()))
        and not a.username
        and not a.password
    )


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _check_timeout(timeout: tuple[float, float]) -> None:
    if len(timeout) != 2 or not all(math.isfinite(t) and t > 0 for t in timeout):
        raise ValueError("timeout must be a (connect, read) pair of positive seconds")


def _make_secret(token: str | Secret | None) -> Secret | None:
    if token is None:
        return None
    # Tokens read from files often carry a trailing newline.
    value = (token.reveal() if isinstance(token, Secret) else token).strip()
    if not value:
        return None
    # requests echoes an invalid header value, token included, in its exception message.
    if not all("\x21" <= char <= "\x7e" for char in value):
        raise ValueError("token contains characters that cannot be sent in an HTTP header")
    return Secret(value)


def _status_outcome(status: int) -> Outcome:
    if status in (401, 403):
        return Outcome.AUTH
    if status == 402:
        return Outcome.PAYMENT
    if status == 429:
        return Outcome.RATE_LIMITED
    if 500 <= status <= 599:  # includes useapi's non-standard 596 (account in error state)
        return Outcome.SERVER
    return Outcome.HTTP_ERROR


def _status_line(status: int) -> str:
    try:
        return f"HTTP {status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"


def _content_length(headers: CaseInsensitiveDict[str]) -> int | None:
    value = headers.get("Content-Length", "").strip()
    return int(value) if _CONTENT_LENGTH_RE.fullmatch(value) else None


def _caused_by_read_timeout(exc: BaseException) -> bool:
    # requests turns a read timeout while streaming the body into a plain ConnectionError.
    return any(isinstance(arg, urllib3.exceptions.ReadTimeoutError) for arg in exc.args)


def _describe(exc: BaseException) -> str:
    reason: BaseException = exc
    inner = exc.args[0] if exc.args else None
    if isinstance(inner, urllib3.exceptions.MaxRetryError) and inner.reason is not None:
        reason = inner.reason
    elif isinstance(inner, BaseException):
        reason = inner
    # ProtocolError and friends stringify as a tuple; their first argument reads better.
    first = reason.args[0] if reason.args else None
    text = _OBJECT_REPR_RE.sub("", first if isinstance(first, str) else str(reason))
    return f"{type(reason).__name__}: {text}" if text else type(reason).__name__


def _error_text(body: bytes) -> str | None:
    try:
        data = json.loads(body.decode("utf-8"))
        if not isinstance(data, dict) or data.get("error") is None:
            return None
        error = data["error"]
        return error if isinstance(error, str) else json.dumps(error)
    except (ValueError, RecursionError):
        return None


def _one_line(text: str, limit: int) -> str:
    # Cut first so a huge text is not walked char by char; the margin covers collapsed runs.
    text = text[: limit * 4]
    cleaned = "".join(" " if _is_control(char) else char for char in text)
    collapsed = " ".join(cleaned.split())
    return collapsed if len(collapsed) <= limit else collapsed[: limit - 3] + "..."


def _is_control(char: str) -> bool:
    # Cc/Cf/Cs/Co/Cn: controls, bidi overrides, surrogates; Zl/Zp: line and paragraph breaks.
    return unicodedata.category(char)[0] == "C" or char in "\u2028\u2029"
