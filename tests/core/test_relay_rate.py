"""Rate limits in the relay engines over socketpairs: the splice path, the copy path and
the greenlet (TLS-like) path held to their buckets in both directions, two tunnels
sharing one bucket, and an unlimited tunnel running the unlimited code."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

from gproxy.core import relay as relay_mod
from gproxy.core.limits import RateLimits, TokenBucket
from gproxy.core.relay import relay, start_relay
from tests.helpers import Wrapped, wait_for

RATE = 512 * 1024
BLOCK = b"r" * 65536


@pytest.fixture
def pairs():
    """Makes (client, proxy_a, proxy_b, upstream) socketpair quads; all closed afterwards."""
    made = []

    def make():
        client, proxy_a = socket.socketpair()
        proxy_b, upstream = socket.socketpair()
        made.extend((client, proxy_a, proxy_b, upstream))
        return client, proxy_a, proxy_b, upstream

    yield make
    for sock in made:
        sock.close()


def one_way(sender, receiver, size):
    """Send ``size`` bytes in big writes and half-close; returns (bytes received, seconds)."""
    started = time.monotonic()

    def send():
        left = size
        while left:
            chunk = BLOCK[: min(left, len(BLOCK))]
            sender.sendall(chunk)
            left -= len(chunk)
        sender.shutdown(socket.SHUT_WR)

    def receive():
        got = 0
        while chunk := receiver.recv(1 << 18):
            got += len(chunk)
        return got

    jobs = [gevent.spawn(send), gevent.spawn(receive)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert all(job.ready() for job in jobs), "transfer did not finish in 30 s"
    return jobs[1].value, time.monotonic() - started


def both_ways(client, upstream, size):
    """``size`` bytes each way at once; returns ((up bytes, seconds), (down bytes, seconds))."""
    up = gevent.spawn(one_way, client, upstream, size)
    down = gevent.spawn(one_way, upstream, client, size)
    gevent.joinall([up, down], timeout=40, raise_error=True)
    return up.value, down.value


@pytest.mark.parametrize("engine", ["splice", "copy", "greenlets"])
def test_each_direction_is_held_to_the_rate(pairs, monkeypatch, engine):
    monkeypatch.setattr(relay_mod, "SPLICE_AFTER", None if engine == "copy" else relay_mod.CHUNK)
    client, a, b, upstream = pairs()
    if engine == "greenlets":
        a, b = Wrapped(a), Wrapped(b)
    limits = RateLimits().buckets("alice", RATE)
    size = 3 * RATE  # a second's burst, then 2 s at the rate
    g = gevent.spawn(relay, a, b, idle_timeout=30, limits=limits)
    (up, up_took), (down, down_took) = both_ways(client, upstream, size)
    assert (up, down) == (size, size)
    assert 1.5 < up_took < 8, up_took
    assert 1.5 < down_took < 8, down_took
    stats = g.get(timeout=10)
    assert (stats.up, stats.down, stats.outcome) == (size, size, "ok")


def test_two_tunnels_of_one_owner_share_the_rate(pairs):
    limits = RateLimits()
    size = 2 * RATE  # together: a second's burst, then 3 s at the rate; alone each would take 1 s
    tunnels, transfers, clients = [], [], []
    for _ in range(2):
        client, a, b, upstream = pairs()
        tunnels.append(gevent.spawn(relay, a, b, idle_timeout=30, limits=limits.buckets("10.0.0.1", RATE)))
        transfers.append(gevent.spawn(one_way, upstream, client, size))
        clients.append(client)
    gevent.joinall(transfers, timeout=40, raise_error=True)
    took = max(transfer.value[1] for transfer in transfers)
    assert [transfer.value[0] for transfer in transfers] == [size, size]
    assert 2.2 < took < 10, took  # ~3 s: not ~1 s (a rate each)
    for client in clients:
        client.shutdown(socket.SHUT_WR)
    for tunnel in tunnels:
        assert tunnel.get(timeout=10).down == size


def test_an_unlimited_tunnel_runs_the_unlimited_code_and_is_not_slowed(pairs):
    limited_client, a, b, limited_upstream = pairs()
    limits = RateLimits().buckets("slow", RATE)
    ended = []
    slow = start_relay(a, b, idle_timeout=30, on_done=ended.append, limits=limits)
    client, c, d, upstream = pairs()
    fast = start_relay(c, d, idle_timeout=30, on_done=ended.append)
    assert type(fast.up) is relay_mod._Direction and type(fast.down) is relay_mod._Direction
    assert type(slow.up) is relay_mod._LimitedDirection
    busy = gevent.spawn(one_way, limited_upstream, limited_client, 3 * RATE)
    got, took = one_way(upstream, client, 6 * RATE)  # twice the bytes, at full speed meanwhile
    assert got == 6 * RATE
    assert took < 1.5, took
    assert not busy.ready()  # the limited one is still going
    assert busy.get(timeout=30)[0] == 3 * RATE
    client.shutdown(socket.SHUT_WR)
    limited_client.shutdown(socket.SHUT_WR)
    wait_for(lambda: len(ended) == 2, what="both tunnels' on_done")
    assert sorted(stats.down for stats in ended) == [3 * RATE, 6 * RATE]


def test_early_bytes_are_spent_from_the_bucket(pairs):
    client, a, b, upstream = pairs()

    def stopped() -> float:  # a clock that does not move: no refill, the spending shows exactly
        return 0.0

    bucket_up, bucket_down = limits = (TokenBucket(RATE, stopped), TokenBucket(RATE, stopped))
    g = gevent.spawn(relay, a, b, idle_timeout=30, first_up=b"x" * 1000, first_down=b"y" * 10, limits=limits)
    assert upstream.recv(2000) == b"x" * 1000
    assert client.recv(100) == b"y" * 10
    assert (bucket_up.tokens, bucket_down.tokens) == (RATE - 1000, RATE - 10)
    client.shutdown(socket.SHUT_WR)
    upstream.shutdown(socket.SHUT_WR)
    assert g.get(timeout=10).up == 1000


def test_abort_while_paused_closes_the_resume_timer(pairs):
    client, a, b, upstream = pairs()
    limits = (TokenBucket(64 * 1024), TokenBucket(64 * 1024))
    ended = []
    tunnel = start_relay(a, b, idle_timeout=30, on_done=ended.append, limits=limits)
    sender = gevent.spawn(client.sendall, b"z" * (256 * 1024))
    wait_for(lambda: tunnel.up.timer is not None, what="the pause after the burst")
    tunnel.abort("shutdown")
    assert tunnel.up.timer is None
    wait_for(lambda: ended, what="on_done")
    assert ended[0].outcome == "shutdown"
    sender.kill()
