"""Happy Eyeballs (RFC 8305): interleaving, racing with a black-holed IPv6 address beside a
working IPv4 one on the same port, failures moving on at once, the deadline, no leaks."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator

import pytest

from gproxy import Config
from gproxy.codec.replies import ReplyCode
from gproxy.core import happy_eyeballs
from gproxy.core.dial import DirectDialer, connect_any
from gproxy.core.errors import DialError
from gproxy.core.happy_eyeballs import interleave
from gproxy.server.proxy import Proxy
from tests.helpers import name_dest, recv_exact, socks5_connect

V6 = socket.AF_INET6
V4 = socket.AF_INET


def test_interleave_alternates_families_ipv6_first():
    addrs = [(V4, ("192.0.2.1", 1)), (V4, ("192.0.2.2", 1)), (V6, ("2001:db8::1", 1, 0, 0)), (V4, ("192.0.2.3", 1))]
    assert [a[1][0] for a in interleave(addrs)] == ["2001:db8::1", "192.0.2.1", "192.0.2.2", "192.0.2.3"]
    more6 = [(V6, ("2001:db8::1", 1, 0, 0)), (V6, ("2001:db8::2", 1, 0, 0)), (V4, ("192.0.2.1", 1))]
    assert [a[1][0] for a in interleave(more6)] == ["2001:db8::1", "192.0.2.1", "2001:db8::2"]
    only4 = [(V4, ("192.0.2.1", 1)), (V4, ("192.0.2.2", 1))]
    assert interleave(only4) == only4


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def black_hole_v6_working_v4() -> Iterator[tuple[int, socket.socket]]:
    """[::1]:P drops SYNs (its accept queue is full), 127.0.0.1:P accepts: a host whose
    IPv6 address is unreachable but still answers AAAA. The port is one that is free on
    both addresses (another process may hold it on one: then the next one is tried)."""
    with contextlib.ExitStack() as sockets:
        for _ in range(20):
            good = sockets.enter_context(socket.socket(V4, socket.SOCK_STREAM))
            good.bind(("127.0.0.1", 0))
            port = good.getsockname()[1]
            hole = sockets.enter_context(socket.socket(V6, socket.SOCK_STREAM))
            hole.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                hole.bind(("::1", port))
                break
            except OSError:  # taken on ::1: try another port
                continue
        else:
            pytest.fail("no port free on both 127.0.0.1 and ::1 in 20 tries")
        hole.listen(0)
        fillers = []
        for _ in range(2):  # a backlog of 0 holds one; the next SYNs are dropped
            filler = sockets.enter_context(socket.socket(V6, socket.SOCK_STREAM))
            filler.setblocking(False)
            filler.connect_ex(("::1", port))
            fillers.append(filler)
        _, connected, _ = select.select([], fillers[:1], [], 5)  # the one the backlog holds
        assert connected, "the first filler never connected"
        good.listen(16)
        yield port, good


def _both(port: int) -> list[tuple[int, tuple[object, ...]]]:
    return [(V6, ("::1", port, 0, 0)), (V4, ("127.0.0.1", port))]


def test_a_black_holed_ipv6_address_falls_back_to_ipv4_in_about_the_attempt_delay(black_hole_v6_working_v4):
    port, good = black_hole_v6_working_v4
    before = _open_fds()
    started = time.monotonic()
    sock = connect_any(_both(port), timeout=10)
    took = time.monotonic() - started
    try:
        assert sock.family == V4 and sock.getpeername() == ("127.0.0.1", port)
        assert 0.2 <= took < 3, took  # the stagger (0.25 s), never --connect-timeout (10 s)
    finally:
        sock.close()
    assert _open_fds() == before  # the losing attempt was closed


def test_a_refused_attempt_moves_on_at_once(closed_port):
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        addrs = [(V6, ("::1", closed_port, 0, 0)), (V4, ("127.0.0.1", port))]
        sock = connect_any(addrs, timeout=10)
        assert sock.getpeername() == ("127.0.0.1", port)
        sock.close()
    finally:
        server.close()


def test_every_attempt_refused_gives_the_refused_reply(closed_port):
    with pytest.raises(DialError) as info:
        connect_any([(V6, ("::1", closed_port, 0, 0)), (V4, ("127.0.0.1", closed_port))], timeout=5, what="x")
    assert info.value.reply == ReplyCode.CONNECTION_REFUSED


def test_the_whole_race_is_bounded_by_the_timeout(black_hole_v6_working_v4):
    port, _ = black_hole_v6_working_v4
    before = _open_fds()
    started = time.monotonic()
    with pytest.raises(DialError) as info:
        connect_any([(V6, ("::1", port, 0, 0))] * 3, timeout=0.8, what="x")
    assert info.value.reply == ReplyCode.TTL_EXPIRED
    assert time.monotonic() - started < 5
    assert _open_fds() == before


def test_one_address_is_connected_without_a_race(black_hole_v6_working_v4, closed_port, monkeypatch):
    """A literal (one address) takes the plain path: connects, refuses, times out, runs prepare, leaks nothing."""
    port, _ = black_hole_v6_working_v4
    monkeypatch.setattr(happy_eyeballs, "_Race", None)  # any use of the race machinery would fail
    before = _open_fds()
    prepared = []
    with connect_any([(V4, ("127.0.0.1", port))], timeout=10, prepare=lambda raw: prepared.append(raw.family)) as sock:
        assert sock.getpeername() == ("127.0.0.1", port) and prepared == [V4]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    with pytest.raises(DialError) as refused:
        connect_any([(V4, ("127.0.0.1", closed_port))], timeout=5, what="x")
    assert refused.value.reply == ReplyCode.CONNECTION_REFUSED
    started = time.monotonic()
    with pytest.raises(DialError) as timed_out:
        connect_any([(V6, ("::1", port, 0, 0))], timeout=0.5, what="x")
    assert timed_out.value.reply == ReplyCode.TTL_EXPIRED
    assert 0.4 <= time.monotonic() - started < 5
    assert _open_fds() == before


def test_a_connect_done_within_the_call_needs_no_wait_on_the_loop(closed_port, monkeypatch):
    """On loopback the kernel finishes connect() (or refuses it) inside the call: asking again
    says so, and neither the single path nor the race starts a write watcher."""

    def no_wait(sock: object) -> None:
        raise AssertionError("waited for a connect that was already done")

    monkeypatch.setattr(happy_eyeballs, "write_watcher", no_wait)
    server = socket.create_server(("127.0.0.1", 0))
    try:
        port = server.getsockname()[1]
        for addrs in ([(V4, ("127.0.0.1", port))], [(V4, ("127.0.0.1", port))] * 2):
            with connect_any(addrs, timeout=10) as sock:
                assert sock.getpeername() == ("127.0.0.1", port)
        with pytest.raises(DialError) as refused:
            connect_any([(V4, ("127.0.0.1", closed_port))] * 2, timeout=5, what="x")
        assert refused.value.reply == ReplyCode.CONNECTION_REFUSED
    finally:
        server.close()


def test_prepare_runs_on_every_attempt(black_hole_v6_working_v4):
    port, _ = black_hole_v6_working_v4
    prepared = []
    sock = happy_eyeballs.race(_both(port), 10, prepare=lambda raw: prepared.append(raw.family))
    sock.close()
    assert prepared == [V6, V4]


def test_socks5_connect_by_name_through_a_black_holed_ipv6(black_hole_v6_working_v4):
    """End to end: a name whose AAAA is black-holed answers over IPv4 well before --connect-timeout."""
    port, good = black_hole_v6_working_v4

    def resolver(host: str, p: int) -> list[tuple[int, tuple[object, ...]]]:
        assert host == "dual.example"
        return _both(p)

    proxy = Proxy(Config.build(socks=["127.0.0.1:0"], connect_timeout=10), resolver=resolver).start()
    try:
        started = time.monotonic()
        client, reply = socks5_connect(("127.0.0.1", proxy.address().port), name_dest("dual.example", port))
        took = time.monotonic() - started
        assert reply[1] == 0 and took < 3, (reply, took)
        accepted, _ = good.accept()
        client.sendall(b"ping")
        assert recv_exact(accepted, 4) == b"ping"
        accepted.close()
        client.close()
    finally:
        proxy.stop(0)


def test_direct_dialer_uses_the_race(black_hole_v6_working_v4):
    port, _ = black_hole_v6_working_v4
    dialer = DirectDialer(lambda host, p: _both(p))
    from gproxy.core.addr import Address

    sock = dialer.dial(Address("dual.example", port), 10)
    assert sock.family == V4
    sock.close()
