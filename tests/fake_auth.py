"""A tiny --auth-url service for tests: records what it is sent, answers as told."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
from gevent.server import StreamServer

Respond = Callable[[dict[str, Any]], "bytes | None"]


def http_answer(status: int, body: bytes = b"", reason: str = "X") -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


class FakeAuthService:
    """Accepts the users in ``users`` (name -> (password, settings or None)), 403 for anyone else.

    ``mode`` changes that: ``"500"``, ``"silent"`` (never answers), ``"big-head"``, ``"big-body"``,
    ``"garbage"`` (200 with a body that is not JSON), ``"held"`` (answers as normal once ``release``
    is set, 10 s at most). ``requests`` holds each request's JSON body,
    ``heads`` each request head.
    """

    def __init__(self, users: dict[str, tuple[str, dict[str, Any] | None]] | None = None, tls: Any = None) -> None:
        self.users = dict(users or {})
        self.mode = "normal"
        self.release = gevent.event.Event()
        self.requests: list[dict[str, Any]] = []
        self.heads: list[bytes] = []
        kwargs = {"ssl_context": tls} if tls is not None else {}
        self.server = StreamServer(("127.0.0.1", 0), self._handle, **kwargs)

    @property
    def url(self) -> str:
        scheme = "https" if self.server.ssl_enabled else "http"
        return f"{scheme}://127.0.0.1:{self.server.address[1]}/check?realm=test"

    def answer(self, request: dict[str, Any]) -> bytes | None:
        if self.mode == "500":
            return http_answer(500, b"down")
        if self.mode == "silent":
            return None
        if self.mode == "big-head":
            return b"HTTP/1.1 200 OK\r\nX-Filler: " + b"a" * 100_000 + b"\r\n\r\n"
        if self.mode == "big-body":
            return http_answer(200, b"{" + b" " * 1_000_000 + b"}")
        if self.mode == "garbage":
            return http_answer(200, b"OK, sure")
        if self.mode == "held":
            self.release.wait(10)
        password, settings = self.users.get(request.get("user"), (None, None))
        if password is None or request.get("password") != password:
            return http_answer(403)
        return http_answer(200, json.dumps(settings).encode() if settings is not None else b"")

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        sock.settimeout(10)
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    return
                body += chunk
            self.heads.append(head)
            request = json.loads(body)
            self.requests.append(request)
            reply = self.answer(request)
            if reply is None:
                with gevent.Timeout(30, False):
                    while sock.recv(4096):
                        pass
                return
            sock.sendall(reply)
        except (OSError, ssl.SSLError):
            pass

    def __enter__(self) -> FakeAuthService:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)
