"""The relay engines over socketpairs: both directions, half-close, idle timeout, errors,
large transfers on the splice path and the plain path, the greenlet (TLS) engine,
start_relay() on its own, abort and the sockets' ownership."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import time

import gevent
import pytest
from gevent import socket as gsocket

from gproxy.core import relay as relay_mod
from gproxy.core.relay import Engine, engine_for, relay
from tests.helpers import Wrapped, recv_all, recv_exact, wait_for


@pytest.fixture
def pairs():
    """(client, proxy_client_side, proxy_upstream_side, upstream); all closed afterwards."""
    client, proxy_a = socket.socketpair()
    proxy_b, upstream = socket.socketpair()
    yield client, proxy_a, proxy_b, upstream
    for sock in (client, proxy_a, proxy_b, upstream):
        sock.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def start(proxy_a, proxy_b, **kw):
    kw.setdefault("idle_timeout", 30)
    return gevent.spawn(relay, proxy_a, proxy_b, **kw)


def test_both_directions_and_counts(pairs):
    client, a, b, upstream = pairs
    g = start(a, b)
    client.sendall(b"ping")
    assert recv_exact(upstream, 4) == b"ping"
    upstream.sendall(b"pong!")
    assert recv_exact(client, 5) == b"pong!"
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    stats = g.get(timeout=10)
    assert (stats.up, stats.down, stats.outcome) == (4, 5, "ok")


@pytest.mark.parametrize("first_to_close", ["client", "upstream"])
def test_a_half_close_keeps_the_other_direction(pairs, first_to_close):
    """One side sends and shuts down its write half: the EOF reaches the other side, and
    the other direction still flows until it ends too."""
    client, a, b, upstream = pairs
    g = start(a, b)
    closer, other = (client, upstream) if first_to_close == "client" else (upstream, client)
    closer.sendall(b"request")
    closer.shutdown(socket.SHUT_WR)
    assert recv_all(other) == b"request"  # EOF reached the other side
    assert not g.ready()
    other.sendall(b"late answer")
    other.shutdown(socket.SHUT_WR)
    assert recv_all(closer) == b"late answer"
    stats = g.get(timeout=10)
    expected = (7, 11) if first_to_close == "client" else (11, 7)
    assert (stats.up, stats.down, stats.outcome) == (*expected, "ok")


def test_idle_timeout_closes_both(pairs):
    client, a, b, upstream = pairs
    g = start(a, b, idle_timeout=0.2)
    stats = g.get(timeout=10)
    assert stats.outcome == "idle_timeout"
    assert client.recv(10) == b""
    assert upstream.recv(10) == b""


def test_tunnels_with_one_idle_timeout_share_one_timer_and_each_waits_the_whole_timeout():
    """One hub timer per idle timeout, not one per tunnel; a tunnel that starts just
    before a tick still gets its whole timeout; the timer stops with the last tunnel."""
    pairs_ = [socket.socketpair() for _ in range(6)]
    try:
        first = [start(p[1], q[0], idle_timeout=0.8) for p, q in zip(pairs_[0:3:2], pairs_[1:4:2], strict=True)]
        gevent.sleep(0.19)  # the next ones start just before the shared timer's first tick
        started = time.monotonic()
        late = start(pairs_[4][1], pairs_[5][0], idle_timeout=0.8)
        clock = relay_mod._every(0.2, relay_mod._IdleClock.on_tick)
        wait_for(lambda: len(clock.members) == 3, what="all three on the one timer")
        assert late.get(timeout=10).outcome == "idle_timeout"
        assert time.monotonic() - started >= 0.75  # never before the timeout (a tick's rounding aside)
        for g in first:
            assert g.get(timeout=10).outcome == "idle_timeout"
        assert not clock.members and not clock.timer.active
    finally:
        for pair in pairs_:
            for sock in pair:
                sock.close()


def test_traffic_one_way_keeps_tunnel_alive(pairs):
    client, a, b, upstream = pairs
    g = start(a, b, idle_timeout=0.4)
    for _ in range(8):  # 8 x 0.1 s of traffic: longer than the idle timeout
        client.sendall(b"x")
        assert recv_exact(upstream, 1) == b"x"
        gevent.sleep(0.1)
    assert not g.ready()
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    assert g.get(timeout=10).outcome == "ok"


def test_write_error_on_one_side_closes_both(pairs):
    client, a, b, upstream = pairs
    g = start(a, b)
    client.sendall(b"hello")
    assert recv_exact(upstream, 5) == b"hello"
    upstream.close()
    assert recv_all(client) == b""  # the upstream's EOF reached the client
    client.sendall(b"more")  # relaying it fails: the upstream is gone
    stats = g.get(timeout=10)
    assert stats.outcome in {"broken_pipe", "reset", "error"}
    assert stats.up >= 5


def test_tcp_reset_is_an_error(echo_tcp):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    upstream_user = socket.create_connection(listener.getsockname())
    proxy_b, _ = listener.accept()
    client, a = socket.socketpair()
    try:
        g = start(a, proxy_b)
        client.sendall(b"x" * 10)
        assert recv_exact(upstream_user, 10) == b"x" * 10
        upstream_user.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        upstream_user.close()
        client.sendall(b"y" * 10)
        stats = g.get(timeout=10)
        assert stats.outcome in {"reset", "broken_pipe"}
        assert recv_all(client) == b""
    finally:
        for sock in (listener, proxy_b, client, a):
            sock.close()


def test_first_bytes_go_first(pairs):
    client, a, b, upstream = pairs
    g = start(a, b, first_up=b"early", first_down=b"banner")
    assert recv_exact(upstream, 5) == b"early"
    assert recv_exact(client, 6) == b"banner"
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    stats = g.get(timeout=10)
    assert (stats.up, stats.down) == (5, 6)


def test_kill_shuts_both_down(pairs):
    client, a, b, upstream = pairs
    g = start(a, b)
    gevent.sleep(0.01)
    g.kill(timeout=5)
    assert client.recv(10) == b""
    assert upstream.recv(10) == b""


def _transfer(client, upstream, size):
    """size bytes each way at once; returns the sha256 of what each side sent and received."""
    block = os.urandom(65536)

    def send(sock, tag):
        digest = hashlib.sha256()
        left = size
        while left:
            chunk = block[: min(left, len(block))]
            chunk = bytes([tag]) + chunk[1:]
            sock.sendall(chunk)
            digest.update(chunk)
            left -= len(chunk)
        sock.shutdown(socket.SHUT_WR)
        return digest.hexdigest()

    def receive(sock):
        digest = hashlib.sha256()
        while True:
            chunk = sock.recv(1 << 18)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)

    jobs = [gevent.spawn(send, client, 1), gevent.spawn(send, upstream, 2)]
    readers = [gevent.spawn(receive, upstream), gevent.spawn(receive, client)]
    gevent.joinall(jobs + readers, timeout=60, raise_error=True)
    return [j.value for j in jobs], [r.value for r in readers]


@pytest.mark.parametrize("splice_after", [1, None], ids=["splice", "plain"])
def test_large_transfer_sha256(pairs, monkeypatch, splice_after):
    client, a, b, upstream = pairs
    monkeypatch.setattr(relay_mod, "SPLICE_AFTER", splice_after)
    pipes = []
    real_pipe2 = os.pipe2

    def counting_pipe2(flags):
        pipes.append(flags)
        return real_pipe2(flags)

    monkeypatch.setattr(relay_mod.os, "pipe2", counting_pipe2)
    fds = open_fds()
    size = 8 * 1024 * 1024 + 123
    g = start(a, b)
    sent, received = _transfer(client, upstream, size)
    assert received == sent
    stats = g.get(timeout=10)
    assert (stats.up, stats.down, stats.outcome) == (size, size, "ok")
    assert bool(pipes) == (splice_after is not None)
    assert open_fds() == fds - 2  # pipes were given back; the relay closed the two sockets it took


def test_idle_tunnel_holds_no_pipe_after_bulk(pairs, monkeypatch):
    client, a, b, upstream = pairs
    monkeypatch.setattr(relay_mod, "SPLICE_AFTER", 1)
    fds = open_fds()
    g = start(a, b)
    client.sendall(b"z" * 300_000)
    assert len(recv_exact(upstream, 300_000)) == 300_000
    assert open_fds() == fds + 2  # one pipe for the busy direction
    for _ in range(50):  # the sweeper gives it back once the direction is quiet (PIPE_SWEEP)
        if open_fds() == fds:
            break
        gevent.sleep(relay_mod.PIPE_SWEEP / 4)
    assert open_fds() == fds
    client.sendall(b"after")  # and the tunnel still relays, copying again
    assert recv_exact(upstream, 5) == b"after"
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    assert g.get(timeout=10).up == 300_005
    wait_for(lambda: open_fds() == fds - 2, what="the pipe and both sockets closed")  # os.close is deferred


def test_generic_path(pairs):
    client, a, b, upstream = pairs
    g = start(Wrapped(a), Wrapped(b))
    size = 1024 * 1024
    sent, received = _transfer(client, upstream, size)
    assert received == sent
    stats = g.get(timeout=10)
    assert (stats.up, stats.down, stats.outcome) == (size, size, "ok")


def test_generic_path_reads_what_the_destination_wants_per_write(pairs):
    """A destination with ``write_size`` (a Shadowsocks stream: whole chunks) gets writes of
    at most that; a plain destination gets the rest of a partial send through gevent."""
    client, a, b, upstream = pairs

    class Sized(Wrapped):
        write_size = 16383 * 4
        writes: list[int] = []

        def sendall(self, data: bytes | memoryview) -> None:
            self.writes.append(len(data))
            super().sendall(data)

    sized = Sized(a)
    g = start(sized, b)  # downward: upstream -> b (plain) -> a (sized)
    size = 4 * 1024 * 1024
    sent, received = _transfer(client, upstream, size)
    assert received == sent
    assert g.get(timeout=10).outcome == "ok"
    assert max(Sized.writes) == Sized.write_size


def test_generic_path_counts_into_the_callers_stats_while_it_runs(pairs):
    """The admin listener reads a greenlet-engine tunnel's bytes as they move (TLS, Shadowsocks)."""
    client, a, b, upstream = pairs
    live = relay_mod.RelayStats()
    g = start(Wrapped(a), Wrapped(b), stats=live)
    client.sendall(b"x" * 1000)
    assert recv_exact(upstream, 1000) == b"x" * 1000
    wait_for(lambda: live.up == 1000, timeout=5)
    assert not g.ready()
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    assert g.get(timeout=10) is live


