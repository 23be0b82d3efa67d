"""Test servers and clients shared by the suites (not fixtures themselves)."""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

import gevent
from gevent.server import StreamServer

from gproxy import Config, Proxy

ROOT = Path(__file__).resolve().parent.parent
ProxyFactory = Callable[..., Proxy]


def make_proxy(**settings: Any) -> Proxy:
    """A started in-process Proxy; loopback port 0 and short timeouts by default."""
    settings.setdefault("handshake_timeout", 5)
    settings.setdefault("connect_timeout", 5)
    return Proxy(Config.build(**settings)).start()


class TcpServer:
    """A gevent StreamServer on ``host``, port 0, serving each connection with ``_handle``;
    started and stopped as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.server = StreamServer((host, 0), self._handle)

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        raise NotImplementedError

    @property
    def host(self) -> str:
        return str(self.server.address[0])

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def __enter__(self) -> Self:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)


class EchoServer(TcpServer):
    """Echoes every byte back; half-closes after the client does."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__(host)
        self.connections = 0

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        self.connections += 1
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def gproxy_env() -> dict[str, str]:
    """The environment for a gproxy subprocess: this checkout first on PYTHONPATH (and no empty
    entry, which would put the subprocess's current directory on its path)."""
    env = dict(os.environ)
    entries = [str(ROOT), *(entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry)]
    env["PYTHONPATH"] = os.pathsep.join(entries)
    return env


