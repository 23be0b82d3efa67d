"""The per-connection shortcuts keep the behaviour of the code they replace."""

from __future__ import annotations

import ipaddress
import socket
import time

import gevent
import pytest
from gevent import socket as gsocket

from gproxy.codec import socks5
from gproxy.core.addr import Address
from gproxy.core.config import ListenerSpec
from gproxy.core.deadline import Deadline
from gproxy.core.errors import Denied, HandshakeTimeout
from gproxy.core.relay import Engine, engine_for
from gproxy.core.rules import DestinationPolicy, RuleSet, parse_dest_rule
from gproxy.core.stream import Conn
from gproxy.ops.runtime import fast_greenlets
from gproxy.server.proxy import NODELAY_INHERITED, bind_listener


@pytest.mark.parametrize("packed", [b"\0\0\0\0", b"\x7f\0\0\x01", b"\x0a\x00\xff\x09", b"\xff\xff\xff\xff"])
def test_ipv4_request_text_is_what_ipaddress_prints(packed):
    request = b"\x05\x01\x00\x01" + packed + b"\x01\xbb"
    parsed = socks5.parse_request(bytearray(request))
    assert parsed is not None
    assert parsed[0].address == Address(str(ipaddress.IPv4Address(packed)), 443)
    assert parsed[0].address.ip == ipaddress.IPv4Address(packed)


def test_deadline_raises_handshake_timeout_and_is_silent_once_left():
    started = time.monotonic()
    with pytest.raises(HandshakeTimeout), Deadline(0.05):
        gevent.sleep(5)
    assert time.monotonic() - started < 4
    with Deadline(0.05):
        pass
    gevent.sleep(0.15)  # the closed timer must not fire into this greenlet
    with Deadline(None):
        gevent.sleep(0.01)


def test_check_ip_remembers_only_what_passed():
    policy = DestinationPolicy(rules=RuleSet(deny=(parse_dest_rule("10.0.0.0/8", "--deny-dest"),)))
    allowed = ipaddress.ip_address("192.0.2.1")
    denied = ipaddress.ip_address("10.1.2.3")
    for _ in range(3):
        policy.check_ip(allowed, 80)
        with pytest.raises(Denied):
            policy.check_ip(denied, 80)
    assert (allowed, 80) in policy._passed
    assert (denied, 80) not in policy._passed


def test_check_ip_memory_is_bounded(monkeypatch):
    monkeypatch.setattr("gproxy.core.rules._PASSED_MAX", 8)
    policy = DestinationPolicy()
    for n in range(50):
        policy.check_ip(ipaddress.ip_address(f"192.0.2.{n + 1}"), 80)
    assert len(policy._passed) <= 8


def test_raw_socket_only_for_plain_gevent_sockets():
    class Wrapped(gsocket.socket):
        pass

    with gsocket.socket() as plain, Wrapped() as wrapped:
        assert engine_for(plain, plain) is Engine.EVENTS
        assert engine_for(wrapped, plain) is Engine.GREENLETS  # e.g. an SSLSocket: the greenlet engine


@pytest.mark.skipif(not NODELAY_INHERITED, reason="Linux hands the listener's TCP_NODELAY to accepted sockets")
def test_accepted_sockets_have_nodelay():
    listener = bind_listener(ListenerSpec("socks5", "127.0.0.1", 0))
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()


def test_conn_sendall_on_plain_and_wrapped_sockets():
    class Wrapped(gsocket.socket):
        pass

    a, b = gsocket.socketpair()
    with a, b:
        Conn(a).sendall(b"plain")
        assert b.recv(16) == b"plain"
        wrapped = Wrapped(fileno=a.detach())
        with wrapped:
            Conn(wrapped).sendall(b"wrapped")
            assert b.recv(16) == b"wrapped"


def test_fast_greenlets_respects_the_environment(monkeypatch):
    monkeypatch.setattr(gevent.config, "track_greenlet_tree", True)
    monkeypatch.setenv("GEVENT_TRACK_GREENLET_TREE", "1")
    fast_greenlets()
    assert gevent.config.track_greenlet_tree
    monkeypatch.delenv("GEVENT_TRACK_GREENLET_TREE")
    fast_greenlets()
    assert not gevent.config.track_greenlet_tree
