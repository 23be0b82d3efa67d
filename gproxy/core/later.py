"""Calls handed over from event-loop callbacks, run in a greenlet without a greenlet per call.

A tunnel ends inside a watcher callback, where nothing may yield; its record
(metrics, access log, a user's own Metrics) must run in a greenlet. Spawning
one per tunnel costs a greenlet and a fresh frame stack (an mmap and munmap
on Python 3.11) every time. Instead one long-lived greenlet per hub runs the
calls in order. A call that yields (a log handler or Metrics doing blocking
I/O) does not hold the others up: while it waits, each new call gets a
greenlet of its own, as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import gevent
from gevent.hub import Hub, Waiter

from gproxy.core.log import logger
from gproxy.core.per_hub import PerHub

Call = tuple[Callable[[Any], object], Any]


class _Runner:
    """The calls waiting, and the one greenlet (per hub) that runs them."""

    __slots__ = ("calls", "greenlet", "parked", "busy", "loop", "closing")

    def __init__(self, hub: Hub) -> None:
        self.calls: deque[Call] = deque()
        self.greenlet: gevent.Greenlet[..., None] | None = None
        self.parked: Waiter[None] | None = None  # set while the greenlet waits for calls
        self.busy = False  # inside a call (that has yielded, if anyone else is running)
        self.loop = hub.loop
        self.closing = False

    def add(self, fn: Callable[[Any], object], arg: Any) -> None:
        if self.busy:  # the running call yielded: do not queue behind it
            gevent.spawn(_run_one, fn, arg)
            return
        self.calls.append((fn, arg))
        parked, self.parked = self.parked, None
        if self.greenlet is None or self.greenlet.dead:  # first call, or it was killed
            self.greenlet = gevent.spawn(self.run)
        elif parked is not None:
            self.loop.run_callback(parked.switch, None)  # safe from the hub and from a greenlet

    def close(self) -> None:
        """Let the greenlet run what is queued and end instead of parking again (its hub
        is done for: per_hub.forget_hub; a parked greenlet of a dead thread is never freed)."""
        self.closing = True
        parked, self.parked = self.parked, None
        if parked is not None:
            self.loop.run_callback(parked.switch, None)

    def run(self) -> None:
        calls = self.calls
        while True:
            while calls:
                fn, arg = calls.popleft()
                self.busy = True
                try:
                    _run_one(fn, arg)
                finally:
                    self.busy = False
            if self.closing:
                return
            waiter: Waiter[None] = Waiter()
            self.parked = waiter
            waiter.get()


def _run_one(fn: Callable[[Any], object], arg: Any) -> None:
    try:
        fn(arg)
    except Exception:  # one line, not the hub's traceback printer: the other calls go on
        logger.exception("a deferred call failed")


_runners: PerHub[_Runner] = PerHub(_Runner)


def call_soon(fn: Callable[[Any], object], arg: Any) -> None:
    """Run ``fn(arg)`` soon, in a greenlet (never inside the caller's callback); in order."""
    _runners.get().add(fn, arg)
