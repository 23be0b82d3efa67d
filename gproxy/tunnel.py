"""The part of CONNECT that every front end shares: check, dial, relay.

Front ends do their own handshake and their own replies; this module turns
a destination into a connected socket and then relays it to the client.
"""

from __future__ import annotations

import socket

from gproxy.addr import Address, IPAddress
from gproxy.context import Context
from gproxy.relay import relay
from gproxy.session import Session
from gproxy.stream import Conn


def open_upstream(ctx: Context, dest: Address, user: str | None = None) -> socket.socket:
    """Check the destination rules (with ``user``'s own, once authenticated) and
    connect; every address a name resolves to is checked too. Raises Denied or DialError."""
    check_resolved = ctx.destinations.for_user(user).check(dest)
    if dest.ip is not None:  # a literal resolves to itself, and check() has just checked it
        check_resolved = _checked
    return ctx.dialer.dial(dest, ctx.config.connect_timeout, check=check_resolved)


def _checked(ip: IPAddress, port: int) -> None:
    """The per-address check for a literal destination that check() has passed."""


def run_tunnel(conn: Conn, upstream: socket.socket, ctx: Context, session: Session) -> None:
    """Relay client <-> upstream until both sides are done; records bytes and outcome.

    Bytes the client sent early (still in ``conn``'s buffer) go first.
    """
    stats = relay(
        conn.sock,
        upstream,
        idle_timeout=ctx.config.idle_timeout,
        first_up=conn.take_buffered(),
    )
    session.up += stats.up
    session.down += stats.down
    session.outcome = stats.outcome
