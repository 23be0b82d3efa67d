"""SOCKS5 UDP ASSOCIATE through upstreams: a second gproxy's SOCKS5 UDP ASSOCIATE, a gproxy --ss
as an ss:// upstream (Shadowsocks UDP), --bypass destinations direct, and 0x07 when no upstream
can carry UDP."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import (
    UdpEchoServer,
    access_lines,
    make_cert,
    read_socks5_reply,
    recv_exact,
    socks5_address,
    wait_for,
)
from tests.integration.test_udp import Association

METHODS = ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]
UDP_ASSOCIATE = 3


def hostport(running, kind: str = "socks5") -> tuple[str, int]:
    address = running.address(kind)
    return address.host, address.port


def log_lines(path: Path, what: str, count: int = 1) -> list[str]:
    """The access-log lines containing ``what`` once there are ``count`` of them (polled, bounded)."""

    def found() -> list[str]:
        lines = access_lines(path)
        matching = [line for line in lines if what in line]
        return matching if len(matching) >= count else []

    return wait_for(found, timeout=15, what=f"{count} access-log lines with {what!r} in {path.name}")  # type: ignore[no-any-return]


def field(line: str, name: str) -> str:
    return next(pair.split("=", 1)[1] for pair in line.split() if pair.startswith(name + "="))


def echo_round_trip(assoc: Association, echo: UdpEchoServer, payload: bytes) -> None:
    host, port = echo.address
    assoc.send(host, port, payload)
    source, answer = assoc.recv()
    assert answer == payload
    assert source == (host, port)  # the reply carries its real source


def round_trips(front, *trips: tuple[UdpEchoServer, bytes]) -> int:
    """Each (echo server, payload) in turn through one association on ``front``'s SOCKS5
    listener (see echo_round_trip); returns the payload bytes sent."""
    assoc = Association(hostport(front))
    try:
        for echo, payload in trips:
            echo_round_trip(assoc, echo, payload)
    finally:
        assoc.close()
    return sum(len(payload) for _, payload in trips)


@pytest.fixture
def socks_upstream(proxy, tmp_path):
    """A second gproxy with a SOCKS5 listener: (its URL, its access log)."""
    log = tmp_path / "upstream.log"
    upstream = proxy(socks=["127.0.0.1:0"], access_log=str(log))
    return "socks5://{}:{}".format(*hostport(upstream)), log


def test_associate_through_a_socks5_upstream(proxy, socks_upstream, echo_udp, echo_udp6, tmp_path):
    url, upstream_log = socks_upstream
    front_log = tmp_path / "front.log"
    front = proxy(socks=["127.0.0.1:0"], upstream=url, access_log=str(front_log))
    sent = round_trips(
        front, (echo_udp, b"first through the upstream"), (echo_udp6, b"and to IPv6"), (echo_udp, b"again")
    )
    (front_line,) = log_lines(front_log, "cmd=udp-associate")
    assert f"via={url}" in front_line and f"up={sent} down={sent} " in front_line, front_line
    # the upstream carried all of it in one association, opened from 127.0.0.1
    (upstream_line,) = log_lines(upstream_log, "cmd=udp-associate")
    assert field(upstream_line, "client").startswith("127.0.0.1:"), upstream_line
    assert f"up={sent} down={sent} " in upstream_line, upstream_line


def test_associate_through_a_socks5_tls_upstream_with_credentials(proxy, echo_udp, tmp_path):
    cert, key = make_cert(tmp_path)
    upstream_log = tmp_path / "upstream.log"
    upstream = proxy(socks_tls=["127.0.0.1:0"], user=["bob:b-pw"], cert=cert, key=key, access_log=str(upstream_log))
    url = "socks5+tls://bob:b-pw@{}:{}".format(*hostport(upstream, "socks5-tls"))
    front = proxy(socks=["127.0.0.1:0"], upstream=url, ca=[cert])
    round_trips(front, (echo_udp, b"control over TLS"))
    (line,) = log_lines(upstream_log, "cmd=udp-associate")  # authenticated, over TLS
    assert "user=bob" in line and "proto=socks5" in line and "up=16 down=16 " in line, line


def test_outgoing_binds_the_control_connection_and_the_datagrams(proxy, socks_upstream, echo_udp):
    url, upstream_log = socks_upstream
    front = proxy(socks=["127.0.0.1:0"], upstream=url, outgoing=["127.0.0.2"])
    round_trips(front, (echo_udp, b"from 127.0.0.2"))  # the upstream takes datagrams from its client's IP only
    (line,) = log_lines(upstream_log, "cmd=udp-associate")
    assert field(line, "client").startswith("127.0.0.2:") and "up=14 down=14 " in line, line


def test_a_name_is_resolved_by_the_upstream(proxy, socks_upstream, echo_udp_localhost):
    url, _ = socks_upstream
    front = proxy(socks=["127.0.0.1:0"], upstream=url)
    assoc = Association(hostport(front))
    try:
        assoc.send("localhost", echo_udp_localhost.port, b"by name")
        source, payload = assoc.recv()
    finally:
        assoc.close()
    assert payload == b"by name"
    assert source in (("127.0.0.1", echo_udp_localhost.port), ("::1", echo_udp_localhost.port))


@pytest.mark.parametrize("method", METHODS)
def test_associate_through_an_ss_upstream(proxy, echo_udp, echo_udp6, tmp_path, method):
    ss_log = tmp_path / "ss.log"
    server = proxy(ss=["127.0.0.1:0"], ss_method=method, user=["alice:ss-pw"], access_log=str(ss_log), idle_timeout=1)
    url = "ss://{}:ss-pw@{}:{}".format(method, *hostport(server, "ss"))
    front_log = tmp_path / "front.log"
    front = proxy(socks=["127.0.0.1:0"], upstream=url, access_log=str(front_log))
    sent = round_trips(front, (echo_udp, b"sealed"), (echo_udp6, b"sealed for IPv6"))
    (front_line,) = log_lines(front_log, "cmd=udp-associate")
    assert f"via=ss://{method}:***@" in front_line and f"up={sent} down={sent} " in front_line, front_line
    assert "ss-pw" not in front_log.read_text()
    # the ss server opened every packet with alice's key (its mapping ends after its idle timeout)
    (ss_line,) = log_lines(ss_log, "cmd=udp")
    assert "proto=ss" in ss_line and "user=alice" in ss_line and f"up={sent} down={sent} " in ss_line, ss_line


def test_bypass_destinations_go_direct(proxy, socks_upstream, echo_udp, echo_udp6, tmp_path):
    url, upstream_log = socks_upstream
    front = proxy(socks=["127.0.0.1:0"], upstream=url, bypass=["127.0.0.1"])
    round_trips(front, (echo_udp, b"bypassed"), (echo_udp6, b"via the upstream"))
    (upstream_line,) = log_lines(upstream_log, "cmd=udp-associate")
    n = len(b"via the upstream")
    assert f"up={n} down={n} " in upstream_line, upstream_line  # the bypassed datagram never reached it


def test_a_dead_upstream_is_skipped_for_the_next(proxy, socks_upstream, echo_udp):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        dead = f"socks5://127.0.0.1:{unused.getsockname()[1]}"  # bound, never listening: refused
        url, _ = socks_upstream
        front = proxy(socks=["127.0.0.1:0"], upstream=[dead, url])
        round_trips(front, (echo_udp, b"second upstream"))


def test_a_dead_upstream_fails_the_associate(proxy):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        front = proxy(socks=["127.0.0.1:0"], upstream=f"socks5://127.0.0.1:{unused.getsockname()[1]}")
        code = associate_reply(hostport(front))
    assert code not in (0x00, 0x07), code  # the upstream's failure, not "command not supported"


def test_the_association_ends_when_the_upstream_ends_it(proxy, tmp_path, echo_udp):
    upstream = proxy(socks=["127.0.0.1:0"])
    front_log = tmp_path / "front.log"
    front = proxy(
        socks=["127.0.0.1:0"], upstream="socks5://{}:{}".format(*hostport(upstream)), access_log=str(front_log)
    )
    assoc = Association(hostport(front))
    try:
        echo_round_trip(assoc, echo_udp, b"before")
        upstream.stop(0)
        assoc.control.settimeout(10)
        assert assoc.control.recv(1) == b""  # our side closes the client's association too
    finally:
        assoc.close()
    (line,) = log_lines(front_log, "cmd=udp-associate")
    assert "outcome=upstream_closed" in line, line


@pytest.mark.parametrize("scheme", ["http", "https", "socks4"])
def test_only_http_or_socks4_upstreams_answer_0x07(proxy, scheme):
    front = proxy(socks=["127.0.0.1:0"], upstream=f"{scheme}://127.0.0.1:1")
    assert associate_reply(hostport(front)) == 0x07


def associate_reply(addr: tuple[str, int]) -> int:
    """The reply code to a UDP ASSOCIATE request."""
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert recv_exact(sock, 2) == b"\x05\x00"
        sock.sendall(bytes((5, UDP_ASSOCIATE, 0)) + socks5_address("0.0.0.0", 0))
        return int(read_socks5_reply(sock)[1])
