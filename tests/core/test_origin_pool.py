"""OriginPool: which kept connections are handed out again. A connection whose read
watcher stays started had nothing arrive as of the loop's last poll (no system call to
ask); one whose watcher stopped (bytes or a FIN came unasked) is checked with a peek."""

from __future__ import annotations

import gevent
import pytest
from gevent import socket as gsocket

from gproxy.core.origin_pool import OriginConn, OriginPool
from gproxy.core.readable import ReadWaiter
from tests.helpers import wait_for

KEY = ("origin", 80)


@pytest.fixture
def kept():
    """(an OriginConn whose ReadWaiter has waited once, as after a response; the origin's end)"""
    ours, origin = gsocket.socketpair()
    conn = OriginConn(ours, None, ReadWaiter(ours.fileno()))
    origin.sendall(b"response")
    assert conn.reader is not None
    conn.reader.wait()
    assert ours.recv(100) == b"response"
    yield conn, origin
    conn.close()
    origin.close()


def test_a_connection_nothing_came_on_is_handed_out(kept):
    """(That it is handed out without a peek: test_what_arrives_after_the_last_poll_...)"""
    conn, _ = kept
    pool = OriginPool()
    pool.put(KEY, conn)
    gevent.sleep(0.01)  # the loop polls: nothing fires
    assert pool.get(KEY) is conn
    assert conn.reader is not None and conn.reader.started


@pytest.mark.parametrize("unasked", ["fin", "bytes"])
def test_a_connection_the_origin_closed_or_wrote_on_while_idle_is_closed_not_handed_out(kept, unasked):
    conn, origin = kept
    pool = OriginPool()
    pool.put(KEY, conn)
    if unasked == "fin":
        origin.close()
    else:
        origin.sendall(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    reader = conn.reader
    assert reader is not None
    wait_for(lambda: not reader.started, timeout=5, what="the watcher fired with nobody waiting")
    assert pool.get(KEY) is None
    assert conn.sock.fileno() == -1  # closed, watcher first
    assert len(pool) == 0


def test_what_arrives_after_the_last_poll_is_left_to_the_retry(kept):
    """No peek while the watcher is started: bytes that came since the loop last polled are
    not seen here (an idempotent request that meets them is retried on a new connection)."""
    conn, origin = kept
    pool = OriginPool()
    pool.put(KEY, conn)
    gevent.sleep(0.01)  # the loop polls: nothing came yet, the watcher stays started
    origin.sendall(b"x")  # no yield to the loop before get()
    assert pool.get(KEY) is conn


def test_a_stopped_watcher_with_nothing_waiting_is_checked_by_a_peek_and_kept(kept):
    """A watcher that fired during the response (the rest of a body came while the greenlet
    was busy) is stopped, yet the connection is fine: the peek says so."""
    conn, origin = kept
    origin.sendall(b"rest of the body")
    reader = conn.reader
    assert reader is not None
    wait_for(lambda: not reader.started, timeout=5, what="the watcher fired with nobody waiting")
    assert conn.sock.recv(100) == b"rest of the body"
    pool = OriginPool()
    pool.put(KEY, conn)
    assert pool.get(KEY) is conn
