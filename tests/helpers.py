"""Test servers and clients shared by the suites (not fixtures themselves)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


class EchoServer:
    """Echoes every byte back; half-closes after the client does."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.server = StreamServer((host, 0), self._handle)
        self.connections = 0

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        self.connections += 1
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    @property
    def host(self) -> str:
        return str(self.server.address[0])

    @property
    def port(self) -> int:
        return int(self.server.address[1])

    def __enter__(self) -> EchoServer:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)


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
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class GproxyProcess:
    """``python -m gproxy ARGS`` in a subprocess; reads the "listening" lines."""

    def __init__(self, *args: str, wait: bool = True, timeout: float = 15) -> None:
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
            self.wait_listening(timeout)

    def wait_listening(self, timeout: float) -> None:
        """Read stderr until every listener has announced itself."""
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
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe:
                    pipe.close()

    def __enter__(self) -> GproxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.stop()