def test_generic_path_idle_timeout(pairs):
    client, a, b, upstream = pairs
    g = start(Wrapped(a), Wrapped(b), idle_timeout=0.2)
    assert g.get(timeout=10).outcome == "idle_timeout"
    assert client.recv(1) == b""


def test_splice_refused_falls_back_to_copying(pairs, monkeypatch):
    client, a, b, upstream = pairs
    monkeypatch.setattr(relay_mod, "SPLICE_AFTER", 1)

    def no_splice(*args, **kwargs):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(relay_mod.os, "splice", no_splice)
    fds = open_fds()
    g = start(a, b)
    size = 2 * 1024 * 1024
    sent, received = _transfer(client, upstream, size)
    assert received == sent
    stats = g.get(timeout=10)
    assert (stats.up, stats.down, stats.outcome) == (size, size, "ok")
    assert open_fds() == fds - 2


class _RefusingSends:
    """A destination whose send() accepts nothing every few calls (EAGAIN), as a full
    send buffer does right after a full send (lowered tcp_wmem, SO_SNDBUF, memory pressure)."""

    def __init__(self, sock: socket.socket, every: int = 3) -> None:
        self.sock = sock
        self.every = every
        self.calls = 0

    def send(self, data: bytes | memoryview) -> int:
        self.calls += 1
        if self.calls % self.every == 0:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return self.sock.send(data)

    def __getattr__(self, name: str):
        return getattr(self.sock, name)


