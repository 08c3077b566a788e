"""A raw socket server on 127.0.0.1 that misbehaves as scripted, one behaviour per connection."""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class Answer:
    """What to do with one connection: send `data`, then hang for `hang_s` or close."""

    data: bytes = b""
    hang_s: float = 0.0


def http(status: int, body: bytes, content_type: str = "application/json", **headers: str) -> bytes:
    """A whole HTTP/1.1 response."""
    lines = [
        f"HTTP/1.1 {status} X",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


class ScriptedServer:
    """Answers connections with the scripted Answers in turn (the last one repeats)."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = deque(answers)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v2/pixverse/scheduler/"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            answer = self.answers.popleft() if len(self.answers) > 1 else self.answers[0]
            threading.Thread(target=self._answer, args=(conn, answer), daemon=True).start()

    def _answer(self, conn: socket.socket, answer: Answer) -> None:
        with conn:
            conn.settimeout(2.0)
            try:
                conn.recv(65536)  # the request
                conn.sendall(answer.data)
                deadline = time.monotonic() + answer.hang_s
                while time.monotonic() < deadline and not self._stop.is_set():
                    time.sleep(0.05)
            except OSError:
                pass

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v2/pixverse/scheduler/"
