"""What a front end needs to serve one listener's clients.

A Context is built per listener by the server; front ends only read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gproxy.core.access import ClientRules, Users
from gproxy.core.config import Config, ListenerSpec
from gproxy.core.dial import Dialer, Resolver, system_resolve
from gproxy.core.outbound import Outbound
from gproxy.core.rules import DestinationPolicy
from gproxy.core.session import Session, SessionOwner

if TYPE_CHECKING:
    import ssl  # imported lazily (gproxy.server.tls): gevent patches it at start


class Metrics:
    """Observer of sessions; this base counts nothing (see metrics.py)."""

    def session_opened(self, listener: str) -> None:
        """A client connection was accepted on a listener of this kind."""

    def session_closed(self, session: Session) -> None:
        """A session ended; its record has bytes and outcome."""

    def session_failed(self, session: Session, exc: BaseException) -> None:
        """A session ended with a gproxy error (before session_closed)."""

    def connection_refused(self, listener: str, reason: str) -> None:
        """A client was closed at once: ``client_denied``, ``max_conns``, ``max_conns_per_ip``, ``out_of_fds``."""

    def udp_datagram(self, listener: str, direction: str, dropped: str | None = None) -> None:
        """A UDP datagram ``up`` (from the client) or ``down``: relayed, or ``dropped`` and why."""

    def upstream_state(self, upstream: str, up: bool) -> None:
        """An upstream (password redacted) is up (it answered) or down (it failed itself)."""

    def upstream_dial(self, upstream: str, result: str) -> None:
        """A dial through an upstream: ``ok``, ``failed`` (the upstream itself) or ``refused``
        (it reported that the destination failed)."""


@dataclass
class Context:
    config: Config
    listener: ListenerSpec
    users: Users
    clients: ClientRules
    destinations: DestinationPolicy
    dialer: Dialer
    metrics: Metrics
    resolver: Resolver = system_resolve  # UDP resolves names itself
    outbound: Outbound = Outbound()  # --outgoing and --mark, for UDP relay sockets
    tls: ssl.SSLContext | None = None  # --https / --socks-tls listeners
    #: a server that lets a tunnel outlive its session's greenlet (see run_tunnel())
    owner: SessionOwner | None = None
