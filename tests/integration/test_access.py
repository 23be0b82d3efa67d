"""Destination rules end to end through the SOCKS5 front end: reply 0x02, rebinding, defaults."""

from __future__ import annotations

import socket

import pytest

from gproxy import Config, Proxy
from gproxy.core.addr import Address
from gproxy.core.config import ListenerSpec
from gproxy.core.errors import Denied
from gproxy.core.tunnel import open_upstream
from tests.helpers import ipv4_dest, name_dest, recv_exact, socks5_connect

AUTH = (b"u", b"p")


def fake_resolver(table):
    def resolve(host, port):
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "no such name")
        return [(socket.AF_INET, (table[host], port))]

    return resolve


@pytest.fixture
def running():
    started = []

    def start(resolver=None, **settings):
        settings.setdefault("socks", ["127.0.0.1:0"])
        config = Config.build(handshake_timeout=5, connect_timeout=5, **settings)
        proxy = Proxy(config, resolver=resolver) if resolver else Proxy(config)
        started.append(proxy.start())
        address = proxy.address("socks5")
        return address.host, address.port

    yield start
    for proxy in started:
        proxy.stop(0)


def test_deny_dest_cidr_is_0x02_and_others_pass(running, echo_tcp):
    addr = running(deny_dest=[f"127.0.0.1:{echo_tcp.port}"])
    sock, reply = socks5_connect(addr, ipv4_dest("127.0.0.1", echo_tcp.port))
    assert reply[1] == 0x02
    sock.close()
    sock, reply = socks5_connect(addr, ipv4_dest("127.0.0.2", echo_tcp.port))
    assert reply[1] != 0x02  # nothing listens on .2 (refused), but the rule did not stop it
    sock.close()


def test_dns_rebinding_name_into_denied_network_is_0x02(running, echo_tcp):
    resolver = fake_resolver({"rebind.test": "127.0.0.1", "fine.test": "127.0.0.1"})
    addr = running(resolver=resolver, allow_dest=["*.test"], deny_dest=["127.0.0.0/8"])
    sock, reply = socks5_connect(addr, name_dest("rebind.test", echo_tcp.port))
    assert reply[1] == 0x02
    sock.close()


def test_allowed_name_connects_and_others_are_0x02(running, echo_tcp):
    resolver = fake_resolver({"ok.test": "127.0.0.1", "no.test": "127.0.0.1"})
    addr = running(resolver=resolver, allow_dest=[f"ok.test:{echo_tcp.port}"])
    sock, reply = socks5_connect(addr, name_dest("ok.test", echo_tcp.port))
    assert reply[1] == 0x00
    sock.sendall(b"hi")
    assert recv_exact(sock, 2) == b"hi"
    sock.close()
    for dest in (name_dest("no.test", echo_tcp.port), ipv4_dest("127.0.0.1", echo_tcp.port)):
        sock, reply = socks5_connect(addr, dest)
        assert reply[1] == 0x02
        sock.close()


def test_per_user_rules_apply_after_auth(echo_tcp):
    users = {"alice": {"password": "a", "deny-dest": [f"127.0.0.1:{echo_tcp.port}"]}, "bob": {"password": "b"}}
    config = Config.from_settings({"socks": ["127.0.0.1:0"], "handshake-timeout": 5.0}, {"users": users})
    with Proxy(config) as proxy:
        addr = (proxy.address("socks5").host, proxy.address("socks5").port)
        sock, reply = socks5_connect(addr, ipv4_dest("127.0.0.1", echo_tcp.port), auth=(b"alice", b"a"))
        assert reply[1] == 0x02
        sock.close()
        sock, reply = socks5_connect(addr, ipv4_dest("127.0.0.1", echo_tcp.port), auth=(b"bob", b"b"))
        assert reply[1] == 0x00
        sock.close()


@pytest.mark.parametrize("dest", [ipv4_dest("0.0.0.0", 80), ipv4_dest("127.0.0.1", 0)])
def test_unspecified_address_and_port_zero_are_0x02(running, dest):
    addr = running()
    sock, reply = socks5_connect(addr, dest)
    assert reply[1] == 0x02
    sock.close()


def exposed_context(**settings):
    """The context of a listener on a non-loopback address (not bound: tests stay on loopback)."""
    config = Config.build(socks=["127.0.0.1:0"], user=["u:p"], connect_timeout=5, **settings)
    return Proxy(config).context(ListenerSpec("socks5", "192.0.2.10", 1080), own=[])


def test_exposed_listener_denies_loopback_by_default(echo_tcp):
    with pytest.raises(Denied):
        open_upstream(exposed_context(), Address("127.0.0.1", echo_tcp.port))
    with pytest.raises(Denied):
        open_upstream(exposed_context(), Address("169.254.169.254", 80))


def test_exposed_listener_denies_a_name_resolving_to_loopback(echo_tcp):
    with pytest.raises(Denied):
        open_upstream(exposed_context(), Address("localhost", echo_tcp.port))


def test_exposed_listener_explicit_allow_opens_loopback(echo_tcp):
    ctx = exposed_context(allow_dest=[f"127.0.0.1:{echo_tcp.port}"])
    sock = open_upstream(ctx, Address("127.0.0.1", echo_tcp.port))
    sock.close()
    with pytest.raises(Denied):  # only that port
        open_upstream(ctx, Address("127.0.0.1", echo_tcp.port + 1 if echo_tcp.port < 65535 else 1))


def test_connect_to_our_own_listener_is_0x02(running):
    addr = running()
    sock, reply = socks5_connect(addr, ipv4_dest(*addr))
    assert reply[1] == 0x02
    sock.close()


def test_udp_datagrams_follow_name_rules(proxy, echo_udp_localhost):
    """A name allowed by a name rule passes with the address it resolves to; the bare address does not."""
    from tests.integration.test_udp import Association

    port = echo_udp_localhost.port
    running = proxy(socks=["127.0.0.1:0"], allow_dest=[f"localhost:{port}"])
    address = running.address("socks5")
    client = Association((address.host, address.port))
    try:
        client.send("127.0.0.1", port, b"by address")  # not allowed: dropped
        client.send("localhost", port, b"by name")
        assert client.recv()[1] == b"by name"
        assert echo_udp_localhost.received == [b"by name"]
    finally:
        client.close()


def test_per_user_rules_from_the_config_file_via_the_cli(tmp_path, echo_tcp):
    from tests.helpers import GproxyProcess

    config = tmp_path / "gproxy.toml"
    config.write_text(
        'socks = ["127.0.0.1:0"]\n'
        f'[users.alice]\npassword = "pw-a"\ndeny-dest = ["127.0.0.1:{echo_tcp.port}"]\n'
        '[users.bob]\npassword = "pw-b"\n'
    )
    with GproxyProcess("--config", str(config)) as gp:
        addr = ("127.0.0.1", gp.port())
        for user, code in ((b"alice", 0x02), (b"bob", 0x00)):
            sock, reply = socks5_connect(addr, ipv4_dest("127.0.0.1", echo_tcp.port), auth=(user, b"pw-" + user[:1]))
            assert reply[1] == code, user
            sock.close()
