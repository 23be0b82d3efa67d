"""--max-conns-per-ip counts IPv6 clients per network (--ipv6-prefix, /64 by default), PROXY-header
sources too; with --proxy-protocol the limits count from accept, not from the header (issue #13, 16, 17)."""

from __future__ import annotations

import contextlib
import socket

import pytest

from gproxy.codec.proxy_protocol import encode_v1
from gproxy.core.addr import Address
from tests.helpers import recv_all
from tests.integration.test_proxy_protocol import ANYONE, open_tunnel


def refused_at_once(address: Address) -> bool:
    """Whether gproxy closes a new connection that sends nothing (EOF or reset within 3 s)."""
    with socket.create_connection((address.host, address.port), timeout=3) as sock:
        try:
            with contextlib.suppress(ConnectionResetError):
                return recv_all(sock) == b""
        except TimeoutError:
            return False


@pytest.mark.parametrize(("prefix", "same_net_refused"), [(None, True), (56, True), (128, False)])
def test_ipv6_clients_count_per_network(proxy, echo_tcp, prefix, same_net_refused):
    settings = {} if prefix is None else {"ipv6_prefix": prefix}
    running = proxy(
        socks=["127.0.0.1:0"],
        proxy_protocol=True,
        allow=ANYONE,
        allow_dest=["127.0.0.0/8"],
        max_conns_per_ip=1,
        handshake_timeout=5,
        **settings,
    )
    address, lb = running.address("socks5"), Address("2001:db8::ff", 1080)
    first = open_tunnel(address, encode_v1(Address("2001:db8::1", 1), lb), echo_tcp)
    try:
        with socket.create_connection((address.host, address.port), timeout=3) as sock:
            sock.sendall(encode_v1(Address("2001:db8::2", 1), lb) + b"\x05\x01\x00")
            reply = b""
            with contextlib.suppress(ConnectionResetError):
                reply = sock.recv(2)  # EOF when refused, the method choice when served
            assert reply == (b"" if same_net_refused else b"\x05\x00")
        far = open_tunnel(address, encode_v1(Address("2001:db8:1::1", 1), lb), echo_tcp)  # another /48
        far.close()
    finally:
        first.close()


def test_waiting_for_headers_counts_against_max_conns(proxy):
    running = proxy(socks=["127.0.0.1:0"], proxy_protocol=True, allow=ANYONE, max_conns=2, handshake_timeout=5)
    address = running.address("socks5")
    waiting = [socket.create_connection((address.host, address.port), timeout=5) for _ in range(2)]
    try:
        assert refused_at_once(address)
    finally:
        for sock in waiting:
            sock.close()


def test_waiting_for_headers_counts_against_the_peer(proxy):
    running = proxy(socks=["127.0.0.1:0"], proxy_protocol=True, allow=ANYONE, max_conns_per_ip=1, handshake_timeout=5)
    address = running.address("socks5")
    with socket.create_connection((address.host, address.port), timeout=5):
        assert refused_at_once(address)


def test_bad_prefix_is_a_config_error():
    from gproxy.core.config import Config
    from gproxy.core.errors import ConfigError

    with pytest.raises(ConfigError, match="ipv6-prefix"):
        Config.build(socks=["127.0.0.1:0"], ipv6_prefix=129)
