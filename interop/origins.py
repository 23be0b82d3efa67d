"""Local origin servers for the interop suite: HTTP, HTTPS, TCP echo, UDP echo.

Each listens on one port on both 127.0.0.1 and ::1, so the IPv4, IPv6 and
name ("localhost", whichever address it resolves to) destinations reach the
same server. Plain threads: the clients under test are ordinary blocking code.
"""

from __future__ import annotations

import errno
import hashlib
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from pathlib import Path

LOOPBACKS = ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"))
IO_TIMEOUT = 30.0


def bind_dual(kind: int, tries: int = 50) -> list[socket.socket]:
    """Sockets on 127.0.0.1 and ::1 sharing one free port."""
    for _ in range(tries):
        first = socket.socket(socket.AF_INET, kind)
        first.bind(("127.0.0.1", 0))
        port = first.getsockname()[1]
        second = socket.socket(socket.AF_INET6, kind)
        second.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            second.bind(("::1", port))
        except OSError as exc:
            first.close()
            second.close()
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return [first, second]
    raise RuntimeError(f"no port free on both 127.0.0.1 and ::1 after {tries} tries")


def describe(method: str, path: str, body: bytes, proxy_auth_seen: bool, tls: bool) -> str:
    """The origin's answer; the test computes the same line and compares."""
    digest = hashlib.sha256(body).hexdigest()[:16]
    seen = "present" if proxy_auth_seen else "absent"
    return f"origin {method} {path} len={len(body)} sha={digest} proxy-authorization={seen} tls={tls}"


def _start(target: Callable[[], None]) -> None:
    threading.Thread(target=target, daemon=True).start()


class TCPOrigin:
    """Accepts on both loopbacks and runs ``handle(conn)`` in a thread per connection."""

    def __init__(self, handle: Callable[[socket.socket], None]) -> None:
        self.handle = handle
        self.sockets = bind_dual(socket.SOCK_STREAM)
        self.port = self.sockets[0].getsockname()[1]
        for sock in self.sockets:
            sock.listen(128)
            _start(lambda sock=sock: self._accept(sock))

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            conn.settimeout(IO_TIMEOUT)
            _start(lambda conn=conn: self._serve(conn))

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def echo(conn: socket.socket) -> None:
    """Echo every byte; half-close after the client does."""
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    tls = False

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = self.headers.get("Proxy-Authorization") is not None
        payload = (describe(self.command, self.path, body, seen, self.tls) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


class _HTTPSHandler(_Handler):
    tls = True


def http_handler(tls_context: ssl.SSLContext | None) -> Callable[[socket.socket], None]:
    def handle(conn: socket.socket) -> None:
        if tls_context is None:
            _Handler(conn, conn.getpeername(), None)  # type: ignore[arg-type]
            return
        with tls_context.wrap_socket(conn, server_side=True) as tls:
            _HTTPSHandler(tls, tls.getpeername(), None)  # type: ignore[arg-type]

    return handle


class UDPEcho:
    """Sends every datagram back to its sender, on both loopbacks."""

    def __init__(self) -> None:
        self.sockets = bind_dual(socket.SOCK_DGRAM)
        self.port = self.sockets[0].getsockname()[1]
        for sock in self.sockets:
            _start(lambda sock=sock: self._serve(sock))

    @staticmethod
    def _serve(sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65535)
                sock.sendto(data, peer)
            except OSError:
                return

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, 127.0.0.1 and ::1 (openssl CLI)."""
    cert, key = directory / "origin-cert.pem", directory / "origin-key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class Origins:
    """Every origin the suite needs, started once per run."""

    def __init__(self, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.cert = cert
        self.echo = TCPOrigin(echo)
        self.http = TCPOrigin(http_handler(None))
        self.https = TCPOrigin(http_handler(context))
        self.udp = UDPEcho()

    def close(self) -> None:
        for server in (self.echo, self.http, self.https, self.udp):
            server.close()
