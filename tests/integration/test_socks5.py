"""SOCKS5 CONNECT end to end: real clients, every reply code, bulk data, half-close."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket

import gevent
import pytest
import requests
import socks
from gevent.server import StreamServer

from tests.helpers import (
    WsgiOrigin,
    curl,
    ipv4_dest,
    ipv6_dest,
    name_dest,
    pump_echo,
    pysocks_echo,
    read_socks5_reply,
    recv_all,
    recv_exact,
    socks5_connect,
)

AUTH = (b"u", b"p")


@pytest.fixture
def socks_proxy(proxy):
    running = proxy(socks=["127.0.0.1:0"], user=["u:p"])
    address = running.address("socks5")
    return address.host, address.port


@pytest.fixture
def origin():
    with WsgiOrigin() as server:
        yield server


# -- real clients -------------------------------------------------------------


def test_pysocks_ipv4_ipv6_and_name(socks_proxy, echo_tcp, echo_tcp6):
    for host, port in [("127.0.0.1", echo_tcp.port), ("::1", echo_tcp6.port), ("localhost", echo_tcp.port)]:
        pysocks_echo(
            socks.SOCKS5, socks_proxy, (host, port), b"ping " + host.encode(), rdns=True, username="u", password="p"
        )


def test_requests_socks5h(socks_proxy, origin):
    url = f"socks5h://u:p@{socks_proxy[0]}:{socks_proxy[1]}"
    response = requests.get(f"http://localhost:{origin.port}/", proxies={"http": url}, timeout=10)
    assert response.status_code == 200 and response.content == b"hello from origin"


def test_requests_wrong_password_fails(socks_proxy, origin):
    url = f"socks5h://u:wrong@{socks_proxy[0]}:{socks_proxy[1]}"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://localhost:{origin.port}/", proxies={"http": url}, timeout=10)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("mode", ["--socks5-hostname", "--socks5"])
def test_curl(socks_proxy, origin, mode):
    result = curl(mode, f"{socks_proxy[0]}:{socks_proxy[1]}", "--proxy-user", "u:p", f"http://localhost:{origin.port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"


# -- replies, byte for byte ---------------------------------------------------------


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "name"])
def test_success_reply_carries_the_real_bound_address(socks_proxy, echo_tcp, echo_tcp6, family):
    dest = {
        "ipv4": ipv4_dest("127.0.0.1", echo_tcp.port),
        "ipv6": ipv6_dest("::1", echo_tcp6.port),
        "name": name_dest("localhost", echo_tcp.port),
    }[family]
    sock, reply = socks5_connect(socks_proxy, dest, auth=AUTH)
    with sock:
        assert reply[:3] == b"\x05\x00\x00"
        if reply[3] == 1:
            bound = (socket.inet_ntoa(reply[4:8]), int.from_bytes(reply[8:10], "big"))
        else:
            assert reply[3] == 4
            bound = (socket.inet_ntop(socket.AF_INET6, reply[4:20]), int.from_bytes(reply[20:22], "big"))
        # The echo server saw a connection from exactly that address.
        sock.sendall(b"x")
        assert recv_exact(sock, 1) == b"x"
        assert bound[1] != 0 and bound[0] in ("127.0.0.1", "::1")


def _reply_code(proxy_addr, dest, auth=AUTH):
    sock, reply = socks5_connect(proxy_addr, dest, auth=auth)
    with sock:
        assert len(reply) == 10, "error replies are full length (ATYP 1 + 4 + 2)"
        assert recv_all(sock) == b"", "the connection is closed after an error reply"
    return reply


def test_refused_is_0x05(socks_proxy, closed_port):
    assert _reply_code(socks_proxy, ipv4_dest("127.0.0.1", closed_port)) == b"\x05\x05\x00\x01" + b"\0" * 6


@pytest.mark.parametrize(
    "dest",
    [ipv4_dest("127.0.0.1", 0), ipv4_dest("0.0.0.0", 80), ipv6_dest("::", 80)],
    ids=["port-0", "0.0.0.0", "[::]"],
)
def test_not_allowed_is_0x02(socks_proxy, dest):
    assert _reply_code(socks_proxy, dest)[:2] == b"\x05\x02"


def test_connect_to_itself_is_0x02(socks_proxy):
    assert _reply_code(socks_proxy, ipv4_dest(*socks_proxy))[:2] == b"\x05\x02"


def _failing_resolver(host, port):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def _slow_resolver(host, port):
    gevent.sleep(30)
    raise AssertionError("not reached")


@pytest.mark.parametrize(("resolver", "code"), [(_failing_resolver, 4), (_slow_resolver, 6)])
def test_name_failures(resolver, code):
    from gproxy import Config, Proxy

    running = Proxy(Config.build(socks=["127.0.0.1:0"], connect_timeout=0.3), resolver=resolver).start()
    try:
        address = running.address("socks5")
        reply = _reply_code((address.host, address.port), name_dest("nowhere.test", 80), auth=None)
        assert reply == bytes([5, code, 0, 1]) + b"\0" * 6
    finally:
        running.stop(0)


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", 0x07),  # command 9
        (b"\x05\x01\x00\x07\x00\x00\x00\x00\x00\x00", 0x08),  # address type 7
    ],
    ids=["unknown-command-is-0x07", "unknown-address-type-is-0x08"],
)
def test_unknown_request_fields(socks_proxy, request_bytes, code):
    sock = socket.create_connection(socks_proxy, timeout=10)
    with sock:
        sock.sendall(b"\x05\x01\x02\x01\x01u\x01p" + request_bytes)
        assert recv_exact(sock, 4) == b"\x05\x02\x01\x00"
        assert read_socks5_reply(sock) == bytes([5, code, 0, 1]) + b"\0" * 6
        assert recv_all(sock) == b""


def test_no_acceptable_method_is_05_ff(socks_proxy):
    sock = socket.create_connection(socks_proxy, timeout=10)
    with sock:
        sock.sendall(b"\x05\x01\x00")  # offers only "no auth", but users are configured
        assert recv_all(sock) == b"\x05\xff"


def test_bad_password_is_01_01(socks_proxy):
    sock = socket.create_connection(socks_proxy, timeout=10)
    with sock:
        sock.sendall(b"\x05\x01\x02\x01\x01u\x05wrong")
        assert recv_all(sock) == b"\x05\x02\x01\x01"


def test_bad_auth_version_is_01_01(socks_proxy):
    """RFC 1929: a sub-negotiation that is not version 1 gets a failure status before the close."""
    sock = socket.create_connection(socks_proxy, timeout=10)
    with sock:
        sock.sendall(b"\x05\x01\x02\x05\x01u\x01p")  # version 5 where RFC 1929 says 1
        assert recv_all(sock) == b"\x05\x02\x01\x01"


def test_without_users_only_no_auth_is_offered(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"])
    address = running.address("socks5")
    sock = socket.create_connection((address.host, address.port), timeout=10)
    with sock:
        sock.sendall(b"\x05\x01\x02")  # offers only user/password, but auth is off
        assert recv_all(sock) == b"\x05\xff"


# -- handshake framing --------------------------------------------------------------


def test_pipelined_handshake_and_early_data(socks_proxy, echo_tcp):
    sock = socket.create_connection(socks_proxy, timeout=10)
    with sock:
        sock.sendall(
            b"\x05\x01\x02"
            + b"\x01\x01u\x01p"
            + b"\x05\x01\x00"
            + ipv4_dest("127.0.0.1", echo_tcp.port)
            + b"early bytes"
        )
        assert recv_exact(sock, 4) == b"\x05\x02\x01\x00"
        assert read_socks5_reply(sock)[:2] == b"\x05\x00"
        assert recv_exact(sock, 11) == b"early bytes"


def test_handshake_split_byte_by_byte(socks_proxy, echo_tcp):
    sock = socket.create_connection(socks_proxy, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        request = b"\x05\x01\x02" + b"\x01\x01u\x01p" + b"\x05\x01\x00" + name_dest("localhost", echo_tcp.port)
        for byte in request:
            sock.sendall(bytes([byte]))
            gevent.sleep(0.001)
        assert recv_exact(sock, 4) == b"\x05\x02\x01\x00"
        assert read_socks5_reply(sock)[:2] == b"\x05\x00"


def test_handshake_timeout_drops_a_silent_client(proxy):
    running = proxy(socks=["127.0.0.1:0"], handshake_timeout=0.3)
    address = running.address("socks5")
    sock = socket.create_connection((address.host, address.port), timeout=10)
    with sock:
        sock.sendall(b"\x05")  # and then nothing
        assert recv_all(sock) == b""


# -- data -------------------------------------------------------------------------


def test_100mb_both_ways_sha256(socks_proxy, echo_tcp):
    size = 100 * 1024 * 1024
    sock, reply = socks5_connect(socks_proxy, ipv4_dest("127.0.0.1", echo_tcp.port), auth=AUTH)
    assert reply[1] == 0
    with sock:
        pump_echo(sock, size)


def test_half_close_client_still_gets_the_full_reply(socks_proxy):
    """The client shuts down writing; the server answers after EOF; the answer arrives."""

    def digest_after_eof(conn, _addr):
        digest = hashlib.sha256(recv_all(conn)).digest()
        conn.sendall(digest * 1000)  # 32 KB after the client's EOF

    server = StreamServer(("127.0.0.1", 0), digest_after_eof)
    server.start()
    try:
        sock, reply = socks5_connect(socks_proxy, ipv4_dest("127.0.0.1", server.server_port), auth=AUTH)
        assert reply[1] == 0
        payload = os.urandom(300_000)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == hashlib.sha256(payload).digest() * 1000
        sock.close()
    finally:
        server.stop(timeout=1)


def test_idle_timeout_closes_both_sides(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], idle_timeout=0.4)
    address = running.address("socks5")
    sock, reply = socks5_connect((address.host, address.port), ipv4_dest("127.0.0.1", echo_tcp.port))
    with sock:
        assert reply[1] == 0
        sock.sendall(b"still here")
        assert recv_exact(sock, 10) == b"still here"
        assert recv_all(sock) == b""  # idle: gproxy closes the tunnel
