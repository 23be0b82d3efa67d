"""SOCKS5 UDP ASSOCIATE end to end: raw RFC 1928 clients and PySocks."""

from __future__ import annotations

import socket
import time

import gevent
import pytest
import socks

from tests.helpers import (
    UdpEchoServer,
    parse_socks5_udp_datagram,
    socks5_handshake,
    socks5_udp_datagram,
)

UDP_ASSOCIATE = 3


class Association:
    """A raw client: control connection plus a UDP socket talking to the relay."""

    def __init__(self, proxy_addr: tuple[str, int], client_host: str = "127.0.0.1") -> None:
        self.control = socket.create_connection(proxy_addr, timeout=5)
        self.relay = socks5_handshake(self.control, UDP_ASSOCIATE, "0.0.0.0", 0)
        self.udp = socket.socket(socket.AF_INET6 if ":" in client_host else socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind((client_host, 0))
        self.udp.settimeout(5)

    def send(self, host: str, port: int, payload: bytes, frag: int = 0) -> None:
        self.udp.sendto(socks5_udp_datagram(host, port, payload, frag), self.relay)

    def recv(self, timeout: float = 5) -> tuple[tuple[str, int], bytes]:
        self.udp.settimeout(timeout)
        datagram, source = self.udp.recvfrom(70000)
        assert source[:2] == self.relay
        return parse_socks5_udp_datagram(datagram)

    def close(self) -> None:
        self.control.close()
        self.udp.close()


@pytest.fixture
def socks_proxy(proxy):
    def start(**settings):
        running = proxy(socks=["127.0.0.1:0"], **settings)
        address = running.address("socks5")
        return running, (address.host, address.port)

    return start


@pytest.fixture
def assoc(socks_proxy):
    _, addr = socks_proxy()
    client = Association(addr)
    yield client
    client.close()


def test_reply_names_the_relay_on_the_control_connections_ip(assoc):
    host, port = assoc.relay
    assert host == "127.0.0.1"
    assert port != 0


@pytest.mark.parametrize("fixture", ["echo_udp", "echo_udp6"])
def test_raw_client_echo_by_ip(assoc, request, fixture):
    echo: UdpEchoServer = request.getfixturevalue(fixture)
    host, port = echo.address
    assoc.send(host, port, b"hello " + fixture.encode())
    source, payload = assoc.recv()
    assert payload == b"hello " + fixture.encode()
    assert source == (host, port)  # the real source of the reply


def test_raw_client_echo_by_name(assoc, echo_udp_localhost):
    assoc.send("localhost", echo_udp_localhost.port, b"by name")
    source, payload = assoc.recv()
    assert payload == b"by name"
    assert source[0] in ("127.0.0.1", "::1")  # the resolved address that answered
    assert source[1] == echo_udp_localhost.port


@pytest.mark.parametrize(
    ("fixture", "host"), [("echo_udp", None), ("echo_udp6", None), ("echo_udp_localhost", "localhost")]
)
def test_pysocks_udp_echo(socks_proxy, request, fixture, host):
    echo: UdpEchoServer = request.getfixturevalue(fixture)
    _, (proxy_host, proxy_port) = socks_proxy()
    client = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    client.set_proxy(socks.SOCKS5, proxy_host, proxy_port, rdns=True)
    client.settimeout(5)
    try:
        dest = (host or echo.address[0], echo.port)
        for i in range(3):
            client.sendto(b"pysocks %d" % i, dest)
            data, source = client.recvfrom(65535)
            assert data == b"pysocks %d" % i
            assert source[1] == echo.port
    finally:
        client.close()


def test_fragments_and_garbage_are_dropped_one_at_a_time(assoc, echo_udp):
    host, port = echo_udp.address
    assoc.send(host, port, b"fragment", frag=1)
    assoc.udp.sendto(b"\0\0\0\x09garbage", assoc.relay)  # bad ATYP
    assoc.udp.sendto(b"\0\0", assoc.relay)  # shorter than a header
    assoc.send(host, port, b"whole")
    _, payload = assoc.recv()
    assert payload == b"whole"
    assert echo_udp.received == [b"whole"]


@pytest.mark.parametrize("intruder_host", ["127.0.0.1", "127.0.0.2"])
def test_other_sources_are_not_relayed(assoc, echo_udp, intruder_host):
    host, port = echo_udp.address
    assoc.send(host, port, b"first")  # fixes the client's port
    assert assoc.recv()[1] == b"first"
    intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    intruder.bind((intruder_host, 0))
    try:
        intruder.sendto(socks5_udp_datagram(host, port, b"intruder"), assoc.relay)
        assoc.send(host, port, b"second")  # processed after the intruder's datagram
        assert assoc.recv()[1] == b"second"
        assert echo_udp.received == [b"first", b"second"]
    finally:
        intruder.close()


def test_replies_only_from_destinations_the_client_used(assoc, echo_udp):
    host, port = echo_udp.address
    assoc.send(host, port, b"hi")
    assert assoc.recv()[1] == b"hi"
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        stranger.bind(("127.0.0.1", 0))
        # The stranger learns the outbound port from the echo server's view and sends to it.
        assoc.send(*stranger.getsockname(), b"probe")
        data, outbound = stranger.recvfrom(100)  # the association sent to the stranger: it may answer
        assert data == b"probe"
        stranger.sendto(b"answer", outbound)
        assert assoc.recv()[1] == b"answer"
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        other.bind(("127.0.0.1", 0))
        other.sendto(b"unsolicited", outbound)
        other.close()
        assoc.send(host, port, b"after")
        assert assoc.recv()[1] == b"after"
    finally:
        stranger.close()


def test_destination_rules_apply_to_every_datagram(proxy, echo_udp):
    running = proxy(socks=["127.0.0.1:0"], udp_forward=[f"127.0.0.1:0={echo_udp.address[0]}:{echo_udp.port}"])
    own = running.address("udp-forward")
    socks_addr = running.address("socks5")
    client = Association((socks_addr.host, socks_addr.port))
    try:
        client.send(own.host, own.port, b"loop")  # gproxy's own address: denied
        client.send(echo_udp.address[0], 0, b"port zero")  # denied
        client.send(*echo_udp.address, b"allowed")
        assert client.recv()[1] == b"allowed"
        assert echo_udp.received == [b"allowed"]
    finally:
        client.close()


def test_relay_stops_when_the_control_connection_closes(assoc, echo_udp):
    assoc.send(*echo_udp.address, b"before")
    assert assoc.recv()[1] == b"before"
    assoc.control.close()
    assoc.udp.connect(assoc.relay)
    assoc.udp.settimeout(0.2)
    deadline = time.monotonic() + 10
    # A datagram racing the close may still pass; then the port must close (ICMP port unreachable).
    with pytest.raises(ConnectionRefusedError):
        while time.monotonic() < deadline:
            assoc.udp.send(socks5_udp_datagram(*echo_udp.address, b"after"))
            try:
                assoc.udp.recv(100)
            except TimeoutError:
                continue


def test_idle_association_ends_and_closes_the_control_connection(socks_proxy, echo_udp):
    _, addr = socks_proxy(idle_timeout=0.6)
    client = Association(addr)
    try:
        client.send(*echo_udp.address, b"x")
        assert client.recv()[1] == b"x"
        client.control.settimeout(10)
        assert client.control.recv(10) == b""
    finally:
        client.close()


def test_60000_byte_datagram_round_trip(assoc, echo_udp):
    payload = bytes(range(256)) * 234 + b"x" * 96
    assert len(payload) == 60000
    assoc.send(*echo_udp.address, payload)
    assert assoc.recv()[1] == payload


def test_access_log_counts_payload_bytes(socks_proxy, echo_udp, tmp_path):
    log = tmp_path / "access.log"
    _, addr = socks_proxy(access_log=str(log))
    client = Association(addr)
    for payload in (b"abc", b"defgh"):
        client.send(*echo_udp.address, payload)
        assert client.recv()[1] == payload
    client.close()
    with gevent.Timeout(10):
        while not log.exists() or "udp-associate" not in log.read_text():
            gevent.sleep(0.05)
    line = log.read_text()
    assert "cmd=udp-associate" in line
    assert "up=8 down=8" in line
    assert "outcome=ok" in line


def test_advertised_address(socks_proxy):
    _, addr = socks_proxy(udp_advertise="192.0.2.7")
    client = Association(addr)
    try:
        assert client.relay[0] == "192.0.2.7"
    finally:
        client.close()


def test_association_over_ipv6(proxy, echo_udp):
    running = proxy(socks=["[::1]:0"])
    address = running.address("socks5")
    client = Association((address.host, address.port), client_host="::1")
    try:
        assert client.relay[0] == "::1"  # the relay is on the control connection's address
        client.send(*echo_udp.address, b"v6 client, v4 destination")
        assert client.recv() == (echo_udp.address, b"v6 client, v4 destination")
    finally:
        client.close()


def test_declared_client_port_is_enforced(socks_proxy, echo_udp):
    _, addr = socks_proxy()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind(("127.0.0.1", 0))
    control = socket.create_connection(addr, timeout=5)
    try:
        relay = socks5_handshake(control, UDP_ASSOCIATE, *udp.getsockname())
        other.sendto(socks5_udp_datagram(*echo_udp.address, b"wrong port"), relay)  # same IP, not declared
        udp.sendto(socks5_udp_datagram(*echo_udp.address, b"declared"), relay)
        udp.settimeout(5)
        assert parse_socks5_udp_datagram(udp.recv(100))[1] == b"declared"
        assert echo_udp.received == [b"declared"]
    finally:
        for sock in (udp, other, control):
            sock.close()
