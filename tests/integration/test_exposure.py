"""A listener behind --proxy-protocol is exposed whatever address it binds (issue #13, item 8):
HAProxy on this host relays remote clients to gproxy on 127.0.0.1."""

from __future__ import annotations

import socket

import pytest

from gproxy.codec.proxy_protocol import encode_v1
from gproxy.core.addr import Address
from gproxy.core.config import Config
from gproxy.core.errors import ConfigError
from tests.helpers import recv_exact
from tests.integration.test_proxy_protocol import GREETING, connect_request


@pytest.mark.parametrize("kind", ["socks", "http", "mixed"])
def test_loopback_listener_behind_a_balancer_is_no_open_proxy(kind: str) -> None:
    Config.build(**{kind: ["127.0.0.1:0"]})  # loopback alone: local use, fine
    with pytest.raises(ConfigError, match="open proxy"):
        Config.build(**{kind: ["127.0.0.1:0"]}, proxy_protocol=True)


def test_loopback_listener_behind_a_balancer_denies_local_destinations(proxy, echo_tcp) -> None:
    running = proxy(socks=["127.0.0.1:0"], proxy_protocol=True, allow=["10.0.0.0/8"])
    address = running.address("socks5")
    header = encode_v1(Address("10.0.0.7", 1), Address("10.0.0.1", address.port))
    with socket.create_connection((address.host, address.port), timeout=5) as sock:
        sock.sendall(header + GREETING + connect_request(echo_tcp))
        assert recv_exact(sock, 2) == b"\x05\x00"
        assert recv_exact(sock, 10)[:2] == b"\x05\x02"  # not allowed by ruleset: loopback is denied
