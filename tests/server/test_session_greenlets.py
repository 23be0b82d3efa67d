"""SessionGreenlets: calls run in greenlets that are reused; join, kill and interrupt
behave as the gevent Group they replace, and an interrupt never reaches the wrong session."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from gproxy.server.session_greenlets import SessionGreenlets
from tests.helpers import wait_for


class Stop(Exception):
    pass


def test_a_finished_calls_greenlet_serves_the_next_one():
    pool = SessionGreenlets()
    seen: list[object] = []
    for n in range(3):
        pool.spawn(lambda n=n: seen.append((n, gevent.getcurrent())))
        assert pool.join(5)
    assert [n for n, _ in seen] == [0, 1, 2]
    assert len({id(g) for _, g in seen}) == 1
    pool.kill()


def test_concurrent_calls_get_greenlets_of_their_own_and_join_waits_for_all():
    pool = SessionGreenlets()
    release = Event()
    running: list[object] = []

    def call() -> None:
        running.append(gevent.getcurrent())
        release.wait(5)

    for _ in range(3):
        pool.spawn(call)
    wait_for(lambda: len(running) == 3)
    assert len({id(g) for g in running}) == 3
    assert len(pool) == 3
    assert not pool.join(0.05)
    release.set()
    assert pool.join(5)
    assert len(pool) == 0
    pool.kill()


def test_at_most_keep_idle_greenlets_stay_parked():
    pool = SessionGreenlets(keep_idle=2)
    release = Event()
    for _ in range(5):
        pool.spawn(release.wait, 5)
    wait_for(lambda: len(pool._greenlets) == 5)
    release.set()
    assert pool.join(5)
    wait_for(lambda: len(pool._greenlets) == 2)
    assert len(pool._parked) == 2
    pool.kill()


def test_kill_ends_running_and_parked_greenlets():
    pool = SessionGreenlets()
    pool.spawn(gevent.sleep, 30)
    pool.spawn(lambda: None)
    wait_for(lambda: len(pool._parked) == 1 and len(pool) == 1)  # one parked, one running
    assert len(pool._greenlets) == 2
    pool.kill(block=True, timeout=5)
    assert not pool._greenlets
    assert len(pool) == 0


def test_an_error_is_reported_and_the_greenlet_goes_on(capsys):
    pool = SessionGreenlets()

    def boom() -> None:
        raise RuntimeError("boom")

    pool.spawn(boom)
    assert pool.join(5)
    done: list[int] = []
    pool.spawn(done.append, 1)
    assert pool.join(5)
    assert done == [1]
    assert "RuntimeError: boom" in capsys.readouterr().err
    pool.kill()


@pytest.mark.parametrize("still", [True, False])
def test_interrupt_reaches_the_greenlet_only_while_still_true(still):
    pool = SessionGreenlets()
    started = Event()
    outcome: list[str] = []

    def session() -> None:
        started.set()
        try:
            gevent.sleep(0.3)
            outcome.append("finished")
        except Stop:
            outcome.append("interrupted")

    pool.spawn(session)
    started.wait(5)
    greenlet = next(iter(pool._greenlets))
    pool.interrupt(greenlet, Stop, lambda: still)
    assert pool.join(5)
    assert outcome == ["interrupted" if still else "finished"]
    pool.kill()
