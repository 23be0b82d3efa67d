"""Happy Eyeballs (RFC 8305): race connection attempts, one more every 250 ms.

Addresses are interleaved by family (IPv6 first when the answer has both). The
first attempt starts at once; while none has connected or failed, another one
starts every ``ATTEMPT_DELAY``; a failure starts the next one at once. The first
to connect wins, the others are closed. Addresses still being resolved (the A
answer after a quicker AAAA one, RFC 8305 section 3) join the race when they
come; until then the race waits for them even if every attempt so far failed.
Each attempt is the gevent socket callers get, made first; its kernel socket
connects and the race waits on the socket's own write watcher (core/_gevent) and
loop timers, with no greenlet per attempt. A single address (an IP literal, a
one-answer name) has nothing to race: one connect and one wait, with none of the
race's objects. A connect the kernel completes within the call (loopback, this
host's services) is seen at once and waits for nothing.
"""

from __future__ import annotations

import _socket
import errno
import os
import socket
from collections.abc import Callable
from typing import Any

from gevent import socket as gsocket
from gevent.event import AsyncResult
from gevent.hub import Waiter, get_hub

from gproxy.core._gevent import raw_socket, write_watcher

#: RFC 8305 section 5: the recommended Connection Attempt Delay
ATTEMPT_DELAY = 0.25
_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY})

#: (family, sockaddr) pairs, as getaddrinfo gives them
Addresses = list[tuple[int, tuple[object, ...]]]
#: called on every new socket before it connects (--mark, --outgoing)
Prepare = Callable[[_socket.socket], None]


def interleave(addrs: Addresses) -> Addresses:
    """RFC 8305 section 4: alternate the families, IPv6 first when there are both."""
    v6 = [a for a in addrs if a[0] == socket.AF_INET6]
    v4 = [a for a in addrs if a[0] != socket.AF_INET6]
    if not v6 or not v4:
        return list(addrs)
    out: Addresses = []
    for index in range(max(len(v6), len(v4))):
        out.extend(family[index] for family in (v6, v4) if index < len(family))
    return out


class _Attempt:
    """One connect() in flight: its gevent socket and that socket's own write watcher."""

    __slots__ = ("race", "sock", "watcher")

    def __init__(self, race: _Race, sock: socket.socket) -> None:
        self.race = race
        self.sock = sock
        self.watcher: Any = None

    def on_writable(self) -> None:
        self.race.settled(self)


class _Race:
    """One dial: the attempts in flight, the next addresses, and the waiting caller."""

    __slots__ = ("addrs", "later", "prepare", "loop", "waiter", "pending", "errors", "winner", "done", "timed_out")

    def __init__(self, addrs: Addresses, prepare: Prepare | None, later: AsyncResult | None = None) -> None:
        self.addrs = addrs
        self.later = later  # more addresses to come (their value: Addresses), or None
        self.prepare = prepare
        self.loop = get_hub().loop
        self.waiter: Waiter[None] = Waiter()
        self.pending: list[_Attempt] = []
        self.errors: list[OSError] = []
        self.winner: _Attempt | None = None
        self.done = False
        self.timed_out = False

    def run(self, timeout: float) -> socket.socket:
        """The connected socket; raises the last OSError, or TimeoutError after ``timeout``."""
        if self.later is not None:
            self.later.rawlink(self.add_later)  # called from the loop, at once if it is ready
        self.start_next()
        if not self.done:
            # every address already tried (the others failed at once): no stagger timer
            more = self.addrs or self.later is not None
            stagger = self.loop.timer(ATTEMPT_DELAY, ATTEMPT_DELAY) if more else None
            deadline = self.loop.timer(timeout)
            if stagger is not None:
                stagger.start(self.start_next)
            deadline.start(self.time_out)
            try:
                self.waiter.get()
            finally:
                if stagger is not None:
                    stagger.close()
                deadline.close()
                if not self.done:  # killed while waiting
                    self.finish()
        winner = self.winner
        if winner is None:
            if self.timed_out or not self.errors:
                raise TimeoutError(errno.ETIMEDOUT, "connect timed out")
            raise self.errors[-1]
        return _connected(winner.sock)

    def start_next(self) -> None:
        """Start one more attempt (from the stagger timer, or at once after a failure)."""
        while self.addrs and not self.done:
            family, sockaddr = self.addrs.pop(0)
            try:
                sock, err = _start_connect(family, sockaddr, self.prepare)
            except OSError as exc:  # EMFILE, EPERM from prepare, a bad address: next one
                self.errors.append(exc)
                continue
            attempt = _Attempt(self, sock)
            if err == 0:
                self.win(attempt)
                return
            if err not in _IN_PROGRESS:
                sock.close()
                self.errors.append(OSError(err, os.strerror(err)))
                continue
            attempt.watcher = write_watcher(sock)
            attempt.watcher.start(attempt.on_writable)
            self.pending.append(attempt)
            return
        if not self.addrs and not self.pending and self.later is None and not self.done:
            self.finish()

    def add_later(self, later: AsyncResult) -> None:
        """The addresses still being resolved are in (or failed): they join the race, at once
        when no attempt is in flight, else at the next stagger."""
        self.later = None
        if self.done:
            return
        if later.successful():
            self.addrs.extend(later.value)
        elif isinstance(later.exception, OSError):  # a connect error, if any, stays the one raised
            self.errors.insert(0, later.exception)
        if not self.pending:
            self.start_next()

    def settled(self, attempt: _Attempt) -> None:
        """An attempt's connect() has finished, one way or the other."""
        attempt.watcher.stop()  # the socket's own: it closes it
        attempt.watcher = None
        self.pending.remove(attempt)
        err = raw_socket(attempt.sock).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if not err:
            self.win(attempt)
            return
        attempt.sock.close()
        self.errors.append(OSError(err, os.strerror(err)))
        self.start_next()  # a failure does not wait for the stagger

    def time_out(self) -> None:
        self.timed_out = True
        self.finish()

    def win(self, attempt: _Attempt) -> None:
        self.winner = attempt
        self.finish()

    def finish(self) -> None:
        """Close every attempt but the winner and wake the caller (once)."""
        if self.done:
            return
        self.done = True
        if self.later is not None:
            self.later.unlink(self.add_later)
            self.later = None
        for other in self.pending:
            other.watcher.stop()  # first: gevent's close() would try to wake whoever it started for
            other.sock.close()
        self.pending.clear()
        self.waiter.switch(None)


