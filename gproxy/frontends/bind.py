"""SOCKS5 BIND (RFC 1928 section 4): accept one inbound connection for the client.

First reply: the address the remote side should connect to. Second reply,
once it has connected: the remote peer's address. Then the shared relay.
The wait for the peer is bounded by --connect-timeout (it stands in for
the outbound connect of CONNECT) and ends early if the client goes away.
SOCKS4 BIND runs the same code with its own reply encoder (``socks4.py``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable

import gevent
from gevent import select
from gevent import socket as gsocket

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address, IPAddress, from_sockaddr, parse_ip, unmap_ip
from gproxy.core.context import Context
from gproxy.core.dial import IPCheck, Resolved, resolve
from gproxy.core.errors import ClientClosed, ClientProtocolError, Denied, DialError, GproxyError, Outcome
from gproxy.core.log import logger
from gproxy.core.outbound import Outbound
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import run_tunnel

#: bytes a client may send before the peer connects (relayed once it has)
EARLY_LIMIT = 65536
_UNKNOWN = frozenset({"0", "0.0.0.0", "::"})


#: (SOCKS5 reply code, bound address) -> wire reply; SOCKS4 passes its own
ReplyEncoder = Callable[[int, Address | None], bytes]


def bind(conn: Conn, ctx: Context, session: Session, dest: Address, encode: ReplyEncoder = socks5.encode_reply) -> None:
    """Listen, announce, accept the expected peer, announce it, relay."""
    expected = None if dest.host in _UNKNOWN else dest
    addrs: Resolved = []
    policy = ctx.destinations.for_user(session.user)
    check_peer: IPCheck = policy.check_ip
    try:
        if expected is not None:
            if expected.port:
                check_peer = policy.check(expected)  # knows whether a rule allowed the name
            elif expected.ip is None:  # port 0 is common (the peer's is rarely known): the name's rules apply later
                check_peer = _name_check(policy.check, expected.host)
            timed_out = DialError(f"resolving {expected.host} timed out", ReplyCode.TTL_EXPIRED)
            with gevent.Timeout(ctx.config.connect_timeout, timed_out):
                addrs = resolve(expected, ctx.resolver)
        listener = _listen(conn, addrs, ctx.outbound)
    except (Denied, DialError) as exc:
        conn.sendall(encode(exc.reply, None))
        raise
    except OSError as exc:
        conn.sendall(encode(ReplyCode.GENERAL_FAILURE, None))
        raise GproxyError(f"cannot listen for BIND: {exc}", reason=Outcome.BIND_FAILED) from None
    try:
        conn.sendall(encode(ReplyCode.SUCCEEDED, from_sockaddr(listener.getsockname())))
        allowed = {str(unmap_ip(ip)) for ip in (parse_ip(str(a[0])) for _, a in addrs) if ip is not None}
        peer = _accept(conn, ctx, listener, allowed or None, encode, check_peer)
    finally:
        listener.close()
    try:
        announced = encode(ReplyCode.SUCCEEDED, from_sockaddr(peer.getpeername()))
    except BaseException:
        peer.close()
        raise
    run_tunnel(conn, peer, ctx, session, announced)  # closes peer


def _name_check(check: Callable[[Address], IPCheck], host: str) -> IPCheck:
    """The check for a peer of a BIND that named ``host`` with port 0: the name's rules
    (and their port ranges) with the port the peer connects from, then its address's."""

    def check_peer(ip: IPAddress, port: int) -> None:
        check(Address(host, port))(ip, port)

    return check_peer


def _listen(conn: Conn, addrs: Resolved, outbound: Outbound) -> socket.socket:
    """A listening socket on --outgoing's address of the peer's family, else on the local
    address that routes toward the expected peer (so the peer can reach it), else on the
    control connection's local address."""
    host = str(conn.sock.getsockname()[0])
    family: int = conn.sock.family
    if addrs and outbound.source(addrs[0][0]) is not None:
        family = addrs[0][0]
        host = str(outbound.source(family))
    elif addrs:
        family, sockaddr = addrs[0]
        probe = gsocket.socket(family, socket.SOCK_DGRAM)
        try:
            probe.connect(sockaddr)  # no packet is sent: this only asks the routing table
            host = str(probe.getsockname()[0])
        finally:
            probe.close()
    listener = gsocket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, 0))
        listener.listen(1)
    except OSError:
        listener.close()
        raise
    return listener  # type: ignore[no-any-return]


def _accept(
    conn: Conn,
    ctx: Context,
    listener: socket.socket,
    allowed_ips: set[str] | None,
    encode: ReplyEncoder,
    check: IPCheck,
) -> socket.socket:
    """Wait for the peer; refuse (and keep waiting for) peers the rules or DST.ADDR exclude."""
    deadline = time.monotonic() + ctx.config.connect_timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            conn.sendall(encode(ReplyCode.TTL_EXPIRED, None))
            raise DialError("no connection to the BIND address in time", ReplyCode.TTL_EXPIRED)
        readable, _, _ = select.select([listener, conn.sock], [], [], remaining)
        if conn.sock in readable:
            data = conn.sock.recv(4096)
            if not data:
                raise ClientClosed("client closed the connection while waiting for BIND")
            conn.buf += data
            if len(conn.buf) > EARLY_LIMIT:
                raise ClientProtocolError("client sent too much before the BIND peer connected")
        if listener in readable:
            peer, address = listener.accept()
            reason = _refusal(check, address, allowed_ips)
            if reason is None:
                return peer
            logger.debug("%s: BIND peer %s refused: %s", conn.sock.getpeername(), address, reason)
            with contextlib.suppress(OSError):
                peer.close()


def _refusal(check: IPCheck, address: tuple[object, ...], allowed_ips: set[str] | None) -> str | None:
    """Why a connecting peer is refused, or None (RFC 1928: it should match DST.ADDR)."""
    ip = parse_ip(str(address[0]))
    if ip is None:
        return "no IP address"
    ip = unmap_ip(ip)
    if allowed_ips is not None and str(ip) not in allowed_ips:
        return "not the address the client named"
    try:
        check(ip, int(address[1]))  # type: ignore[call-overload]
    except Denied as exc:
        return str(exc)
    return None
