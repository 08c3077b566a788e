"""A raw socket server on 127.0.0.1 that misbehaves as scripted, one behaviour per connection."""

from __future__ import annotations

import socket
import threading
from collections import deque
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True)
class Answer:
    """What to do with one request: send `data`, trickle `trickle`, hang `hang_s`, then close.

    `trickle` goes out `piece` bytes at a time, one piece every `every_s` seconds. With `then`,
    the connection is kept open instead of closed, and the next request on it gets `then`.
    """

    data: bytes = b""
    hang_s: float = 0.0
    trickle: bytes = b""
    piece: int = 1
    every_s: float = 0.5
    then: Answer | None = None


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
    """Answers connections with the scripted Answers in turn (the last one repeats).

    `connections` counts the connections accepted; `requested` is set once a request came in.
    """

    def __init__(self, *answers: Answer) -> None:
        self.answers = deque(answers)
        self.connections = 0
        self.requested = threading.Event()
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
            self.connections += 1
            answer = self.answers.popleft() if len(self.answers) > 1 else self.answers[0]
            threading.Thread(target=self._answer, args=(conn, answer), daemon=True).start()

    def _answer(self, conn: socket.socket, answer: Answer) -> None:
        with conn:
            conn.settimeout(2.0)
            step: Answer | None = answer
            try:
                while step is not None and self._play(conn, step):
                    step = step.then
            except OSError:
                pass  # the client hung up or cut the connection: that is its right

    def _play(self, conn: socket.socket, answer: Answer) -> bool:
        """Answer one request; False once the server is stopping."""
        conn.recv(65536)  # the request
        self.requested.set()
        conn.sendall(answer.data)
        for start in range(0, len(answer.trickle), answer.piece):
            if self._stop.wait(answer.every_s):
                return False
            conn.sendall(answer.trickle[start : start + answer.piece])
        return not self._stop.wait(answer.hang_s)

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
