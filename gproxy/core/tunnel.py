"""The part of CONNECT that every front end shares: check, dial, relay.

Front ends do their own handshake and their own replies; this module turns
a destination into a connected socket and then relays it to the client.
"""

from __future__ import annotations

import socket

from gproxy.core.addr import Address, IPAddress
from gproxy.core.context import Context
from gproxy.core.relay import RelayStats, relay, start_relay
from gproxy.core.session import Session, SessionOwner
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


def run_tunnel(conn: Conn, upstream: socket.socket, ctx: Context, session: Session, reply: bytes = b"") -> None:
    """Send ``reply`` (the front end's success reply), then relay client <-> upstream
    until both sides are done; records bytes and outcome, and closes ``upstream``.

    Bytes the client sent early (still in ``conn``'s buffer) go first. When the
    server lets the session outlive its greenlet (``ctx.owner``), the
    sockets are plain and there are no early bytes, this returns as soon as
    the relay runs on the event loop alone: the record is completed and the
    upstream closed when the tunnel ends.
    """
    try:
        if reply:
            conn.sendall(reply)
        first_up = conn.take_buffered()
        idle_timeout = ctx.config.idle_timeout
        owner = ctx.owner
        if owner is not None and not first_up:
            ended = _Ended(owner, session, conn, upstream)
            abort = start_relay(conn.sock, upstream, idle_timeout=idle_timeout, on_done=ended)
            if abort is not None:
                owner.detach(conn, abort)
                return
        stats = relay(conn.sock, upstream, idle_timeout=idle_timeout, first_up=first_up)
    except BaseException:
        upstream.close()
        raise
    _record(session, stats)
    upstream.close()


def _record(session: Session, stats: RelayStats) -> None:
    session.up += stats.up
    session.down += stats.down
    session.outcome = stats.outcome


class _Ended:
    """A detached tunnel's end: record, close the upstream, hand the session back to its owner."""

    __slots__ = ("owner", "session", "conn", "upstream")

    def __init__(self, owner: SessionOwner, session: Session, conn: Conn, upstream: socket.socket) -> None:
        self.owner = owner
        self.session = session
        self.conn = conn
        self.upstream = upstream

    def __call__(self, stats: RelayStats) -> None:
        _record(self.session, stats)
        self.upstream.close()
        self.owner.end_detached(self.session, self.conn)
