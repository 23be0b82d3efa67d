"""Reaching destinations: gproxy's own resolver (--resolver, cache, NXDOMAIN, DoT with --ca)
for every path that resolves names, and the source address of outbound sockets (--outgoing)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from gevent.server import StreamServer

from tests.core.test_resolve import FakeDns, _secure_server, test_ca  # noqa: F401 (test_ca is a fixture)
from tests.helpers import UdpEchoServer, make_proxy, name_dest, recv_exact, run_gproxy, socks5_connect
from tests.integration.test_udp import Association


class PeerEcho:
    """A TCP server that first says which address the connection came from, then echoes."""

    def __init__(self) -> None:
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = int(self.server.server_port)

    def _handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        sock.sendall(f"{peer[0]}\n".encode().ljust(16))
        while data := sock.recv(65536):
            sock.sendall(data)

    def close(self) -> None:
        self.server.stop()


@pytest.fixture
def peer_echo() -> Iterator[PeerEcho]:
    server = PeerEcho()
    yield server
    server.close()


@pytest.fixture
def dns() -> Iterator[FakeDns]:
    with FakeDns() as server:
        server.records[("svc.test", "A")] = (["127.0.0.1"], 300)
        yield server


def _connect_by_name(proxy: Any, name: str, port: int) -> tuple[socket.socket, bytes]:
    return socks5_connect(("127.0.0.1", proxy.address().port), name_dest(name, port))


def udp_echo_through(proxy: Any, host: str, port: int, payload: bytes) -> bytes:
    """One datagram to host:port over a new SOCKS5 UDP association; the payload that came back."""
    association = Association(("127.0.0.1", proxy.address().port))
    try:
        association.send(host, port, payload)
        return association.recv()[1]
    finally:
        association.control.close()
        association.udp.close()


def test_names_go_to_the_resolver_once_then_the_cache(dns, peer_echo):
    proxy = make_proxy(socks=["127.0.0.1:0"], resolver=[f"127.0.0.1:{dns.port}"])
    try:
        for _ in range(3):
            client, reply = _connect_by_name(proxy, "svc.test", peer_echo.port)
            assert reply[1] == 0
            assert recv_exact(client, 16).strip() == b"127.0.0.1"
            client.close()
        assert dns.queries[("svc.test", "A")] == 1  # the second and third came from the cache
        client, reply = _connect_by_name(proxy, "nothing.test", peer_echo.port)
        assert reply[1] == 0x04  # NXDOMAIN: host unreachable
        client.close()
    finally:
        proxy.stop(0)


def test_forward_targets_and_udp_datagrams_use_the_same_resolver(dns, peer_echo):
    with UdpEchoServer() as udp_echo:
        proxy = make_proxy(
            socks=["127.0.0.1:0"],
            forward=[f"127.0.0.1:0=svc.test:{peer_echo.port}"],
            resolver=[f"127.0.0.1:{dns.port}"],
        )
        try:
            forwarded = socket.create_connection(("127.0.0.1", proxy.address("forward").port), timeout=5)
            assert recv_exact(forwarded, 16).strip() == b"127.0.0.1"
            forwarded.close()
            assert udp_echo_through(proxy, "svc.test", udp_echo.port, b"over udp") == b"over udp"
            assert dns.queries[("svc.test", "A")] == 1  # TCP forward and UDP shared one answer
        finally:
            proxy.stop(0)


def test_dns_over_tls_resolver_trusting_a_private_ca(test_ca, peer_echo):  # noqa: F811
    with _secure_server(test_ca["right"], doh=False) as server:
        server.records[("svc.test", "A")] = (["127.0.0.1"], 300)
        del server.records[("svc.test", "AAAA")]
        url = f"tls://127.0.0.1:{server.port}"
        proxy = make_proxy(socks=["127.0.0.1:0"], resolver=[url], ca=[test_ca["ca_file"]])
        try:
            client, reply = _connect_by_name(proxy, "svc.test", peer_echo.port)
            assert reply[1] == 0
            client.close()
            assert server.transports["tls"] >= 1
        finally:
            proxy.stop(0)


def test_outgoing_address_is_the_source_of_tcp_and_udp(peer_echo):
    with UdpEchoServer() as udp_echo:
        proxy = make_proxy(socks=["127.0.0.1:0"], outgoing=["127.0.0.2"])
        try:
            client, reply = socks5_connect(("127.0.0.1", proxy.address().port), name_dest("127.0.0.1", peer_echo.port))
            assert reply[1] == 0
            assert recv_exact(client, 16).strip() == b"127.0.0.2"
            client.close()
            assert udp_echo_through(proxy, "127.0.0.1", udp_echo.port, b"hello") == b"hello"
            assert udp_echo.sources[-1][0] == "127.0.0.2"
        finally:
            proxy.stop(0)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--outgoing", "192.0.2.77"], "--outgoing 192.0.2.77: this host has no such address"),
        (["--outgoing", "127.0.0.2", "--outgoing", "127.0.0.3"], "--outgoing: two IPv4 addresses"),
        (["--outgoing", "not-an-ip"], "--outgoing: 'not-an-ip' is not an IP address"),
        (["--resolver", "ftp://1.2.3.4"], "--resolver 'ftp://1.2.3.4'"),
        (["--resolver", "udp://name.example"], "--resolver 'udp://name.example'"),
        (["--resolver", "tls://127.0.0.1", "--ca", "/nonexistent/ca.pem"], "--ca /nonexistent/ca.pem"),
    ],
)
def test_bad_outbound_flags_are_exit_2_with_one_line(args, flag):
    proc = run_gproxy("--socks", "127.0.0.1:0", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and flag in lines[0], proc.stderr


def test_bind_listens_on_the_outgoing_address():
    """BIND's listening socket is gproxy's outbound side too: the peer sees --outgoing."""
    from tests.helpers import read_socks5_bound, socks5_handshake

    proxy = make_proxy(socks=["127.0.0.1:0"], outgoing=["127.0.0.2"])
    try:
        client = socket.create_connection(("127.0.0.1", proxy.address().port), timeout=5)
        try:
            bound = socks5_handshake(client, 2, "127.0.0.1", 0)
            assert bound[0] == "127.0.0.2", bound
            remote = socket.create_connection(bound, timeout=5)
            assert read_socks5_bound(client) == remote.getsockname()
            remote.close()
        finally:
            client.close()
    finally:
        proxy.stop(0)
