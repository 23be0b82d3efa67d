"""What a front end needs to serve one listener's clients.

A Context is built per listener by the server; front ends only read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gproxy.core.access import ClientRules, Users
from gproxy.core.config import Config, ListenerSpec
from gproxy.core.dial import Dialer, Resolver, system_resolve
from gproxy.core.errors import Outcome
from gproxy.core.limits import RateLimits
from gproxy.core.origin_pool import OriginPool
from gproxy.core.outbound import Outbound
from gproxy.core.relay import Relay
from gproxy.core.rules import DestinationPolicy
from gproxy.core.session import Session

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

    def auth_challenged(self, proto: str) -> None:
        """A client asked without credentials and got the challenge (HTTP 407): not a failure."""

    def connection_refused(self, listener: str, reason: Outcome) -> None:
        """A client was closed at once: ``client_denied``, ``max_conns``, ``max_conns_per_ip``, ``out_of_fds``."""

    def udp_datagram(self, listener: str, direction: str, dropped: str | None = None) -> None:
        """A UDP datagram ``up`` (from the client) or ``down``: relayed, or ``dropped`` and why."""

    def upstream_state(self, upstream: str, up: bool) -> None:
        """An upstream (password redacted) is up (it answered) or down (it failed itself)."""

    def upstream_dial(self, upstream: str, result: str) -> None:
        """A dial through an upstream: ``ok``, ``failed`` (the upstream itself) or ``refused``
        (it reported that the destination failed)."""


class TunnelRegistry(Protocol):
    """Owns the tunnels that outlive their session's greenlet (gproxy.server.tunnels.Tunnels).

    The front end's greenlet hands a running Relay over with add() and ends; the
    tunnel's end, run in a greenlet of its own with the session's record
    complete, calls ended().
    """

    def add(self, session: Session, relay: Relay) -> None:
        """Own ``relay`` (the tunnel of ``session``) until ended(session)."""

    def ended(self, session: Session) -> None:
        """The tunnel is done and its sockets are closed: end the session (count, log)."""


class SessionOwner(Protocol):
    """The server, as the HTTP front end needs it for each request of a kept-alive connection."""

    def log_request(self, session: Session) -> None:
        """One request is done: write its access-log line."""

    def latest(self, ctx: Context) -> Context:
        """The listener's context as of now (rules change on SIGHUP): for each new request."""

    #: a stop has begun: a kept-alive connection closes instead of waiting for its next request
    draining: bool
    #: the greenlets of kept-alive connections waiting for their next request: a stop ends
    #: each wait with ClientClosed, as if the client had gone
    between_requests: set[Any]


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
    #: the server's registry of tunnels that outlive their session's greenlet (see run_tunnel())
    tunnels: TunnelRegistry | None = None
    #: the server's per-request services for kept-alive HTTP connections
    owner: SessionOwner | None = None
    #: the server's rate-limit buckets (--rate, per-user ``rate``); None: no limits at all
    rates: RateLimits | None = None
    #: idle keep-alive connections to HTTP origins, shared by the server's listeners
    origin_pool: OriginPool | None = None
