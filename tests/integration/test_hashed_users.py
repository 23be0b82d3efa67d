"""Hashed users end to end: htpasswd bcrypt and Argon2 lines over SOCKS5 and HTTP Basic,
the auth cache, the event loop kept free during slow checks, and no password in any output."""

from __future__ import annotations

import base64
import shutil
import socket
import subprocess
import sys

import argon2
import bcrypt
import gevent
import pytest

from gproxy.core import passwords
from tests.helpers import echo_through, gproxy_env, ipv4_dest, recv_exact, socks5_connect, start_gproxy, wait_for

HTPASSWD = shutil.which("htpasswd")
ARGON2_HASH = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("argon horse")


def htpasswd_line(user: str, password: str) -> str:
    """``htpasswd -nbB USER PASS``: ``USER:$2y$05$...``."""
    assert HTPASSWD is not None
    result = subprocess.run([HTPASSWD, "-nbB", user, password], capture_output=True, text=True, timeout=30, check=True)
    return result.stdout.strip()


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "users"
    lines = ["# hashed users", f"carol:{ARGON2_HASH}", "dave:plain horse"]
    if HTPASSWD is not None:
        lines.insert(1, htpasswd_line("alice", "bcrypt horse"))
    path.write_text("\n".join(lines) + "\n")
    return path


def socks5_auth(address: tuple[str, int], user: bytes, password: bytes) -> bool:
    """Greeting and RFC 1929 sub-negotiation only: did the proxy accept?"""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02")
        assert recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
        return recv_exact(sock, 2) == b"\x01\x00"


def http_connect_status(address: tuple[str, int], target: tuple[str, int], user: bytes, password: bytes) -> int:
    token = base64.b64encode(user + b":" + password).decode()
    with socket.create_connection(address, timeout=10) as sock:
        host, port = target
        request = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nProxy-Authorization: Basic {token}\r\n\r\n"
        sock.sendall(request.encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(1024)
            assert chunk, head
            head += chunk
        return int(head.split()[1])


CASES = [
    pytest.param(
        b"alice",
        b"bcrypt horse",
        marks=pytest.mark.skipif(HTPASSWD is None, reason="htpasswd (apache2-utils) is not installed"),
        id="htpasswd-bcrypt",
    ),
    pytest.param(b"carol", b"argon horse", id="argon2id"),
    pytest.param(b"dave", b"plain horse", id="plain"),
]


@pytest.mark.parametrize(("user", "password"), CASES)
def test_socks5_and_http_accept_the_right_password_only(proxy, echo_tcp, users_file, user, password):
    running = proxy(socks=["127.0.0.1:0"], http=["127.0.0.1:0"], users_file=str(users_file), auth_cache=0)
    socks = running.address("socks5")
    http = running.address("http")
    sock, reply = socks5_connect((socks.host, socks.port), ipv4_dest("127.0.0.1", echo_tcp.port), auth=(user, password))
    with sock:
        assert reply[1] == 0 and echo_through(sock, b"ping") == b"ping"
    assert not socks5_auth((socks.host, socks.port), user, password + b"!")
    assert not socks5_auth((socks.host, socks.port), b"mallory", password)
    target = ("127.0.0.1", echo_tcp.port)
    assert http_connect_status((http.host, http.port), target, user, password) == 200
    assert http_connect_status((http.host, http.port), target, user, password[:-1]) == 407


class CountingVerify:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._real = passwords.verify
        monkeypatch.setattr(passwords, "verify", self)

    def __call__(self, secret: passwords.Secret, password: bytes) -> bool:
        self.calls += 1
        return self._real(secret, password)


def test_second_connection_skips_the_hash_and_failures_are_not_cached(proxy, monkeypatch, users_file):
    counting = CountingVerify(monkeypatch)
    running = proxy(socks=["127.0.0.1:0"], users_file=str(users_file))  # --auth-cache default: 300 s
    address = (running.address().host, running.address().port)
    assert socks5_auth(address, b"carol", b"argon horse")
    assert socks5_auth(address, b"carol", b"argon horse")
    assert counting.calls == 1
    for _ in range(2):
        assert not socks5_auth(address, b"carol", b"wrong horse")
    assert counting.calls == 3


def test_auth_cache_zero_hashes_every_time(proxy, monkeypatch, users_file):
    counting = CountingVerify(monkeypatch)
    running = proxy(socks=["127.0.0.1:0"], users_file=str(users_file), auth_cache=0)
    address = (running.address().host, running.address().port)
    for _ in range(3):
        assert socks5_auth(address, b"carol", b"argon horse")
    assert counting.calls == 3


def test_a_slow_hash_does_not_stall_other_clients(proxy, tmp_path, echo_tcp, monkeypatch):
    path = tmp_path / "users"
    slow = bcrypt.hashpw(b"slow horse", bcrypt.gensalt(14)).decode()  # ~1 s of CPU per check
    path.write_text(f"slow:{slow}\nquick:quick horse\n")
    running = proxy(socks=["127.0.0.1:0"], users_file=str(path), auth_cache=0)
    address = (running.address().host, running.address().port)
    checking: list[bytes] = []  # filled on the threadpool when the slow check begins
    verify = passwords.verify
    monkeypatch.setattr(passwords, "verify", lambda secret, pw: checking.append(pw) or verify(secret, pw))
    slow_client = gevent.spawn(socks5_auth, address, b"slow", b"slow horse")
    wait_for(lambda: checking, timeout=10, what="the slow check under way")
    sock, reply = socks5_connect(address, ipv4_dest("127.0.0.1", echo_tcp.port), auth=(b"quick", b"quick horse"))
    with sock:
        assert reply[1] == 0 and echo_through(sock, b"ping") == b"ping"
    assert not slow_client.ready(), "the plain-text client waited for the bcrypt check"
    assert slow_client.get(timeout=30) is True


def test_passwords_and_hashes_appear_in_no_output(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"carol:{ARGON2_HASH}\n")
    access_log = tmp_path / "access.log"
    bad_password = "Sup3rSecretAttempt"
    running = start_gproxy("--socks", "127.0.0.1:0", "--users-file", str(path), "-v", "--access-log", str(access_log))
    try:
        address = ("127.0.0.1", running.port())
        assert not socks5_auth(address, b"carol", bad_password.encode())
        assert socks5_auth(address, b"carol", b"argon horse")
    finally:
        assert running.stop() == 0
    logged = "".join(running.stderr_lines) + access_log.read_text()
    assert "user=carol" in logged  # the attempts were logged, with the user name
    for secret in (bad_password, "argon horse", ARGON2_HASH, ARGON2_HASH.rsplit("$", 1)[1]):
        assert secret not in logged

    malformed = "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$NotBase64Hash!!"
    path.write_text(f"# comment\ncarol:{ARGON2_HASH}\nbob:{malformed}\n")
    result = subprocess.run(
        [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:0", "--users-file", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env=gproxy_env(),
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and f"{path}:3" in result.stderr
    assert "NotBase64Hash" not in result.stderr and "c2FsdHNhbHQ" not in result.stderr