@pytest.mark.parametrize("splice_after", [None, relay_mod.CHUNK], ids=["copy", "splice"])
def test_a_send_that_accepts_nothing_loses_no_bytes(pairs, monkeypatch, splice_after):
    """Guards the class "a chunk read but not sent is dropped": every byte arrives, in order,
    and the counts match what arrived, when the destination refuses sends now and then."""
    monkeypatch.setattr(relay_mod, "SPLICE_AFTER", splice_after)
    client, a, b, upstream = pairs
    tunnel = relay_mod._EventTunnel(relay_mod._take_over(a), relay_mod._take_over(b), relay_mod.RelayStats())
    tunnel.up.dst = _RefusingSends(tunnel.up.dst)
    tunnel.down.dst = _RefusingSends(tunnel.down.dst)
    tunnel.start(30)
    runner = gevent.spawn(tunnel.wait)
    payload = os.urandom(3 * 1024 * 1024 + 17)

    def send_and_close(sock: socket.socket) -> None:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)

    senders = [gevent.spawn(send_and_close, client), gevent.spawn(send_and_close, upstream)]
    readers = [gevent.spawn(recv_all, upstream), gevent.spawn(recv_all, client)]
    gevent.joinall(senders + readers, timeout=60, raise_error=True)
    runner.join(timeout=10)
    for reader in readers:
        assert hashlib.sha256(reader.value).hexdigest() == hashlib.sha256(payload).hexdigest()
    assert (tunnel.stats.up, tunnel.stats.down, tunnel.stats.outcome) == (len(payload), len(payload), "ok")
    refusals = 3 if splice_after is None else 0  # the spliced path sends through the descriptor
    assert tunnel.up.dst.calls > refusals and tunnel.down.dst.calls > refusals


