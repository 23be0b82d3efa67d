"""One object per hub (per thread running gevent), made on first use.

A process serves from one hub, but the Python API may run proxies in several
threads, each with its own hub: what a hub's callbacks share (receive
buffers, timers, a greenlet) must never cross threads. The last hub's object
is found without a weak-dictionary lookup (Python code) on every call.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from gevent.hub import Hub, get_hub

T = TypeVar("T")


class PerHub(Generic[T]):
    """``get()``: this hub's T, made by ``make(hub)`` the first time."""

    __slots__ = ("_make", "_made", "_last", "__weakref__")

    def __init__(self, make: Callable[[Hub], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[Hub, T] = weakref.WeakKeyDictionary()
        self._last: tuple[Hub, T] | None = None  # the hub that asked last, and its T
        _ALL.add(self)

    def forget(self, hub: Hub) -> None:
        """Drop ``hub``'s T, after calling its ``close()`` if it has one (a T may hold its hub,
        e.g. through a greenlet: the weak key alone would never let go of it)."""
        made = self._made.pop(hub, None)
        last = self._last
        if last is not None and last[0] is hub:
            self._last = None
        close = getattr(made, "close", None)
        if close is not None:
            close()

    def get(self) -> T:
        hub = get_hub()
        last = self._last  # read once: another thread may replace it meanwhile
        if last is not None and last[0] is hub:
            return last[1]
        made = self._made.get(hub)
        if made is None:
            made = self._made[hub] = self._make(hub)
        self._last = (hub, made)
        return made


_ALL: weakref.WeakSet[PerHub[Any]] = weakref.WeakSet()


def forget_hub(hub: Hub) -> None:
    """Every PerHub closes and drops ``hub``'s object: call from the hub's thread when it
    is done for (its thread ends), while its loop can still run (a close may schedule work)."""
    for per_hub in list(_ALL):
        per_hub.forget(hub)
