"""Idle origin connections kept for the next HTTP request to the same origin.

Bounded per key (origin, route, user) and in total; a connection idle for
longer than ``idle_expiry`` is closed by a reaper greenlet, and one the origin
has closed (or sent unasked bytes on) is dropped when taken. Each one is kept
as an OriginConn: the socket, its route and the read waiter that stays with it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Hashable
from dataclasses import dataclass

import gevent

from gproxy.core._gevent import raw_socket
from gproxy.core.readable import ReadWaiter

#: defaults: idle connections per origin, in total, and seconds kept idle
PER_ORIGIN = 128
TOTAL = 1024
IDLE_EXPIRY = 15.0
#: a peek that does not block (an int: OR-ing the enum flags costs three calls each time)
_PEEK_NOW = int(socket.MSG_PEEK | socket.MSG_DONTWAIT)


@dataclass(slots=True)
class OriginConn:
    """A connection to an origin, the route it took (``via``) and, for a plain socket,
    the ReadWaiter its responses are awaited on (kept started for its whole life)."""

    sock: socket.socket
    via: str | None
    reader: ReadWaiter | None

    def close(self) -> None:
        """The watcher first, then the socket."""
        if self.reader is not None:
            self.reader.close()
        self.sock.close()


class OriginPool:
    """Idle keep-alive connections to origins, newest first out."""

    def __init__(self, per_origin: int = PER_ORIGIN, total: int = TOTAL, idle_expiry: float = IDLE_EXPIRY) -> None:
        self.per_origin = per_origin
        self.total = total
        self.idle_expiry = idle_expiry
        self._idle: dict[Hashable, list[tuple[OriginConn, float]]] = {}
        self._count = 0
        self._reaper: gevent.Greenlet[[], None] | None = None
        self._closed = False

    def __len__(self) -> int:
        return self._count

    def get(self, key: Hashable) -> OriginConn | None:
        """An idle connection for ``key`` that still looks open; or None."""
        stack = self._idle.get(key)
        now = time.monotonic()
        while stack:
            conn, since = stack.pop()
            self._count -= 1
            if not stack:
                del self._idle[key]
            if now - since < self.idle_expiry and _looks_open(conn):
                return conn
            conn.close()
        return None

    def put(self, key: Hashable, conn: OriginConn) -> None:
        """Keep ``conn`` for the next request to ``key``; closed instead when full."""
        stack = self._idle.setdefault(key, [])
        if self._closed or len(stack) >= self.per_origin or self._count >= self.total:
            if not stack:
                del self._idle[key]
            conn.close()
            return
        stack.append((conn, time.monotonic()))
        self._count += 1
        if self._reaper is None:
            self._reaper = gevent.spawn(self._reap)

    def expire(self, now: float | None = None) -> None:
        """Close every connection idle for ``idle_expiry`` or longer."""
        cutoff = (time.monotonic() if now is None else now) - self.idle_expiry
        for key in list(self._idle):
            stack = self._idle[key]
            fresh = [entry for entry in stack if entry[1] > cutoff]
            for entry in stack:
                if entry[1] <= cutoff:
                    entry[0].close()
            self._count -= len(stack) - len(fresh)
            if fresh:
                self._idle[key] = fresh
            else:
                del self._idle[key]

    def close(self) -> None:
        """Close every idle connection and keep no more (the server stops)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.kill(block=False)
            self._reaper = None
        for stack in self._idle.values():
            for conn, _ in stack:
                conn.close()
        self._idle.clear()
        self._count = 0

    def _reap(self) -> None:
        try:
            while self._count:
                gevent.sleep(max(self.idle_expiry / 4, 0.05))
                self.expire()
        finally:
            self._reaper = None


def _looks_open(conn: OriginConn) -> bool:
    """No EOF and no unasked bytes waiting. A connection whose ReadWaiter is still
    started has had nothing arrive since its last response, as of the event loop's last
    poll (a byte or a FIN would have fired it with nobody waiting, which stops it): what
    Squid knows from the read handler it keeps on idle connections. Else a peek that
    does not block says; a TLS socket (through an https:// upstream) cannot be peeked
    and is assumed open. Whatever arrives after that is what the retry of an idempotent
    request on a new connection is for."""
    if conn.reader is not None and conn.reader.started:
        return True
    try:
        kernel = raw_socket(conn.sock)
    except TypeError:
        return True
    try:
        kernel.recv(1, _PEEK_NOW)  # EOF or bytes: unusable
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
