"""UDP services over one bound socket (``--udp-forward``, ``--ss`` and ``--tproxy`` UDP) and
their bounded table of mappings that expire when idle.

A mapping is one client's (or one client and destination's) outbound state. The table's clock
ticks every idle/4 seconds; each datagram stamps its mapping with the tick (no clock read per
datagram), a reaper ends mappings idle for four ticks, and a full table evicts its idlest.
Ending a mapping closes it, then counts and logs its session. While it lives, its session is
one of the server's open sessions (``/sessions``; ``DELETE`` ends the mapping).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import gevent

from gproxy.codec import socks5
from gproxy.core.context import Metrics
from gproxy.core.errors import Outcome
from gproxy.core.log import AccessLog, logger
from gproxy.core.per_hub import PerHub
from gproxy.core.session import Session

#: reaper ticks per idle timeout
TICKS = 4
#: the largest datagram plus the largest SOCKS5 UDP header, with room to spare
BUFFER_SIZE = 65535 + socks5.MAX_UDP_HEADER
#: mappings one service keeps before evicting the idlest
MAX_MAPPINGS = 4096
#: without --idle-timeout, mappings still expire after this long
DEFAULT_MAPPING_IDLE = 300.0
#: seconds between two warnings of one service (under EMFILE every datagram fails)
WARN_EVERY = 10.0

#: one receive buffer per hub; a loop never yields while it holds a datagram there
_BUFFERS: PerHub[memoryview] = PerHub(lambda hub: memoryview(bytearray(BUFFER_SIZE)))
hub_buffer = _BUFFERS.get

Sockaddr = tuple[object, ...]


_Read = TypeVar("_Read")


def received(sock: socket.socket, buf: memoryview) -> Iterator[tuple[int, Any]]:
    """(size, source) of each datagram ``sock`` receives into ``buf`` (which the caller must be
    done with before asking for the next); ends once the socket is closed. An error queued on
    the socket (an ICMP error for an earlier send: port or host unreachable, prohibited...)
    is not fatal: skipped."""
    return _until_closed(sock, sock.recvfrom_into, buf)


def received_sizes(sock: socket.socket, buf: memoryview) -> Iterator[int]:
    """The size of each datagram a connected ``sock`` receives into ``buf``, as received()
    gives them (the source is the one it is connected to)."""
    return _until_closed(sock, sock.recv_into, buf)


def _until_closed(sock: socket.socket, read: Callable[[memoryview], _Read], buf: memoryview) -> Iterator[_Read]:
    while True:
        try:
            yield read(buf)
        except OSError:
            if sock.fileno() < 0:
                return


class Mapping(Protocol):
    session: Session
    last: int  # the table's clock at its latest datagram

    def close(self) -> None:
        """Close its sockets and stop its loops, without yielding."""


class SessionSink(Protocol):
    """Where sessions are listed while open, and go when they end (the Proxy)."""

    metrics: Metrics
    access_log: AccessLog | None

    def open_detached(self, session: Session, end: Callable[[Outcome], None]) -> None:
        """List ``session`` (it has no greenlet of its own) until close_detached(); ``end``
        ends it (--admin's DELETE)."""

    def close_detached(self, session: Session) -> None:
        """``session`` is over: no longer listed."""


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
        self.sink.open_detached(mapping.session, lambda outcome: self._end_if(key, mapping, outcome))
        return mapping

    def _end_if(self, key: K, mapping: M, outcome: Outcome) -> None:
        """end(), if ``key`` still maps to ``mapping`` (not a later one for the same key)."""
        if self.get(key) is mapping:
            self.end(key, outcome)

    def end(self, key: K, outcome: Outcome) -> None:
        """Remove, close and log one mapping (nothing if it is gone already)."""
        mapping = self.pop(key, None)
        if mapping is None:
            return
        mapping.close()
        mapping.session.outcome = outcome
        self.sink.close_detached(mapping.session)
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


class UdpService(Generic[K, M]):
    """A Service over one bound UDP socket whose clients get mappings: ``start()`` spawns the
    receive loop and the reaper, ``stop()`` kills them and ends every mapping. A subclass
    handles each datagram in ``datagram()`` (or receives its own way in ``receive_loop()``)."""

    #: names the service in warnings
    label = "udp"

    def __init__(self, sink: SessionSink, sock: socket.socket, idle_timeout: float) -> None:
        self.sock = sock
        self.mappings: MappingTable[K, M] = MappingTable(idle_timeout or DEFAULT_MAPPING_IDLE, MAX_MAPPINGS, sink)
        self._loops: list[gevent.Greenlet] = []
        self._last_warning = -WARN_EVERY

    def start(self) -> None:
        self._loops = [gevent.spawn(self.receive_loop), gevent.spawn(self.mappings.reap)]

    def stop(self) -> None:
        gevent.killall(self._loops)
        self.mappings.end_all(Outcome.SHUTDOWN)

    def receive_loop(self) -> None:
        """Each datagram into the hub's buffer, then to ``datagram``; returns once the socket closes."""
        buf = hub_buffer()
        datagram = self.datagram
        for n, source in received(self.sock, buf):
            datagram(buf, n, source)

    def datagram(self, buf: memoryview, n: int, source: Sockaddr) -> None:
        """Relay ``buf[:n]`` from ``source``; copy it before anything that may yield."""
        raise NotImplementedError

    def warn(self, what: object) -> None:
        """One warning per WARN_EVERY seconds: when a route fails, every datagram fails."""
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY:
            self._last_warning = now
            logger.warning("%s: %s", self.label, what)