# -- start_relay(): the tunnel without a greenlet ---------------------------------------


class Ends:
    """on_done for start_relay(): records each call and the greenlet it ran in."""

    def __init__(self) -> None:
        self.calls: list[relay_mod.RelayStats] = []
        self.in_hub: list[bool] = []

    def __call__(self, stats: relay_mod.RelayStats) -> None:
        self.in_hub.append(gevent.getcurrent() is gevent.get_hub())
        gevent.sleep(0.001)  # a Metrics or log handler that yields: fine in a greenlet
        self.calls.append(stats)

    def wait(self, n: int = 1) -> relay_mod.RelayStats:
        wait_for(lambda: len(self.calls) >= n, what="on_done")
        return self.calls[-1]


@pytest.fixture
def hub_errors(monkeypatch):
    """What reaches the hub's traceback printer during the test."""
    seen = []
    hub = gevent.get_hub()
    real = hub.print_exception

    def record(context, exc_type, value, tb):
        seen.append(exc_type)
        real(context, exc_type, value, tb)

    monkeypatch.setattr(hub, "print_exception", record)
    return seen


def test_start_relay_half_close_each_way_then_on_done_in_a_greenlet(pairs, hub_errors):
    client, a, b, upstream = pairs
    ends = Ends()
    tunnel = relay_mod.start_relay(a, b, idle_timeout=30, on_done=ends)
    assert tunnel is not None
    assert a.fileno() == -1 and b.fileno() == -1  # taken over: the caller's objects are detached
    client.sendall(b"request")
    client.shutdown(socket.SHUT_WR)
    assert recv_all(upstream) == b"request"  # the client's EOF reached the upstream
    upstream.sendall(b"late answer")  # and the other way still flows
    assert recv_exact(client, 11) == b"late answer"
    assert not ends.calls
    upstream.shutdown(socket.SHUT_WR)
    assert recv_all(client) == b""
    stats = ends.wait()
    assert (stats.up, stats.down, stats.outcome) == (7, 11, "ok")
    assert ends.in_hub == [False]  # never inside an event-loop callback
    gevent.sleep(0.01)
    assert len(ends.calls) == 1 and hub_errors == []


def test_start_relay_sends_early_bytes_first(pairs):
    client, a, b, upstream = pairs
    ends = Ends()
    tunnel = relay_mod.start_relay(a, b, idle_timeout=30, on_done=ends, first_up=b"early")
    assert tunnel is not None
    client.sendall(b"+late")
    assert recv_exact(upstream, 10) == b"early+late"
    tunnel.abort("shutdown")
    assert ends.wait().up == 10


def test_start_relay_declines_the_greenlet_engine(pairs):
    _, a, b, _ = pairs
    assert relay_mod.start_relay(Wrapped(a), b, idle_timeout=30, on_done=Ends()) is None
    assert a.fileno() != -1 and b.fileno() != -1  # untouched


def test_idle_timeout_without_a_greenlet(pairs):
    client, a, b, upstream = pairs
    ends = Ends()
    relay_mod.start_relay(a, b, idle_timeout=0.2, on_done=ends)
    assert ends.wait().outcome == "idle_timeout"
    assert client.recv(10) == b"" and upstream.recv(10) == b""


