"""The --metrics listener lets in only the clients a proxy listener would (issue #13, item 12):
--allow/--deny, the connection limits and --proxy-protocol apply to it too."""

from __future__ import annotations

import contextlib
import socket

from gproxy.codec.proxy_protocol import encode_v1
from gproxy.core.addr import Address
from tests.helpers import recv_all

SCRAPE = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def scrape(address: Address, prefix: bytes = b"") -> bytes:
    """The raw answer to a scrape ("" when gproxy closes the connection unanswered)."""
    with socket.create_connection((address.host, address.port), timeout=5) as sock:
        sock.sendall(prefix + SCRAPE)
        with contextlib.suppress(ConnectionResetError):
            return recv_all(sock)
    return b""


def test_denied_client_cannot_scrape(proxy):
    running = proxy(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], user=["u:p"], deny=["127.0.0.0/8"])
    assert scrape(running.address("metrics")) == b""


def test_allowed_client_scrapes(proxy):
    running = proxy(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], user=["u:p"], allow=["127.0.0.0/8"])
    assert scrape(running.address("metrics")).startswith(b"HTTP/1.1 200")


def test_metrics_behind_a_balancer_needs_the_header_and_judges_its_address(proxy):
    running = proxy(
        socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], user=["u:p"], proxy_protocol=True, allow=["10.0.0.0/8"]
    )
    address = running.address("metrics")
    assert scrape(address) == b""  # no header
    lb = Address("10.0.0.1", address.port)
    assert scrape(address, encode_v1(Address("192.0.2.9", 1), lb)) == b""  # not allowed
    assert scrape(address, encode_v1(Address("10.0.0.9", 1), lb)).startswith(b"HTTP/1.1 200")


def test_metrics_connections_count_against_max_conns_per_ip(proxy):
    running = proxy(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], user=["u:p"], max_conns_per_ip=1)
    address = running.address("metrics")
    with socket.create_connection((address.host, address.port), timeout=5):
        assert scrape(address) == b""
