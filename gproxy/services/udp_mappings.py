"""A bounded table of UDP mappings that expire when idle (``--udp-forward``, ``--tproxy`` UDP).

A mapping is one client's (or one client and destination's) outbound state. The table's clock
ticks every idle/4 seconds; each datagram stamps its mapping with the tick (no clock read per
datagram), a reaper ends mappings idle for four ticks, and a full table evicts its idlest.
Ending a mapping closes it, then counts and logs its session.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol, TypeVar

import gevent

from gproxy.core.context import Metrics
from gproxy.core.errors import Outcome
from gproxy.core.log import AccessLog
from gproxy.core.session import Session

#: reaper ticks per idle timeout
TICKS = 4


class Mapping(Protocol):
    session: Session
    last: int  # the table's clock at its latest datagram

    def close(self) -> None:
        """Close its sockets and stop its loops, without yielding."""


class SessionSink(Protocol):
    """Where ended sessions go (the Proxy)."""

    metrics: Metrics
    access_log: AccessLog | None


K = TypeVar("K", bound=Hashable)
M = TypeVar("M", bound=Mapping)


class MappingTable(dict[K, M]):
    """key -> mapping, at most ``limit`` of them; ``reap()`` is the reaper's loop."""

    def __init__(self, idle: float, limit: int, sink: SessionSink) -> None:
        super().__init__()
        self.idle = idle
        self.limit = limit
        self.sink = sink
        self.clock = 0

    def add(self, key: K, mapping: M) -> M:
        """Insert ``mapping``; when the table is full, the idlest one ends first (``evicted``)."""
        if self and len(self) >= self.limit:
            self.end(min(self, key=lambda k: self[k].last), Outcome.EVICTED)
        self[key] = mapping
        return mapping

    def end(self, key: K, outcome: Outcome) -> None:
        """Remove, close and log one mapping (nothing if it is gone already)."""
        mapping = self.pop(key, None)
        if mapping is None:
            return
        mapping.close()
        mapping.session.outcome = outcome
        self.sink.metrics.session_closed(mapping.session)
        if self.sink.access_log is not None:
            self.sink.access_log.write(mapping.session.logfmt())

    def end_all(self, outcome: Outcome) -> None:
        for key in list(self):
            self.end(key, outcome)

    def reap(self) -> None:
        """Forever: tick the clock, end the mappings with no datagram for the idle timeout (``ok``)."""
        while True:
            gevent.sleep(self.idle / TICKS)
            self.clock += 1
            for key, mapping in list(self.items()):
                if self.clock - mapping.last > TICKS:
                    self.end(key, Outcome.OK)
