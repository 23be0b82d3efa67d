"""later.call_soon(): calls from event-loop callbacks run in a greenlet, in order, without
a greenlet per call; a call that yields or fails holds none of the others up."""

from __future__ import annotations

import gevent
from gevent.event import Event
from gevent.hub import get_hub

from gproxy.core import later
from gproxy.core.later import call_soon
from tests.helpers import wait_for


def from_callback(fn, arg) -> None:
    """call_soon() as a watcher callback makes it: from the hub."""
    get_hub().loop.run_callback(call_soon, fn, arg)


def test_calls_run_in_order_in_one_reused_greenlet_never_the_hub():
    ran: list[tuple[int, object]] = []
    hub = get_hub()

    def note(n: int) -> None:
        assert gevent.getcurrent() is not hub
        ran.append((n, gevent.getcurrent()))

    for n in range(5):
        from_callback(note, n)
    wait_for(lambda: len(ran) == 5)
    for n in range(5, 8):  # after the runner has parked: woken, not respawned
        from_callback(note, n)
    wait_for(lambda: len(ran) == 8)
    assert [n for n, _ in ran] == list(range(8))
    assert len({id(g) for _, g in ran}) == 1


def test_a_call_that_blocks_does_not_hold_the_next_ones_up():
    release = Event()
    done: list[str] = []

    def slow(_: object) -> None:
        release.wait(5)
        done.append("slow")

    from_callback(slow, None)
    wait_for(lambda: later._runners.get().busy)
    from_callback(done.append, "quick")
    wait_for(lambda: done == ["quick"])  # ran while slow() still waits
    release.set()
    wait_for(lambda: done == ["quick", "slow"])


def test_a_failing_call_is_logged_and_the_runner_goes_on(caplog):
    done: list[int] = []

    def boom(_: object) -> None:
        raise RuntimeError("boom")

    from_callback(boom, None)
    from_callback(done.append, 1)
    wait_for(lambda: done == [1])
    assert "a deferred call failed" in caplog.text


def test_a_killed_runner_is_replaced():
    done: list[int] = []
    from_callback(done.append, 1)
    wait_for(lambda: done == [1])
    runner = later._runners.get()
    assert runner.greenlet is not None
    runner.greenlet.kill()
    call_soon(done.append, 2)  # from a greenlet, too
    wait_for(lambda: done == [1, 2])


def test_close_lets_the_queued_calls_run_and_the_greenlet_end_instead_of_parking():
    """What per_hub.forget_hub does when a proxy thread's hub ends: a greenlet left
    parked in a dead thread's hub would never be freed."""
    runner = later._Runner(get_hub())
    done: list[int] = []
    runner.add(done.append, 1)
    wait_for(lambda: runner.parked is not None)
    greenlet = runner.greenlet
    assert greenlet is not None
    runner.add(done.append, 2)
    runner.close()
    runner.add(done.append, 3)  # queued before it ran: still runs
    wait_for(lambda: greenlet.dead)
    assert done == [1, 2, 3]
    assert greenlet.successful()
