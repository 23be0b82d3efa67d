"""ReadWaiter: waits for a descriptor to become readable on a watcher that stays started.

A read watcher started and stopped around each wait (what gevent's ``hub.wait``
and its sockets do) costs libev an ``epoll_ctl`` each time it starts again: libev
stops watchers lazily, so the next start tries EPOLL_CTL_ADD, fails with EEXIST
and keeps the registration. On a kept-alive HTTP connection that is one failing
system call per wait, two per forwarded request (the client's and the origin's).

A ReadWaiter starts its watcher on the first wait and leaves it started. When it
fires with a greenlet waiting, it switches to it; with nobody waiting (the peer
sent early, or closed), it stops the watcher, which the next wait starts again:
a level-triggered watcher left started with nobody to read would fire on every
loop turn. Uses only gevent's public API (``loop.io``, ``hub.switch``).
"""

from __future__ import annotations

from typing import Any

from gevent.hub import get_hub, getcurrent

from gproxy.core._gevent import READ


class ReadWaiter:
    """Waits, one greenlet at a time, for ``fd`` to be readable; close() before the descriptor."""

    __slots__ = ("_io", "_waiter")

    def __init__(self, fd: int) -> None:
        self._io: Any = get_hub().loop.io(fd, READ)
        self._waiter: Any = None  # the greenlet in wait(), if any

    @property
    def started(self) -> bool:
        """Whether the watcher is started (it stays so between waits)."""
        return bool(self._io.active)

    def wait(self) -> None:
        """Until the descriptor is readable (or has been since the last wait). An exception
        thrown into the greenlet meanwhile (a timer's, a kill) ends the wait; the watcher stays.

        Raises:
            RuntimeError: another greenlet is waiting already.
            ValueError: closed.
        """
        io = self._io
        if io is None:
            raise ValueError("ReadWaiter is closed")
        if self._waiter is not None:
            raise RuntimeError("another greenlet is already waiting on this descriptor")
        if not io.active:
            io.start(self._fired)
        self._waiter = getcurrent()
        try:
            get_hub().switch()
        finally:
            self._waiter = None

    def _fired(self) -> None:
        waiter = self._waiter
        if waiter is None:  # readable with nobody to read: stop until the next wait
            self._io.stop()
        else:
            waiter.switch()

    def close(self) -> None:
        """Stop and release the watcher (call before closing the descriptor). Idempotent."""
        if self._io is not None:
            self._io.close()
            self._io = None
