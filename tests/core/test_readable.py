"""ReadWaiter: a read watcher that stays started between waits (no epoll_ctl per wait),
stops itself when it fires with nobody waiting, and never wakes a greenlet that left."""

from __future__ import annotations

import socket

import gevent
import pytest

from gproxy.core.readable import ReadWaiter
from tests.helpers import wait_for


@pytest.fixture
def ends():
    """(a ReadWaiter on our end of a socket pair, our end, the peer's end); all closed after."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    reader = ReadWaiter(ours.fileno())
    yield reader, ours, peer
    reader.close()  # the watcher before the descriptor
    ours.close()
    peer.close()


def wait_in_greenlet(reader: ReadWaiter) -> gevent.Greenlet:
    waiting = gevent.spawn(reader.wait)
    gevent.idle()  # until it blocks in wait()
    assert not waiting.dead
    return waiting


def test_a_wait_ends_when_bytes_come_and_the_watcher_stays_started(ends):
    reader, ours, peer = ends
    for n in range(3):
        waiting = wait_in_greenlet(reader)
        peer.send(b"x")
        waiting.join(timeout=5)
        assert waiting.successful()
        assert ours.recv(10) == b"x"
        assert reader.started, f"stopped after wait {n}"


def test_readable_with_nobody_waiting_stops_the_watcher_and_the_next_wait_returns(ends):
    reader, ours, peer = ends
    waiting = wait_in_greenlet(reader)
    peer.send(b"1")
    waiting.join(timeout=5)
    ours.recv(10)
    peer.send(b"2")  # nobody waits: the level-triggered watcher must not fire on every turn
    wait_for(lambda: not reader.started, timeout=5, what="the watcher stopped itself")
    with gevent.Timeout(5):
        reader.wait()  # the byte is there: at once
    assert ours.recv(10) == b"2"


def test_a_thrown_exception_ends_the_wait_and_later_bytes_wake_nobody(ends):
    reader, _, peer = ends
    woken: list[str] = []

    def wait_then_sleep() -> None:
        with pytest.raises(gevent.Timeout), gevent.Timeout(0.05):
            reader.wait()
        woken.append("timed out")
        gevent.sleep(0.2)  # bytes arriving now must not end this sleep early
        woken.append("slept")

    sleeper = gevent.spawn(wait_then_sleep)
    wait_for(lambda: woken == ["timed out"], timeout=5, what="the wait timed out")
    peer.send(b"x")
    gevent.sleep(0.02)  # the loop polls: the bytes must wake nobody (the sleep goes on)
    assert woken == ["timed out"]
    sleeper.join(timeout=5)
    assert woken == ["timed out", "slept"]


def test_one_waiter_at_a_time_and_no_wait_after_close(ends):
    reader, _, _ = ends
    waiting = wait_in_greenlet(reader)
    with pytest.raises(RuntimeError):
        reader.wait()
    waiting.kill()
    reader.close()
    reader.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        reader.wait()
