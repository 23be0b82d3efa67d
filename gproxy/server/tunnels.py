"""Tunnels: the one owner of every tunnel that outlives its session's greenlet.

Like a gevent Pool for things that are not greenlets: add, count, drain with
a deadline, kill. Implements gproxy.core.context.TunnelRegistry.
"""

from __future__ import annotations

from collections.abc import Callable

from gevent.event import Event

from gproxy.core.errors import Outcome
from gproxy.core.log import logger
from gproxy.core.relay import Relay
from gproxy.core.session import Session


class Tunnels:
    """Running tunnels by session; ``on_end(session)`` counts and logs each one as it ends.

    ``on_end`` runs in the tunnel's own short greenlet (never in an event-loop
    callback), so it may yield: a Metrics or a log handler that does I/O is fine.
    """

    def __init__(self, on_end: Callable[[Session], object]) -> None:
        self._on_end = on_end
        self._live: dict[int, tuple[Session, Relay]] = {}  # id(session): sessions are not hashable
        self._empty = Event()
        self._empty.set()

    def add(self, session: Session, relay: Relay) -> None:
        """Own ``relay``, the running tunnel of ``session``, until ended(session)."""
        self._live[id(session)] = (session, relay)
        session.live = relay.stats  # /sessions reads the relay's own per-chunk counters
        self._empty.clear()

    def ended(self, session: Session) -> None:
        """The tunnel is done, its sockets closed and its record complete: end the session."""
        session.live = None  # its bytes are in session.up/down now (recorded just before, no yield between)
        try:
            self._on_end(session)
        except Exception:  # one line, not the hub's traceback printer: the other tunnels go on
            logger.exception("%s: ending the session failed", session.client)
        finally:
            self._live.pop(id(session), None)
            if not self._live:
                self._empty.set()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, session: object) -> bool:
        return id(session) in self._live

    def abort(self, session: Session, outcome: Outcome) -> bool:
        """End ``session``'s tunnel now with ``outcome`` (--admin's DELETE); False if it has none."""
        entry = self._live.get(id(session))
        if entry is None:
            return False
        entry[1].abort(outcome)
        return True

    def drain(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for every tunnel to end; True if none is left."""
        return bool(self._empty.wait(timeout))

    def kill(self, outcome: Outcome = Outcome.SHUTDOWN, timeout: float = 1.0) -> bool:
        """End every tunnel now with ``outcome`` (their first outcome is kept if they had one)
        and wait up to ``timeout`` seconds for their records; True if none is left."""
        for _, relay in list(self._live.values()):
            relay.abort(outcome)
        return self.drain(timeout)