def test_abort_keeps_the_first_outcome(pairs):
    client, a, b, upstream = pairs
    ends = Ends()
    tunnel = relay_mod.start_relay(a, b, idle_timeout=30, on_done=ends)
    assert tunnel is not None
    client.sendall(b"abc")
    assert recv_exact(upstream, 3) == b"abc"
    tunnel.abort("shutdown")
    tunnel.abort("idle_timeout")  # too late: it has ended
    stats = ends.wait()
    assert (stats.up, stats.outcome) == (3, "shutdown")
    assert client.recv(10) == b"" and upstream.recv(10) == b""
    gevent.sleep(0.01)
    assert len(ends.calls) == 1 and tunnel.stats.outcome == "shutdown"


def test_closing_a_handed_over_socket_from_outside_is_harmless(pairs, hub_errors):
    """The close() trap: gevent's close() used to throw into the relay's callback owner
    (AttributeError from the hub, and the session never ended). The relay owns the
    descriptors now: the caller's close() touches nothing; the tunnel relays on and ends
    with its record."""
    client, a, b, upstream = pairs
    ends = Ends()
    relay_mod.start_relay(a, b, idle_timeout=30, on_done=ends)
    a.close()
    b.close()
    gevent.sleep(0.05)
    assert echo_once(client, upstream, b"still here")
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    stats = ends.wait()
    assert (stats.up, stats.outcome) == (10, "ok")
    assert hub_errors == []


def echo_once(client: socket.socket, upstream: socket.socket, data: bytes) -> bool:
    client.sendall(data)
    return recv_exact(upstream, len(data)) == data


def test_registry_drain_then_kill_ends_tunnels_with_shutdown_and_their_counts(hub_errors):
    from gproxy.core.addr import Address
    from gproxy.core.session import Session
    from gproxy.core.tunnel import _Ended
    from gproxy.server.tunnels import Tunnels

    ended: list[Session] = []
    tunnels = Tunnels(ended.append)
    socks = []
    sessions = []
    try:
        for n in (1, 2):
            client, a = socket.socketpair()
            b, upstream = socket.socketpair()
            socks += [client, a, b, upstream]
            session = Session(Address("127.0.0.1", 1000 + n), "socks5")
            handed = relay_mod.start_relay(a, b, idle_timeout=30, on_done=_Ended(tunnels, session))
            assert handed is not None
            tunnels.add(session, handed)
            sessions.append(session)
            assert echo_once(client, upstream, b"x" * n)
        assert len(tunnels) == 2 and all(s in tunnels for s in sessions)
        assert tunnels.drain(0.1) is False  # nobody ends on their own
        assert tunnels.kill("shutdown", timeout=5) is True
        assert len(tunnels) == 0 and [s.outcome for s in ended] == ["shutdown", "shutdown"]
        assert sorted(s.up for s in ended) == [1, 2]
        assert hub_errors == []
    finally:
        for sock in socks:
            sock.close()


def test_raw_socket_only_for_plain_gevent_sockets():
    class Wrapped(gsocket.socket):
        pass

    with gsocket.socket() as plain, Wrapped() as wrapped:
        assert engine_for(plain, plain) is Engine.EVENTS
        assert engine_for(wrapped, plain) is Engine.GREENLETS  # e.g. an SSLSocket: the greenlet engine


def test_a_failed_take_over_of_the_upstream_closes_the_client_it_took(pairs, monkeypatch):
    """Guards the class "a socket nobody owns": the client was taken over (detached from
    the caller's object) when the upstream's take-over fails; it is closed, not leaked."""
    _, proxy_a, proxy_b, _ = pairs
    real = relay_mod._take_over
    taken = []

    def fail_on_the_upstream(sock):  # type: ignore[no-untyped-def]
        if sock is proxy_b:
            raise OSError(errno.EBADF, "cannot take it over")
        taken.append(real(sock))
        return taken[-1]

    monkeypatch.setattr(relay_mod, "_take_over", fail_on_the_upstream)
    with pytest.raises(OSError):
        relay_mod._take_over_both(proxy_a, proxy_b)
    kernel, watcher = taken[0]
    assert kernel.fileno() == -1 and not watcher.active
