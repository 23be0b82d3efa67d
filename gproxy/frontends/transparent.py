"""``--redirect`` and ``--tproxy`` (TCP): relay a connection that a firewall sent here
to the destination it was meant for, through the usual outbound path.

``--redirect`` (nftables ``redirect``, iptables ``REDIRECT``, DNAT) reads the original
destination from conntrack (``SO_ORIGINAL_DST`` / ``IP6T_SO_ORIGINAL_DST``);
``--tproxy`` (TPROXY with ``IP_TRANSPARENT``) finds it as the accepted socket's own
address. A connection made straight to the port has no other destination: closed.
"""

from __future__ import annotations

import socket
import struct

from gproxy.core.addr import Address, from_sockaddr
from gproxy.core.context import Context
from gproxy.core.errors import Denied, Outcome
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import open_upstream, run_tunnel

#: linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h: both are 80
SO_ORIGINAL_DST = 80
IP6T_SO_ORIGINAL_DST = 80
_SOCKADDR_IN6 = 28


def parse_sockaddr(raw: bytes) -> Address:
    """A kernel ``sockaddr_in`` or ``sockaddr_in6`` (as getsockopt returns it) as an Address.

    Raises:
        ValueError: not an AF_INET / AF_INET6 socket address.
    """
    if len(raw) < 8:
        raise ValueError("socket address too short")
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET:
        return from_sockaddr((socket.inet_ntop(socket.AF_INET, raw[4:8]), port))
    if family == socket.AF_INET6 and len(raw) >= 24:
        return from_sockaddr((socket.inet_ntop(socket.AF_INET6, raw[8:24]), port))
    raise ValueError(f"socket address family {family} is not IPv4 or IPv6")


def redirected_destination(sock: socket.socket) -> Address | None:
    """Where a redirected (NATed) connection was going; None when it was not redirected
    (conntrack does not know it, or it names this very socket)."""
    try:
        if sock.family == socket.AF_INET6:
            raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6)
        else:
            raw = sock.getsockopt(socket.IPPROTO_IP, SO_ORIGINAL_DST, 16)
        dest = parse_sockaddr(raw)
    except (OSError, ValueError):
        return None
    local = from_sockaddr(sock.getsockname())
    return None if (dest.host, dest.port) == (local.host, local.port) else dest


def _relay_to(conn: Conn, ctx: Context, session: Session, dest: Address | None) -> None:
    """Dial ``dest`` and relay; None (not diverted here) is refused as not_redirected."""
    session.cmd = "connect"
    if dest is None:
        raise Denied("not redirected: the connection came straight to the port", reason=Outcome.NOT_REDIRECTED)
    session.dest = str(dest)
    upstream = open_upstream(ctx, dest)  # destination rules, upstreams, --outgoing
    run_tunnel(conn, upstream, ctx, session)  # closes upstream


def serve_redirect(conn: Conn, ctx: Context, session: Session) -> None:
    """A connection that nftables/iptables redirected (or DNATed) to this listener."""
    session.proto = "redirect"
    _relay_to(conn, ctx, session, redirected_destination(conn.sock))


def serve_tproxy(conn: Conn, ctx: Context, session: Session) -> None:
    """A connection that TPROXY delivered here: its local address is where it was going."""
    session.proto = "tproxy"
    dest = from_sockaddr(conn.sock.getsockname())
    ip = dest.ip
    # its own local address is one of gproxy's listeners: it came straight to the port
    _relay_to(conn, ctx, session, None if ip is not None and ctx.destinations.is_own(ip, dest.port) else dest)
