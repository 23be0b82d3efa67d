"""The greenlets that serve client sessions, reused from one session to the next.

A new greenlet per connection costs its object, its start and, on Python 3.11,
a fresh 16 KiB frame stack (an mmap, then a munmap when it ends). Here a
greenlet whose session is done parks and takes the next one; at most
``keep_idle`` wait parked, the rest end as before. Like the gevent Group it
replaces: spawn (StreamServer's ``spawn=``), join (every session done), kill.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event
from gevent.hub import Waiter, get_hub

Job = tuple[Callable[..., object], tuple[Any, ...]]

#: parked greenlets kept for the next sessions (each holds a few KiB of saved stack)
KEEP_IDLE = 64


class SessionGreenlets:
    """Runs each spawned call in a greenlet of its own at a time, reusing finished ones."""

    def __init__(self, keep_idle: int = KEEP_IDLE) -> None:
        self.keep_idle = keep_idle
        self._parked: list[Waiter[Job | None]] = []
        self._greenlets: set[gevent.Greenlet[..., None]] = set()
        self._busy = 0
        self._idle = Event()  # no call running
        self._idle.set()

    def __len__(self) -> int:
        """Calls running now (parked greenlets do not count)."""
        return self._busy

    @property
    def parked(self) -> int:
        """Greenlets waiting for the next call (at most ``keep_idle``)."""
        return len(self._parked)

    def spawn(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` soon in a greenlet (a parked one if any), like ``gevent.spawn``."""
        self._busy += 1
        self._idle.clear()
        job: Job = (fn, args)
        if self._parked:
            get_hub().loop.run_callback(self._parked.pop().switch, job)
        else:
            greenlet = gevent.spawn(self._serve, job)
            self._greenlets.add(greenlet)

    def _serve(self, job: Job | None) -> None:
        me = gevent.getcurrent()
        try:
            while job is not None:
                fn, args = job
                try:
                    fn(*args)
                except Exception:  # what gevent does with a greenlet's uncaught error: report it, go on
                    get_hub().handle_error(me, *sys.exc_info())
                finally:
                    self._busy -= 1
                    if not self._busy:
                        self._idle.set()
                if len(self._parked) >= self.keep_idle:
                    return
                waiter: Waiter[Job | None] = Waiter()
                self._parked.append(waiter)
                job = waiter.get()
        finally:
            self._greenlets.discard(me)

    def interrupt(self, greenlet: Any, exception: type[BaseException], still: Callable[[], bool]) -> None:
        """Raise ``exception`` in ``greenlet`` (from the hub, soon) if ``still()`` is then true:
        the session it was meant for may have ended, and the greenlet moved on, meanwhile."""

        def deliver() -> None:
            if still() and not greenlet.dead:
                greenlet.throw(exception)

        get_hub().loop.run_callback(deliver)

    def join(self, timeout: float | None = None) -> bool:
        """Wait until no call is running; True if none is."""
        return bool(self._idle.wait(timeout))

    def kill(self, block: bool = True, timeout: float | None = None) -> None:
        """End every greenlet, running or parked (GreenletExit in each)."""
        self._parked.clear()
        gevent.killall(list(self._greenlets), block=block, timeout=timeout)
