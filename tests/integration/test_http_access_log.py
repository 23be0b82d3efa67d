"""HTTP access-log lines: one per forwarded request, with its own user, dest, status and bytes;
every value bounded; and each request of a kept-alive client checked against the rules of its moment."""

from __future__ import annotations

import base64
import socket

import pytest

from gproxy.core.config import Config
from tests.helpers import RecordingOrigin, wait_for
from tests.integration.test_access_log import lines_of
from tests.integration.test_http_proxy import RawClient


def basic(user: bytes, password: bytes) -> bytes:
    return b"Proxy-Authorization: Basic " + base64.b64encode(user + b":" + password) + b"\r\n"


def request(method: bytes, url: str, *extra: bytes, body: bytes = b"") -> bytes:
    length = b"Content-Length: %d\r\n" % len(body) if body else b""
    return method + b" " + url.encode() + b" HTTP/1.1\r\nHost: x\r\n" + length + b"".join(extra) + b"\r\n" + body


@pytest.fixture
def origins():
    with RecordingOrigin(body=b"one") as first, RecordingOrigin(body=b"the second") as second:
        yield first, second


def test_one_line_per_request_with_its_own_user_and_status(proxy, origins, tmp_path):
    first, second = origins
    log = tmp_path / "access.log"
    running = proxy(http=["127.0.0.1:0"], user=["alice:pw", "bob:pw2"], access_log=str(log))
    address = running.address("http")
    client = RawClient((address.host, address.port))
    try:
        response, body = client.request(request(b"GET", f"http://127.0.0.1:{first.port}/a", basic(b"alice", b"pw")))
        assert (response.status_code, body) == (200, b"one")
        response, body = client.request(
            request(b"POST", f"http://127.0.0.1:{second.port}/b", basic(b"bob", b"pw2"), body=b"xyz"), "POST"
        )
        assert (response.status_code, body) == (200, b"xyz")
        response, _ = client.request(request(b"GET", f"http://127.0.0.1:{first.port}/c", basic(b"eve", b"nope")))
        assert response.status_code == 407
    finally:
        client.close()
    entries = wait_for(lambda: len(lines_of(log)) >= 3 and lines_of(log), what="three access-log lines")
    assert len(entries) == 3, entries
    summary = [(e["cmd"], e["user"], e["dest"], e["status"], e["up"], e["down"], e["outcome"]) for e in entries]
    assert summary == [
        ("get", "alice", f"127.0.0.1:{first.port}", "200", "0", "3", "ok"),
        ("post", "bob", f"127.0.0.1:{second.port}", "200", "3", "3", "ok"),
        ("get", "eve", "-", "407", "0", "0", "auth_failed"),
    ]
    assert "nope" not in log.read_text()


def test_connect_is_one_line_per_tunnel_with_status(proxy, echo_tcp, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(http=["127.0.0.1:0"], access_log=str(log))
    address = running.address("http")
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % echo_tcp.port)
        assert sock.recv(100).startswith(b"HTTP/1.1 200")
        sock.sendall(b"ping")
        assert sock.recv(100) == b"ping"
    (entry,) = wait_for(lambda: lines_of(log), what="the tunnel's line")
    assert (entry["cmd"], entry["status"], entry["up"], entry["down"]) == ("connect", "200", "4", "4")


def test_logged_values_are_bounded(proxy, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(http=["127.0.0.1:0"], user=["alice:pw"], access_log=str(log))
    address = running.address("http")
    client = RawClient((address.host, address.port))
    try:
        long_user = b"\x01" * 40_000  # escaped, each would take 6 characters
        response, _ = client.request(request(b"GET", "http://" + "h" * 3000 + "/", basic(long_user, b"pw")))
        assert response.status_code == 407
    finally:
        client.close()
    (entry,) = wait_for(lambda: lines_of(log), what="the failed login's line")
    assert entry["outcome"] == "auth_failed"
    assert len(log.read_text()) < 4096


def test_a_kept_alive_client_meets_rules_changed_by_reload(proxy, origins):
    first, _ = origins
    running = proxy(http=["127.0.0.1:0"])
    address = running.address("http")
    client = RawClient((address.host, address.port))
    try:
        response, _ = client.request(request(b"GET", f"http://127.0.0.1:{first.port}/"))
        assert response.status_code == 200
        assert running.reload(Config.build(http=["127.0.0.1:0"], deny_dest=[f"127.0.0.1:{first.port}"]))
        response, _ = client.request(request(b"GET", f"http://127.0.0.1:{first.port}/"))
        assert response.status_code == 403
    finally:
        client.close()