def race(
    addrs: Addresses, timeout: float, prepare: Prepare | None = None, later: AsyncResult | None = None
) -> socket.socket:
    """Connect to the first of ``addrs`` (already interleaved) that answers, within ``timeout``;
    ``later``, when given, brings more addresses (its value) that join the race when they come.

    Raises:
        OSError: the last attempt's error when every one failed; TimeoutError when time ran out.
    """
    if len(addrs) == 1 and later is None:
        return _connect_one(*addrs[0], timeout, prepare)
    return _Race(list(addrs), prepare, later).run(timeout)


def _connect_one(family: int, sockaddr: tuple[object, ...], timeout: float, prepare: Prepare | None) -> socket.socket:
    """One address (a literal, or a single answer): nothing to race, so none of the race's
    objects: one non-blocking connect(), a wait on the socket's own write watcher, one
    SO_ERROR read."""
    sock, err = _start_connect(family, sockaddr, prepare)
    try:
        if err in _IN_PROGRESS:
            _wait_writable(write_watcher(sock), timeout)
            err = raw_socket(sock).getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        return _connected(sock)
    except BaseException:
        sock.close()
        raise


def _start_connect(family: int, sockaddr: tuple[object, ...], prepare: Prepare | None) -> tuple[socket.socket, int]:
    """The gevent socket callers get, made first (no second object for the descriptor later),
    its kernel socket prepared and its connect() started: (socket, errno), errno 0
    (connected), in progress, or the failure. Raises OSError (the socket closed) when it
    cannot be made, prepared (--outgoing, --mark) or aimed at ``sockaddr``."""
    sock = gsocket.socket(family, socket.SOCK_STREAM)
    try:
        raw = raw_socket(sock)
        if prepare is not None:
            prepare(raw)
        err = raw.connect_ex(sockaddr)
        if err in _IN_PROGRESS:
            # A connect the kernel completes within the call (loopback, this host's services)
            # needs no wait on the loop: asking again says 0 (or EISCONN) when it is up, gives its
            # failure when it was refused, and EALREADY while it is still on its way.
            err = raw.connect_ex(sockaddr)
            if err == errno.EISCONN:
                err = 0
        return sock, err
    except BaseException:
        sock.close()
        raise


def _connected(sock: socket.socket) -> socket.socket:
    """The connected socket, with TCP_NODELAY (on the kernel socket: gevent's setsockopt is Python)."""
    raw_socket(sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _wait_writable(writable: Any, timeout: float) -> None:
    """Sleep until the ``writable`` watcher fires (its socket's connect() is done) or
    ``timeout`` passes (TimeoutError): the watcher, a loop timer and a Waiter, none of
    gevent.Timeout's Python."""
    waiter: Waiter[bool] = Waiter()
    deadline = get_hub().loop.timer(timeout)
    writable.start(waiter.switch, True)
    deadline.start(waiter.switch, False)
    try:
        connected = waiter.get()
    finally:
        writable.stop()
        deadline.close()
    if not connected:
        raise TimeoutError(errno.ETIMEDOUT, "connect timed out")
