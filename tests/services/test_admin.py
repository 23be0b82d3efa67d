"""``--admin``: /sessions with live byte counts, DELETE, /healthz, the page, the token."""

from __future__ import annotations

import base64
import socket

import gevent
import pytest
import requests

from gproxy.core.config import Config
from gproxy.core.errors import ConfigError
from tests.fake_auth import FakeAuthService
from tests.helpers import access_lines, echo_through, ipv4_dest, recv_all, recv_exact, socks5_connect, wait_for

FIELDS = {"id", "listener", "proto", "cmd", "client", "user", "dest", "via", "up", "down", "age"}


def _base(running) -> str:
    return f"http://127.0.0.1:{running.address('admin').port}"


def _lines(path):
    return [dict(p.split("=", 1) for p in line.split()) for line in access_lines(path)]


def test_sessions_show_live_bytes_and_delete_ends_one(proxy, echo_tcp, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"], user=["ann:pw"], access_log=str(log))
    socks = (running.address("socks5").host, running.address("socks5").port)
    tunnel, reply = socks5_connect(socks, ipv4_dest(echo_tcp.host, echo_tcp.port), auth=(b"ann", b"pw"))
    assert reply[1] == 0
    try:
        assert echo_through(tunnel, b"x" * 1234) == b"x" * 1234  # still open: counted live
        (row,) = requests.get(_base(running) + "/sessions", timeout=10).json()
        assert set(row) == FIELDS
        assert (row["listener"], row["proto"], row["cmd"], row["user"]) == ("socks5", "socks5", "connect", "ann")
        assert (row["dest"], row["via"], row["up"], row["down"]) == (f"127.0.0.1:{echo_tcp.port}", "direct", 1234, 1234)
        assert row["client"] == f"127.0.0.1:{tunnel.getsockname()[1]}" and row["age"] >= 0
        assert requests.delete(_base(running) + "/sessions/nope", timeout=10).status_code == 404
        assert requests.delete(_base(running) + f"/sessions/{row['id']}", timeout=10).status_code == 204
        assert recv_all(tunnel) == b""
    finally:
        tunnel.close()
    (entry,) = wait_for(lambda: _lines(log), what="the tunnel's line")
    assert (entry["outcome"], entry["up"], entry["down"]) == ("admin_closed", "1234", "1234")
    assert requests.get(_base(running) + "/sessions", timeout=10).json() == []


@pytest.mark.parametrize("proto", ["socks5", "http"])
def test_a_name_being_checked_is_not_shown_as_the_user(proxy, tmp_path, proto):
    # /sessions: user is null before or without auth; the access log still names the attempt.
    # The auth service holds its answer, so the session is listed while its name is checked.
    log = tmp_path / "access.log"
    with FakeAuthService() as service:
        service.mode = "held"
        listeners = {"socks": ["127.0.0.1:0"], "http": ["127.0.0.1:0"], "admin": ["127.0.0.1:0"]}
        running = proxy(**listeners, auth_url=service.url, access_log=str(log))
        with socket.create_connection(("127.0.0.1", running.address(proto).port), timeout=10) as client:
            if proto == "socks5":
                client.sendall(b"\x05\x01\x02" + b"\x01\x07[/oops]\x05wrong")
            else:
                token = base64.b64encode(b"[/oops]:wrong").decode()
                head = f"GET http://127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {token}\r\n\r\n"
                client.sendall(head.encode())
            wait_for(lambda: service.requests, what="the check at the auth service")
            rows = requests.get(_base(running) + "/sessions", timeout=10).json()
            (row,) = [row for row in rows if row["client"] == f"127.0.0.1:{client.getsockname()[1]}"]
            assert row["user"] is None
            service.release.set()  # refused: 403
            expected = b"\x05\x02\x01\x01" if proto == "socks5" else b"HTTP/1.1 407"
            assert recv_exact(client, len(expected)) == expected
    (entry,) = wait_for(lambda: _lines(log), what="its line")
    assert (entry["user"], entry["outcome"]) == ("[/oops]", "auth_failed")


def test_delete_ends_a_session_still_in_its_handshake(proxy, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"], access_log=str(log), handshake_timeout=30)
    with socket.create_connection(("127.0.0.1", running.address("socks5").port), timeout=10) as client:
        (row,) = wait_for(lambda: requests.get(_base(running) + "/sessions", timeout=10).json(), what="a session")
        assert requests.delete(_base(running) + f"/sessions/{row['id']}", timeout=10).status_code == 204
        assert recv_all(client) == b""
    (entry,) = wait_for(lambda: _lines(log), what="its line")
    assert entry["outcome"] == "admin_closed"


def test_healthz_is_503_while_draining(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"])
    base = _base(running)
    answer = requests.get(base + "/healthz", timeout=10)
    assert (answer.status_code, answer.text) == (200, "ok\n")
    socks = (running.address("socks5").host, running.address("socks5").port)
    held, _ = socks5_connect(socks, ipv4_dest(echo_tcp.host, echo_tcp.port))
    stopping = gevent.spawn(running.stop, 10)
    try:
        wait_for(lambda: running.draining, what="the drain")
        assert requests.get(base + "/healthz", timeout=10).status_code == 503
        assert len(requests.get(base + "/sessions", timeout=10).json()) == 1  # still visible while draining
    finally:
        held.close()
        stopping.join(15)


def test_page_lists_sessions_and_totals(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"])
    socks = (running.address("socks5").host, running.address("socks5").port)
    held, _ = socks5_connect(socks, ipv4_dest(echo_tcp.host, echo_tcp.port))
    try:
        echo_through(held, b"<b>" * 700)
        page = requests.get(_base(running) + "/", timeout=10)
        assert page.headers["content-type"].startswith("text/html")
        assert 'http-equiv="refresh"' in page.text and "<script" not in page.text and "http://" not in page.text
        assert f"127.0.0.1:{echo_tcp.port}" in page.text and "2.1 K" in page.text  # 2100 bytes each way
        assert "<b>1</b> sessions" in page.text
    finally:
        held.close()


def test_token_is_required_and_compared(proxy, tmp_path, caplog):
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"], admin_token="s3cr3t-t0ken", access_log=str(log))
    base = _base(running)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cr3t-t0ken"}):
        answer = requests.get(base + "/sessions", headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
    assert requests.get(base + "/healthz", headers={"Authorization": "Bearer s3cr3t-t0ken"}, timeout=10).text == "ok\n"
    assert "s3cr3t-t0ken" not in caplog.text + (log.read_text() if log.exists() else "")


def test_off_loopback_without_a_token_is_a_config_error():
    with pytest.raises(ConfigError, match="--admin-token"):
        Config.build(admin=["0.0.0.0:0"])
    assert Config.build(admin=["0.0.0.0:0"], admin_token="t").admin_token == "t"


def test_admin_clients_meet_the_client_rules(proxy):
    running = proxy(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"], allow=["10.0.0.0/8"])
    with socket.create_connection(("127.0.0.1", running.address("admin").port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = recv_all(sock)
        except ConnectionResetError:  # closed at once, before (or while) the request came
            answer = b""
        assert answer == b""


def test_a_slow_or_huge_request_is_dropped(proxy):
    running = proxy(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"], handshake_timeout=1)
    port = running.address("admin").port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /sessions HTTP/1.1\r\n")  # never finished
        assert recv_all(sock) == b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = sock.recv(100)  # the refusal, or a reset: the rest is never read
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer.split()[1] in (b"400", b"414")


@pytest.mark.parametrize("kind", ["admin", "metrics"])
def test_bad_requests_before_the_token_check_are_quiet(proxy, kind, caplog, capfd):
    # anyone who may connect must not fill the log: no error line, no traceback, per request
    running = proxy(socks=["127.0.0.1:0"], **{kind: ["127.0.0.1:0"]}, admin_token="tok", handshake_timeout=1)
    port = running.address(kind).port
    too_many_headers = b"GET / HTTP/1.1\r\n" + b"".join(b"X%d: a\r\n" % n for n in range(101)) + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(too_many_headers)
        assert recv_all(sock).split()[1:2] == [b"400"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nabc")  # body never ends
        recv_all(sock)  # answered or dropped, then closed at the request's deadline
    assert not [r for r in caplog.records if r.levelname in ("WARNING", "ERROR", "CRITICAL")]
    assert "Traceback" not in capfd.readouterr().err


def test_udp_mappings_are_listed_and_delete_ends_one(proxy, echo_udp, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(
        udp_forward=[f"127.0.0.1:0={echo_udp.host}:{echo_udp.port}"], admin=["127.0.0.1:0"], access_log=str(log)
    )
    forward = running.address("udp-forward")
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for client in clients:
            client.settimeout(5)
            client.sendto(b"ping", (forward.host, forward.port))
            assert client.recvfrom(100)[0] == b"ping"
        rows = requests.get(_base(running) + "/sessions", timeout=10).json()
        assert (
            sorted((row["proto"], row["cmd"], row["up"], row["down"]) for row in rows)
            == [("udp-forward", "udp", 4, 4)] * 2
        )
        mine = next(row for row in rows if row["client"] == f"127.0.0.1:{clients[0].getsockname()[1]}")
        assert requests.delete(_base(running) + f"/sessions/{mine['id']}", timeout=10).status_code == 204
        (entry,) = wait_for(lambda: _lines(log), what="its line")
        assert (entry["proto"], entry["outcome"], entry["client"]) == ("udp-forward", "admin_closed", mine["client"])
        (left,) = requests.get(_base(running) + "/sessions", timeout=10).json()
        assert left["id"] != mine["id"]
        clients[0].sendto(b"again", (forward.host, forward.port))  # a new mapping, a new session
        assert clients[0].recvfrom(100)[0] == b"again"
        assert len(requests.get(_base(running) + "/sessions", timeout=10).json()) == 2
    finally:
        for client in clients:
            client.close()
