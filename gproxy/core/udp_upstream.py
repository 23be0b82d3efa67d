"""SOCKS5 UDP ASSOCIATE, client side: datagrams through a SOCKS5 upstream (RFC 1928 section 7).

``associate()`` opens the control connection (over TLS for socks5+tls://), greets the upstream
and asks for a relay; the Socks5UdpRelay it returns wraps each datagram in the SOCKS5 UDP header
on the way out and unwraps each one on the way back. The association lives as long as the
control connection. Wire formats come from the sans-I/O codec ``gproxy.codec.socks5``.
"""

from __future__ import annotations

import contextlib
import socket
import time

import gevent
from gevent import socket as gsocket

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.codec.socks5 import Command
from gproxy.core._gevent import raw_socket
from gproxy.core.addr import Address, parse_ip
from gproxy.core.dial import DirectDialer, Prepare, resolve
from gproxy.core.errors import ClientClosed, ClientProtocolError, DialError, UpstreamDown
from gproxy.core.stream import Conn
from gproxy.core.upstream import Socks5Upstream, tls_connect

Buffer = bytes | bytearray | memoryview


class Socks5UdpRelay:
    """One association: the control connection, and a UDP socket connected to the upstream's relay
    (the kernel drops datagrams from anyone else)."""

    __slots__ = ("control", "sock", "_raw")

    def __init__(self, control: socket.socket, sock: socket.socket) -> None:
        self.control = control
        self.sock = sock
        self._raw = raw_socket(sock)  # sends never yield

    def send(self, payload: Buffer, dest: Address) -> None:
        """One datagram for ``dest``; OSError when the kernel will not take it now (EAGAIN included)."""
        self._raw.sendmsg([socks5.encode_udp_header(dest), payload])

    @staticmethod
    def unwrap(datagram: memoryview) -> tuple[Address, memoryview] | None:
        """(sender, payload) of a datagram from the relay; None for a malformed or fragmented one."""
        try:
            header, start = socks5.parse_udp_header(datagram)
        except ClientProtocolError:
            return None
        if header.frag:
            return None
        return header.address, datagram[start:]

    def wait_closed(self) -> None:
        """Block until the upstream ends the association (the control connection closes)."""
        with contextlib.suppress(OSError):
            while self.control.recv(4096):
                pass

    def close(self) -> None:
        self.sock.close()
        self.control.close()


def associate(dialer: Socks5Upstream, timeout: float, prepare: Prepare | None = None) -> Socks5UdpRelay:
    """UDP ASSOCIATE through the upstream of ``dialer`` within ``timeout``.

    Raises:
        UpstreamDown: the upstream is unreachable or failed its handshake.
        DialError: the upstream refused the association (its reply code).
    """
    up = dialer.upstream
    deadline = time.monotonic() + timeout
    try:
        control = DirectDialer(dialer.resolver, prepare=prepare).dial(up.address, timeout)
    except DialError as exc:
        raise UpstreamDown(f"upstream {up}: {exc}", exc.reply) from None
    udp: socket.socket | None = None
    try:
        remaining = max(deadline - time.monotonic(), 0.001)
        with gevent.Timeout(
            remaining, UpstreamDown(f"upstream {up}: no answer to UDP ASSOCIATE in time", ReplyCode.TTL_EXPIRED)
        ):
            if dialer.tls is not None:
                control = tls_connect(control, dialer.tls, up.host)
            conn = Conn(control)
            dialer.greet(conn)
            local = str(control.getsockname()[0])
            udp = gsocket.socket(control.family, socket.SOCK_DGRAM)
            if prepare is not None:
                prepare(udp)
            udp.bind((local, 0))
            conn.sendall(socks5.encode_request(Command.UDP_ASSOCIATE, Address(local, int(udp.getsockname()[1]))))
            reply = _read_reply(conn)
            if reply.code != ReplyCode.SUCCEEDED:
                code = (
                    ReplyCode(reply.code) if reply.code in ReplyCode._value2member_map_ else ReplyCode.GENERAL_FAILURE
                )
                raise dialer.refused(f"it answered {reply.code:#04x} for UDP ASSOCIATE", code)
            relay = _relay_sockaddr(reply.address, control, dialer)
            if len(relay) != len(udp.getsockname()):
                raise dialer.broken(f"its relay {reply.address} is not of the control connection's family")
            raw_socket(udp).connect(relay)
    except BaseException as exc:
        if udp is not None:
            udp.close()
        control.close()
        if isinstance(exc, ClientClosed):
            raise dialer.broken("it closed the connection") from None
        if isinstance(exc, ClientProtocolError | OSError):
            raise dialer.broken(str(exc)) from None
        raise
    return Socks5UdpRelay(control, udp)


def _read_reply(conn: Conn) -> socks5.Reply:
    head = conn.read_exact(5)  # VER REP RSV ATYP and the first address byte
    rest = {int(socks5.AddressType.IPV4): 5, int(socks5.AddressType.IPV6): 17}.get(head[3], head[4] + 2)
    parsed = socks5.parse_reply(head + conn.read_exact(rest))
    if parsed is None:
        raise ClientProtocolError("short reply")
    return parsed[0]


def _relay_sockaddr(bound: Address, control: socket.socket, dialer: Socks5Upstream) -> tuple[object, ...]:
    """Where to send datagrams: BND.ADDR:BND.PORT; an unspecified BND.ADDR means the upstream's own address."""
    ip = bound.ip
    if ip is None:  # a name: resolve it (rare; the upstream chose it)
        return resolve(bound, dialer.resolver)[0][1]
    if ip.is_unspecified:
        ip = parse_ip(str(control.getpeername()[0]))
        assert ip is not None
    if ip.version == 6:
        return (str(ip), bound.port, 0, 0)
    return (str(ip), bound.port)
