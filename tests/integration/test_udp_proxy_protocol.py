"""UDP ASSOCIATE behind --proxy-protocol: the association belongs to the client the header
names, not to the load balancer whose TCP connection carried the request."""

from __future__ import annotations

import socket
import struct

import pytest

from gproxy.codec.proxy_protocol import encode_v1, encode_v2
from gproxy.core.addr import Address
from tests.helpers import parse_socks5_udp_datagram, read_socks5_bound, recv_exact, socks5_udp_datagram

UDP_ASSOCIATE = 3

#: behind a balancer the listener is exposed: clients are allowed by rule, loopback destinations opened
BEHIND_BALANCER = ["0.0.0.0/0", "::/0"]


def associate(proxy_address: Address, header: bytes) -> tuple[socket.socket, tuple[str, int]]:
    """The balancer's connection (from 127.0.0.1): the PROXY header, then a UDP ASSOCIATE."""
    control = socket.create_connection((proxy_address.host, proxy_address.port), timeout=5)
    control.sendall(header + b"\x05\x01\x00")
    assert recv_exact(control, 2) == b"\x05\x00"
    control.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00")
    return control, read_socks5_bound(control)


def udp_from(host: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize("encode", [encode_v1, encode_v2])
@pytest.mark.parametrize("mapped", ["", "::ffff:"], ids=["ipv4", "ipv4-mapped"])  # HAProxy on a v4v6 socket
def test_datagrams_from_the_header_client_are_relayed_and_the_balancers_are_not(proxy, echo_udp, encode, mapped):
    running = proxy(
        socks=["127.0.0.1:0"], proxy_protocol=True, allow=BEHIND_BALANCER, allow_dest=["127.0.0.0/8", "::1"]
    )
    header = encode(Address(mapped + "127.0.0.2", 40000), Address(mapped + "127.0.0.1", 1080))
    control, relay = associate(running.address("socks5"), header)
    balancer, client = udp_from("127.0.0.1"), udp_from("127.0.0.2")
    try:
        balancer.sendto(socks5_udp_datagram("127.0.0.1", echo_udp.port, b"from the balancer"), relay)
        client.sendto(socks5_udp_datagram("127.0.0.1", echo_udp.port, b"from the client"), relay)
        source, payload = parse_socks5_udp_datagram(client.recvfrom(1000)[0])
        assert (source, payload) == (("127.0.0.1", echo_udp.port), b"from the client")
        assert echo_udp.received == [b"from the client"]  # one loop, in order: the balancer's was dropped
    finally:
        for sock in (control, balancer, client):
            sock.close()


def test_ipv6_client_behind_an_ipv4_balancer(proxy, echo_udp6):
    running = proxy(
        socks=["127.0.0.1:0"], proxy_protocol=True, allow=BEHIND_BALANCER, allow_dest=["127.0.0.0/8", "::1"]
    )
    header = encode_v2(Address("::1", 40000), Address("::1", 1080))
    control, relay = associate(running.address("socks5"), header)
    client = udp_from("::1")
    try:
        client.sendto(socks5_udp_datagram("::1", echo_udp6.port, b"six"), ("::1", relay[1]))
        source, payload = parse_socks5_udp_datagram(client.recvfrom(1000)[0])
        assert (source, payload) == (("::1", echo_udp6.port), b"six")
    finally:
        control.close()
        client.close()


def test_the_declared_port_of_the_header_client_is_enforced(proxy, echo_udp):
    running = proxy(
        socks=["127.0.0.1:0"], proxy_protocol=True, allow=BEHIND_BALANCER, allow_dest=["127.0.0.0/8", "::1"]
    )
    client, other = udp_from("127.0.0.2"), udp_from("127.0.0.2")
    port = client.getsockname()[1]
    address = running.address("socks5")
    control = socket.create_connection((address.host, address.port), timeout=5)
    try:
        control.sendall(encode_v1(Address("127.0.0.2", 40000), Address("127.0.0.1", 1080)) + b"\x05\x01\x00")
        assert recv_exact(control, 2) == b"\x05\x00"
        control.sendall(b"\x05\x03\x00\x01" + socket.inet_aton("127.0.0.2") + struct.pack("!H", port))
        relay = read_socks5_bound(control)
        other.sendto(socks5_udp_datagram("127.0.0.1", echo_udp.port, b"wrong port"), relay)
        client.sendto(socks5_udp_datagram("127.0.0.1", echo_udp.port, b"right port"), relay)
        assert parse_socks5_udp_datagram(client.recvfrom(1000)[0])[1] == b"right port"
        assert echo_udp.received == [b"right port"]
    finally:
        for sock in (control, client, other):
            sock.close()
