"""What a front end needs to serve one listener's clients.

A Context is built per listener by the server; front ends only read it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gproxy.access import ClientRules, Users
from gproxy.config import Config, ListenerSpec
from gproxy.dial import Dialer, Resolver, system_resolve
from gproxy.rules import DestinationPolicy
from gproxy.session import Session


class Metrics:
    """Observer of sessions; this base counts nothing (see metrics.py)."""

    def session_opened(self, listener: str) -> None:
        """A client connection was accepted on a listener of this kind."""

    def session_closed(self, session: Session) -> None:
        """A session ended; its record has bytes and outcome."""

    def udp_datagram(self, listener: str, direction: str) -> None:
        """A UDP datagram was relayed, ``up`` (from the client) or ``down``."""


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
