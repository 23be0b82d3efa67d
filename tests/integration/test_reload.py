"""``Proxy.reload(config)`` (SIGHUP): users and rules change for new clients, open tunnels stay."""

from __future__ import annotations

import socket

from gproxy import Config
from tests.helpers import echo_through, ipv4_dest, recv_exact, socks5_connect


def closed_at_once(addr: tuple[str, int]) -> bool:
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02")
        try:
            return sock.recv(2) == b""
        except ConnectionResetError:
            return True


def test_reload_applies_client_rules_and_users_to_new_clients(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], user=["u:p"])
    addr = (running.address("socks5").host, running.address("socks5").port)
    dest = ipv4_dest(echo_tcp.host, echo_tcp.port)
    open_tunnel, reply = socks5_connect(addr, dest, auth=(b"u", b"p"))
    assert reply[1] == 0

    assert running.reload(Config.build(socks=["127.0.0.1:0"], user=["v:q"], deny=["127.0.0.0/8"]))
    assert closed_at_once(addr)  # the client rule now refuses us
    assert echo_through(open_tunnel, b"kept") == b"kept"

    assert running.reload(Config.build(socks=["127.0.0.1:0"], user=["v:q"]))
    sock, reply = socks5_connect(addr, dest, auth=(b"v", b"q"))
    assert reply[1] == 0
    sock.close()
    with socket.create_connection(addr, timeout=10) as old_user:
        old_user.sendall(b"\x05\x01\x02\x01\x01u\x01p")
        assert recv_exact(old_user, 4) == b"\x05\x02\x01\x01"
    assert echo_through(open_tunnel, b"still") == b"still"
    open_tunnel.close()


def test_reload_with_a_bad_users_file_keeps_the_old_settings(proxy, echo_tcp, tmp_path):
    users = tmp_path / "users"
    users.write_text("u:p\n")
    running = proxy(socks=["127.0.0.1:0"], users_file=str(users))
    addr = (running.address("socks5").host, running.address("socks5").port)
    users.write_text("broken line\n")
    assert not running.reload(Config.build(socks=["0"], users_file=str(users), max_conns=1))
    assert running.config.max_conns == 0
    first, reply = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port), auth=(b"u", b"p"))
    second, reply2 = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port), auth=(b"u", b"p"))
    assert reply[1] == reply2[1] == 0
    first.close()
    second.close()