class GproxyProcess:
    """``python -m gproxy ARGS`` in a subprocess; reads the "listening" lines."""

    def __init__(self, *args: str, wait: bool = True, timeout: float = 15, listeners: int = 1) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gproxy", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=gproxy_env(),
            cwd=ROOT,
        )
        self.listening: dict[str, list[tuple[str, int]]] = {}
        self.stderr_lines: list[str] = []
        if wait:
            for _ in range(listeners):
                self.wait_listening(timeout)

    def wait_listening(self, timeout: float) -> None:
        """Read stderr until the next listener has announced itself."""
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        with gevent.Timeout(timeout, TimeoutError("gproxy did not start")):
            while time.monotonic() < deadline:
                line = self.proc.stderr.readline().decode()
                if not line:
                    raise RuntimeError("gproxy exited: " + "".join(self.stderr_lines))
                self.stderr_lines.append(line)
                if line.startswith("gproxy: listening "):
                    kind, address = line.split()[2:4]
                    host, _, port = address.rpartition(":")
                    self.listening.setdefault(kind, []).append((host.strip("[]"), int(port)))
                    return

    def port(self, kind: str = "socks5") -> int:
        return self.listening[kind][0][1]

    def stop(self, sig: int = 15, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.close_pipes()

    def close_pipes(self) -> None:
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe:
                pipe.close()

    def __enter__(self) -> GproxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop()


class UdpEchoServer:
    """Echoes every datagram to its sender; ``host="localhost"`` binds 127.0.0.1 and ::1
    on one port, so a name that resolves to either family reaches it."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.sockets = self._bind(host)
        self.port = int(self.sockets[0].getsockname()[1])
        self.received: list[bytes] = []
        self.sources: list[tuple[str, int]] = []  # where each datagram came from
        self.loops: list[gevent.Greenlet] = []

    @staticmethod
    def _bind(host: str) -> list[socket.socket]:
        if host != "localhost":
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            return [sock]
        for _ in range(50):
            v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            v4.bind(("127.0.0.1", 0))
            v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            try:
                v6.bind(("::1", v4.getsockname()[1]))
            except OSError:
                v4.close()
                v6.close()
                continue
            return [v4, v6]
        raise RuntimeError("no port free on both 127.0.0.1 and ::1")

    def _serve(self, sock: socket.socket) -> None:
        while True:
            try:
                data, peer = sock.recvfrom(65535)
                self.received.append(data)
                self.sources.append(peer[:2])
                sock.sendto(data, peer)
            except OSError:
                if sock.fileno() < 0:
                    return

    @property
    def address(self) -> tuple[str, int]:
        return (str(self.sockets[0].getsockname()[0]), self.port)

    def __enter__(self) -> UdpEchoServer:
        self.loops = [gevent.spawn(self._serve, sock) for sock in self.sockets]
        return self

    def __exit__(self, *exc: object) -> None:
        gevent.killall(self.loops)
        for sock in self.sockets:
            sock.close()


def socks5_handshake(sock: socket.socket, command: int, host: str, port: int) -> tuple[str, int]:
    """A raw RFC 1928 no-auth request on a connected socket; returns BND as (host, port).

    Raises ConnectionError with the reply code when the reply is not success.
    """
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(b"\x05" + bytes((command, 0)) + socks5_address(host, port))
    return read_socks5_bound(sock)


def read_socks5_bound(sock: socket.socket) -> tuple[str, int]:
    """Read one full SOCKS5 reply; ConnectionError(code) unless it is success."""
    import ipaddress
    import struct

    head = recv_exact(sock, 4)
    atyp = head[3]
    if atyp == 1:
        host = str(ipaddress.IPv4Address(recv_exact(sock, 4)))
    elif atyp == 4:
        host = str(ipaddress.IPv6Address(recv_exact(sock, 16)))
    else:
        host = recv_exact(sock, recv_exact(sock, 1)[0]).decode()
    (port,) = struct.unpack("!H", recv_exact(sock, 2))
    if head[1] != 0:
        raise ConnectionError(head[1], f"SOCKS5 reply {head[1]:#04x}")
    return host, port


def feed_every_split(parse: Callable[[bytearray], Any], message: bytes) -> Any:
    """Every proper prefix needs more data; the whole message parses, using all of it."""
    for cut in range(len(message)):
        assert parse(bytearray(message[:cut])) is None, f"prefix of {cut} bytes parsed"
    result = parse(bytearray(message))
    assert result is not None and result[1] == len(message)
    return result[0]


def recv_head(sock: socket.socket, limit: int = 65536) -> bytes:
    """Bytes up to and including the blank line that ends an HTTP head (fewer if the peer
    closes first); reads at most ``limit`` bytes."""
    head = b""
    while b"\r\n\r\n" not in head and len(head) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return head


def socks5_address(host: str, port: int) -> bytes:
    """``ATYP ADDR PORT`` for an IP literal or a name."""
    import ipaddress
    import struct

    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode()
        return bytes((3, len(name))) + name + struct.pack("!H", port)
    return bytes((1 if ip.version == 4 else 4,)) + ip.packed + struct.pack("!H", port)


def socks5_udp_datagram(host: str, port: int, payload: bytes, frag: int = 0) -> bytes:
    """An RFC 1928 UDP request datagram."""
    return bytes((0, 0, frag)) + socks5_address(host, port) + payload


def parse_socks5_udp_datagram(datagram: bytes) -> tuple[tuple[str, int], bytes]:
    """(source, payload) of an RFC 1928 UDP reply datagram."""
    import ipaddress
    import struct

    assert datagram[:3] == b"\0\0\0", datagram[:3]
    atyp = datagram[3]
    if atyp == 1:
        host, end = str(ipaddress.IPv4Address(datagram[4:8])), 8
    elif atyp == 4:
        host, end = str(ipaddress.IPv6Address(datagram[4:20])), 20
    else:
        length = datagram[4]
        host, end = datagram[5 : 5 + length].decode(), 5 + length
    (port,) = struct.unpack("!H", datagram[end : end + 2])
    return (host, port), datagram[end + 2 :]


class WsgiOrigin:
    """A small HTTP origin (gevent.pywsgi): GET returns ``body``, POST echoes the body."""

    def __init__(self, host: str = "127.0.0.1", body: bytes = b"hello from origin") -> None:
        from gevent.pywsgi import WSGIServer

        self.body = body
        self.server = WSGIServer((host, 0), self._app, log=None, error_log=None)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        body = environ["wsgi.input"].read() if environ["REQUEST_METHOD"] == "POST" else self.body
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def __enter__(self) -> WsgiOrigin:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)


def socks5_connect(
    proxy_addr: tuple[str, int],
    dest: bytes,
    *,
    auth: tuple[bytes, bytes] | None = None,
    family: int = socket.AF_INET,
) -> tuple[socket.socket, bytes]:
    """Raw SOCKS5 client: greeting, optional RFC 1929 auth, request ``dest``
    (ATYP+ADDR+PORT bytes). Returns the socket and the full reply bytes."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(proxy_addr)
    if auth:
        sock.sendall(b"\x05\x01\x02")
        assert recv_exact(sock, 2) == b"\x05\x02"
        user, password = auth
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        assert recv_exact(sock, 2) == b"\x01\x00"
    else:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(b"\x05\x01\x00" + dest)
    return sock, read_socks5_reply(sock)


def read_socks5_reply(sock: socket.socket) -> bytes:
    """One whole SOCKS5 reply, however long its address is."""
    head = recv_exact(sock, 4)
    atyp = head[3]
    if atyp == 1:
        rest = recv_exact(sock, 6)
    elif atyp == 4:
        rest = recv_exact(sock, 18)
    else:
        length = recv_exact(sock, 1)
        rest = length + recv_exact(sock, length[0] + 2)
    return head + rest


def ipv4_dest(host: str, port: int) -> bytes:
    return b"\x01" + socket.inet_aton(host) + port.to_bytes(2, "big")


def ipv6_dest(host: str, port: int) -> bytes:
    return b"\x04" + socket.inet_pton(socket.AF_INET6, host) + port.to_bytes(2, "big")


def name_dest(name: str, port: int) -> bytes:
    return b"\x03" + bytes([len(name)]) + name.encode() + port.to_bytes(2, "big")


# -- operations: workers, metrics, signals --------------------------------------------


def wait_for(predicate: Callable[[], Any], timeout: float = 10, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        gevent.sleep(interval)


class FollowedGproxy(GproxyProcess):
    """A GproxyProcess whose stderr keeps being read into ``stderr_lines`` after start-up."""

    follower: gevent.Greenlet | None = None

    def follow(self) -> None:
        def follow() -> None:
            assert self.proc.stderr is not None
            for raw in self.proc.stderr:
                self.stderr_lines.append(raw.decode(errors="replace"))

        self.follower = gevent.spawn(follow)

    def stop(self, sig: int = 15, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout)
        if self.follower is not None:
            self.follower.join(5)  # reads to EOF, then the pipes can close
            self.follower.kill()
        return super().stop(sig, timeout)


def free_port() -> int:
    """A port free now, below the ephemeral range (32768 and up on Linux): no outgoing
    connection of this or another test can take it before gproxy binds it."""
    start = random.randrange(20000, 32000)
    for port in range(start, start + 500):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the ephemeral range")


def start_gproxy(*args: str, listeners: int = 1, timeout: float = 30) -> FollowedGproxy:
    """A gproxy subprocess that has announced ``listeners`` listeners; stderr is then followed."""
    running = FollowedGproxy(*args, wait=False)
    try:
        for _ in range(listeners):
            running.wait_listening(timeout)
    except BaseException:
        running.proc.kill()
        running.stop()
        raise
    running.follow()
    return running


def scrape_metrics(
    port: int, host: str = "127.0.0.1", *, before: bytes = b""
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``GET /metrics`` (after ``before``: a PROXY header) -> {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(before + f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        response = recv_all(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of ``name`` over samples whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and want <= have)


def child_pids(pid: int) -> set[int]:
    """The PIDs of a process's children (Linux /proc)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return {int(word) for word in text.split()}


def echo_through(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` and read as many bytes back."""
    sock.sendall(data)
    return recv_exact(sock, len(data))


class RecordingOrigin:
    """An HTTP origin (gevent.pywsgi) that records what reached it.

    ``/big/N`` streams N deterministic bytes (see ``big_body``), with
    Content-Length, or chunked under ``/big-chunked/N``; anything else answers
    ``body`` for GET/HEAD and echoes the request body otherwise. Each request is
    recorded as a dict: method, path, headers (lower-case names), body, peer.
    """

    def __init__(self, host: str = "127.0.0.1", body: bytes = b"hello from origin") -> None:
        from gevent.pywsgi import WSGIServer

        self.body = body
        self.requests: list[dict[str, Any]] = []
        self.server = WSGIServer((host, 0), self._app, log=None, error_log=None)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        headers = {
            key[5:].replace("_", "-").lower(): value for key, value in environ.items() if key.startswith("HTTP_")
        }
        for key in ("CONTENT_LENGTH", "CONTENT_TYPE"):
            if environ.get(key):
                headers[key.replace("_", "-").lower()] = environ[key]
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if environ.get("QUERY_STRING"):
            path += "?" + environ["QUERY_STRING"]
        body = environ["wsgi.input"].read()
        self.requests.append(
            {"method": method, "path": path, "headers": headers, "body": body, "peer": environ["REMOTE_PORT"]}
        )
        kind, _, size = path.strip("/").partition("/")
        if kind in ("big", "big-chunked") and size.isdigit():
            length = [("Content-Length", size)] if kind == "big" else []
            start_response("200 OK", [("Content-Type", "application/octet-stream"), *length])
            return big_body(int(size))
        answer = self.body if method in ("GET", "HEAD") else body
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(answer)))])
        return [answer]

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def url(self, path: str = "/", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def __enter__(self) -> RecordingOrigin:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)


def big_body(size: int, block: int = 1 << 16) -> Any:
    """``size`` deterministic bytes, in blocks (a generator: never all in memory)."""
    import hashlib

    seed = hashlib.sha256(b"gproxy").digest() * (block // 32)
    sent = 0
    while sent < size:
        chunk = seed[: min(block, size - sent)]
        chunk = bytes([sent // block % 251]) + chunk[1:]  # vary the blocks
        sent += len(chunk)
        yield chunk


def big_body_sha256(size: int) -> str:
    import hashlib

    digest = hashlib.sha256()
    for chunk in big_body(size):
        digest.update(chunk)
    return digest.hexdigest()


def make_cert(directory: Path, *, alt_names: bool = True) -> tuple[str, str]:
    """A self-signed certificate for localhost, 127.0.0.1 and ::1 (openssl); returns (cert, key).
    ``alt_names=False``: no subjectAltName, only the subject's common name ``localhost``."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    san = ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1"] if alt_names else []
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        + ["-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost"]
        + san,
        check=True,
        capture_output=True,
        timeout=30,
    )
    return str(cert), str(key)


class FakeHttpUpstream(TcpServer):
    """A minimal HTTP CONNECT proxy for upstream tests: answers ``status`` (200 relays to
    the target, sending ``early`` right after the head); records each request head."""

    def __init__(self, status: int = 200, early: bytes = b"") -> None:
        self.status = status
        self.early = early
        self.heads: list[bytes] = []
        super().__init__()

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        from gproxy.core.relay import relay

        head = recv_head(sock)
        if b"\r\n\r\n" not in head:
            return
        self.heads.append(head)
        if self.status != 200:
            sock.sendall(f"HTTP/1.1 {self.status} No\r\nContent-Length: 0\r\n\r\n".encode())
            return
        host, _, port = head.split(b" ")[1].decode().rpartition(":")
        target = socket.create_connection((host.strip("[]"), int(port)), timeout=5)
        sock.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + self.early)
        try:
            relay(sock, target, idle_timeout=10)
        finally:
            target.close()


class Wrapped:
    """A socket-like object without a raw descriptor (what a TLS socket looks like to the
    relay): drives the relay's greenlet engine in tests."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def recv_into(self, buf: memoryview | bytearray) -> int:
        return self.sock.recv_into(buf)

    def sendall(self, data: bytes | memoryview) -> None:
        self.sock.sendall(data)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def run_gproxy(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m gproxy ARGS`` to its end (a CLI mistake exits at once): code and output.
    No stdin (nothing waits for a line); ``env`` is added to gproxy_env()."""
    return subprocess.run(
        [sys.executable, "-m", "gproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**gproxy_env(), **(env or {})},
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
    )


# -- clients and servers several test files use ---------------------------------------

#: Python source of ``Hello``, an http.server handler that answers ``GET PATH`` with ``hello PATH``,
#: for programs the tests run in a subprocess: their source has a line ``HELLO_HANDLER`` where it
#: goes (``.replace("HELLO_HANDLER\n", HELLO_HANDLER_SOURCE)``) and imports http.server
HELLO_HANDLER_SOURCE = """
class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"hello " + self.path.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
"""


def pysocks_echo(
    proxy_type: int, proxy_addr: tuple[str, int], dest: tuple[str, int], data: bytes, **options: Any
) -> None:
    """Through a PySocks socket (``set_proxy(proxy_type, *proxy_addr, **options)``) to the echo
    server at ``dest``: ``data`` comes back."""
    import socks

    with socks.socksocket() as client:
        client.set_proxy(proxy_type, *proxy_addr, **options)
        client.settimeout(10)
        client.connect(dest)
        assert echo_through(client, data) == data


def pump_echo(sock: socket.socket, total: int) -> None:
    """Send ``total`` pseudo-random bytes (no two blocks in a row alike), then half-close, while
    reading the echo back; asserts the same bytes came back (count and sha256)."""
    import hashlib

    block = os.urandom(1 << 20)
    sent, received = hashlib.sha256(), hashlib.sha256()

    def writer() -> None:
        left, i = total, 0
        while left:
            chunk = (block[i % 7 :] + block[: i % 7])[:left]  # vary the stream
            sock.sendall(chunk)
            sent.update(chunk)
            left -= len(chunk)
            i += 1
        sock.shutdown(socket.SHUT_WR)  # half-close; the echo keeps flowing back

    task = gevent.spawn(writer)
    count = 0
    while data := sock.recv(1 << 20):
        received.update(data)
        count += len(data)
    task.get()
    assert count == total
    assert received.hexdigest() == sent.hexdigest()


class BannerServer(TcpServer):
    """A TCP server on 127.0.0.1 that sends ``banner`` to each connection, then closes it."""

    def __init__(self, banner: bytes) -> None:
        self.banner = banner
        super().__init__()

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        sock.sendall(self.banner)
        sock.close()


class CannedOrigin(TcpServer):
    """An HTTP origin on 127.0.0.1 that reads each request head and answers ``response``
    as given; with ``rest``, sends that too once ``go`` is set (10 s at most), then closes."""

    def __init__(self, response: bytes, rest: bytes = b"") -> None:
        import gevent.event

        self.response, self.rest = response, rest
        self.go = gevent.event.Event()
        super().__init__()

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        recv_head(sock)
        sock.sendall(self.response)
        if self.rest and self.go.wait(10):
            sock.sendall(self.rest)
        sock.close()


def curl(*args: str, max_time: int = 10) -> subprocess.CompletedProcess[bytes]:
    """``curl -sS --max-time MAX_TIME ARGS``: its exit code, stdout and stderr."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", str(max_time), *args], capture_output=True, timeout=max_time + 20
    )


# -- network namespaces (root and iproute2) ---------------------------------------------


def run_ip(*args: str) -> None:
    """``ip ARGS`` (iproute2); CalledProcessError when it fails."""
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


def run_in_netns(ns: str, module: str, *args: str, timeout: float = 60) -> dict[str, object]:
    """``python -m MODULE ARGS`` in network namespace ``ns`` (this checkout on its path); the JSON it prints."""
    import json

    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=gproxy_env(),
        cwd=ROOT,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


@contextmanager
def network_namespaces(*names: str) -> Iterator[None]:
    """The named network namespaces (loopback up) for the block, deleted after it; skips the
    test when they cannot be created."""
    import pytest

    created: list[str] = []
    try:
        for ns in names:
            try:
                run_ip("netns", "add", ns)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"cannot create network namespaces: {exc.stderr.decode().strip()}")
            created.append(ns)
            run_ip("-n", ns, "link", "set", "lo", "up")
        yield
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)


#: one ``key=value`` of an access-log line; the value bare or a JSON string
_LOGFMT_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def access_lines(path: Path) -> list[str]:
    """The complete lines of an access log (none if it does not exist yet): a line gproxy is
    still writing (a write that crosses a page can be read half done) waits for the next look."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return text[: text.rfind("\n") + 1].splitlines()


def logfmt_fields(line: str) -> dict[str, str]:
    """An access-log line's fields in order, quoted values decoded; asserts the line is
    nothing but ``key=value`` pairs separated by single spaces."""
    line = line.rstrip("\n")
    pairs = _LOGFMT_PAIR.findall(line)
    assert " ".join(f"{key}={value}" for key, value in pairs) == line, line
    return {key: json.loads(value) if value.startswith('"') else value for key, value in pairs}


class FakeAdmin(BaseHTTPRequestHandler):
    """A stand-in for gproxy's admin listener (``GET /sessions``, token ``s3cret``): one busy and
    one quiet session, moving. Serve it with serve_http_handler()."""

    started = time.monotonic()
    token = "s3cret"

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        body = json.dumps(self.sessions(time.monotonic() - self.started)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def sessions(self, t: float) -> list[dict[str, object]]:
        """The sessions ``t`` seconds after start."""
        return [
            {"id": 7, "user": "alice", "client": "127.0.0.1:5000", "proto": "socks5", "cmd": "connect",
             "dest": "quiet.example:22", "via": "direct", "up": 10, "down": 10, "age": t},
            {"id": 9, "user": "bob", "client": "127.0.0.1:5001", "proto": "http", "cmd": "connect",
             "dest": "busy.example:443", "via": "direct", "up": 100, "down": int(t * 5_000_000), "age": t},
        ]  # fmt: skip

    def log_message(self, *args: object) -> None:
        pass


def serve_http_handler(handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """For a fixture: the standard library's threading HTTP server with ``handler`` on
    127.0.0.1; yields its port, then shuts it down."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


@contextmanager
def cyclic_garbage() -> Iterator[list[str]]:
    """The type names of the objects made in the block that only the cycle collector
    would free (filled in as the block ends); the collector is off meanwhile."""
    import gc

    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    names: list[str] = []
    try:
        yield names
        gc.collect()
        names.extend(type(obj).__name__ for obj in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
