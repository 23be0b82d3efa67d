"""Out of file descriptors: the accept loop logs one line, sheds clients cleanly, recovers."""

from __future__ import annotations

import socket
import subprocess
import sys

import gevent

from tests.helpers import (
    ROOT,
    FollowedGproxy,
    echo_through,
    gproxy_env,
    ipv4_dest,
    recv_exact,
    socks5_connect,
    wait_for,
)

LIMIT = 48  # RLIMIT_NOFILE for the gproxy process, soft and hard (so gproxy cannot raise it)

WRAPPER = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({LIMIT}, {LIMIT})); "
    "sys.argv = ['gproxy', *sys.argv[1:]]; "
    "runpy.run_module('gproxy', run_name='__main__')"
)


class LimitedGproxy(FollowedGproxy):
    """gproxy started under a low descriptor limit."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=gproxy_env(),
            cwd=ROOT,
        )
        self.listening = {}
        self.stderr_lines = []
        self.wait_listening(30)
        self.follow()


def greet(addr: tuple[str, int]) -> tuple[socket.socket, bytes]:
    """Connect and send a SOCKS5 greeting; the socket and what came back (b"" if closed)."""
    sock = socket.socket()
    sock.settimeout(10)  # a client left hanging in the backlog would fail the test here
    sock.connect(addr)
    sock.sendall(b"\x05\x01\x00")
    try:
        answer = sock.recv(2)
        return sock, answer + (recv_exact(sock, 2 - len(answer)) if answer else b"")
    except ConnectionResetError:
        return sock, b""


def test_out_of_descriptors_sheds_and_recovers(echo_tcp):
    running = LimitedGproxy("--socks", "0", "--handshake-timeout", "60")
    held: list[socket.socket] = []
    try:
        addr = ("127.0.0.1", running.port())
        shed = None
        for _ in range(LIMIT + 10):  # each held client costs gproxy one descriptor
            sock, answer = greet(addr)
            if not answer:
                shed = sock
                break
            assert answer == b"\x05\x00"
            held.append(sock)
        assert shed is not None, "the descriptor limit was never reached"
        assert len(held) > 10
        shed.close()
        for _ in range(3):  # more clients while still out of descriptors: closed, not left hanging
            sock, answer = greet(addr)
            assert answer == b""
            sock.close()
        assert running.proc.poll() is None
        warnings = [line for line in running.stderr_lines if "Too many open files" in line]
        assert len(warnings) == 1, running.stderr_lines  # one line per episode, no traceback
        assert not any("Traceback" in line for line in running.stderr_lines)

        for sock in held:
            sock.close()
        held.clear()

        def served() -> bool:
            gevent.sleep(0.1)
            sock, reply = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port))
            try:
                return reply[1] == 0 and echo_through(sock, b"back") == b"back"
            finally:
                sock.close()

        wait_for(lambda: _attempt(served), what="gproxy to serve again")
        wait_for(lambda: any("accepting again" in line for line in running.stderr_lines), what="the recovery line")
        assert running.stop() == 0
    finally:
        for sock in held:
            sock.close()
        running.__exit__()


def _attempt(check) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(check())
    except (AssertionError, OSError, EOFError):
        return False
