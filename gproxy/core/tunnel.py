"""The part of CONNECT that every front end shares: check, dial, relay.

Front ends do their own handshake and their own replies; this module turns
a destination into a connected socket and then relays it to the client.
"""

from __future__ import annotations

import socket

from gproxy.core.addr import Address, IPAddress
from gproxy.core.context import Context, TunnelRegistry
from gproxy.core.relay import Limits, RelayStats, relay, start_relay
from gproxy.core.session import Session
from gproxy.core.stream import Conn


def open_upstream(ctx: Context, dest: Address, user: str | None = None) -> socket.socket:
    """Check the destination rules (with ``user``'s own, once authenticated) and
    connect; every address a name resolves to is checked too. Raises Denied or DialError."""
    check_resolved = ctx.destinations.for_user(user).check(dest)
    if dest.ip is not None:  # a literal resolves to itself, and check() has just checked it
        check_resolved = _checked
    return ctx.dialer.dial(dest, ctx.config.connect_timeout, check=check_resolved)


def _checked(ip: IPAddress, port: int) -> None:
    """The per-address check for a literal destination that check() has passed."""


def rate_limits(ctx: Context, session: Session) -> Limits:
    """The (upload, download) buckets of the session's user (their own ``rate``, else
    --rate), or of its client IP when it has no user; None when no limit applies."""
    rates = ctx.rates
    if rates is None:
        return None
    user = session.user
    rate = ctx.config.rate
    if user is None:  # no limit (the usual case): nothing built per tunnel
        return rates.buckets(f"ip {session.client.host}", rate) if rate else None
    own = ctx.users.settings(user).rate
    return rates.buckets(f"user {user}", rate if own is None else own)


def run_tunnel(conn: Conn, upstream: socket.socket, ctx: Context, session: Session, reply: bytes = b"") -> None:
    """Send ``reply`` (the front end's success reply), then relay client <-> upstream
    until both sides are done; records bytes and outcome. The relay takes both
    sockets over and closes them (the caller's ``upstream`` and ``conn.sock`` are
    then detached or closed).

    Bytes the client sent early (still in ``conn``'s buffer) go first. When the
    server has a registry for tunnels (``ctx.tunnels``) and engine_for() picks the
    event-loop engine, the tunnel is handed over to it and this returns at once:
    the session's greenlet ends, and the registry completes the record when the
    tunnel ends. Otherwise (TLS, or no registry) this relays until the end; a kill
    (admin, drain) still records the bytes moved, the caller the outcome.
    """
    live: RelayStats | None = None
    try:
        if reply:
            conn.sendall(reply)
        first_up = conn.take_buffered()
        idle_timeout = ctx.config.idle_timeout
        limits = rate_limits(ctx, session)
        tunnels = ctx.tunnels
        if tunnels is not None:
            ended = _Ended(tunnels, session)
            handed = start_relay(
                conn.sock, upstream, idle_timeout=idle_timeout, on_done=ended, first_up=first_up, limits=limits
            )
            if handed is not None:  # engine_for() picked the event-loop engine
                tunnels.add(session, handed)
                return
        live = session.live = RelayStats()  # counted per chunk by the relay: /sessions reads it as it runs
        stats = relay(conn.sock, upstream, idle_timeout=idle_timeout, first_up=first_up, limits=limits, stats=live)
    except BaseException:
        if live is not None:  # ended from outside (admin, drain): what it moved still counts
            session.up += live.up
            session.down += live.down
        session.live = None
        upstream.close()
        raise
    _record(session, stats)
    session.live = None


def _record(session: Session, stats: RelayStats) -> None:
    session.up += stats.up
    session.down += stats.down
    session.outcome = stats.outcome


class _Ended:
    """A handed-over tunnel's end (in a greenlet of its own): record, then tell the registry."""

    __slots__ = ("tunnels", "session")

    def __init__(self, tunnels: TunnelRegistry, session: Session) -> None:
        self.tunnels = tunnels
        self.session = session

    def __call__(self, stats: RelayStats) -> None:
        _record(self.session, stats)
        self.tunnels.ended(self.session)
