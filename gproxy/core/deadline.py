"""Handshake deadlines: ``with handshake_deadline(ctx, session):`` bounds what a client must send.

Used by every front end; a bare libev timer that throws HandshakeTimeout into the
current greenlet. Imports nothing above core.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gevent.hub import get_hub, getcurrent

from gproxy.core.errors import HandshakeTimeout

if TYPE_CHECKING:
    from gproxy.core.context import Context
    from gproxy.core.session import Session


class Deadline:
    """``with Deadline(seconds):`` raises HandshakeTimeout in this greenlet once
    ``seconds`` have passed; None: no limit.

    What ``gevent.Timeout(seconds, HandshakeTimeout)`` does, on a bare timer
    (a fifth of the cost, paid once per connection).
    """

    __slots__ = ("seconds", "timer")

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.timer: Any = None  # a libev timer watcher

    def __enter__(self) -> Deadline:
        if self.seconds is not None:
            self.timer = get_hub().loop.timer(self.seconds)
            self.timer.start(getcurrent().throw, HandshakeTimeout)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None


def handshake_deadline(ctx: Context, session: Session | None = None) -> Deadline:
    """``with handshake_deadline(ctx, session):`` bounds everything the client must send.

    With the session, the clock started when the connection was accepted, so a
    front end that sniffs a first byte and then reads the rest under a second
    ``with`` does not give a slow client a fresh timeout.
    """
    timeout = ctx.config.handshake_timeout
    if session is not None:
        timeout = max(timeout - (time.monotonic() - session.started), 0.001)
    return Deadline(timeout)
