"""UDP through upstreams: which upstream carries a datagram, and the relays that carry it.

``udp_route()`` picks the route (direct for ``--bypass`` destinations and without upstreams; else
the socks5://, socks5+tls:// and ss:// members of the group, up ones first); ``open_relay()``
opens a relay through the first that works. A Socks5UdpRelay (RFC 1928 section 7) lives as long
as its control connection (over TLS for socks5+tls://); an SsUdpRelay sends Shadowsocks UDP
packets to the ss server's port and lives until closed. Both wrap each datagram on the way out
and unwrap each one on the way back; wire formats come from the sans-I/O codecs.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.codec.socks5 import Command
from gproxy.core._gevent import raw_socket
from gproxy.core.addr import Address, parse_ip
from gproxy.core.dial import DirectDialer, resolve
from gproxy.core.errors import ClientClosed, ClientProtocolError, DialError, UpstreamDown
from gproxy.core.log import logger
from gproxy.core.outbound import Outbound
from gproxy.core.stream import Conn
from gproxy.core.tls_client import tls_connect
from gproxy.core.upstream import Socks5Upstream
from gproxy.core.upstream_group import Router
from gproxy.core.upstream_ss import SsUpstreamDialer

if TYPE_CHECKING:
    from gproxy.core.dial import Dialer

Buffer = bytes | bytearray | memoryview
#: the upstreams that can carry UDP
UdpUpstream = Socks5Upstream | SsUpstreamDialer


class UdpRelay(Protocol):
    """One way for datagrams through an upstream; ``sock`` is where its replies arrive."""

    sock: socket.socket

    def send(self, payload: Buffer, dest: Address) -> None:
        """One datagram for ``dest``; OSError when the kernel will not take it now (EAGAIN included)."""

    def unwrap(self, datagram: memoryview) -> tuple[Address, memoryview] | None:
        """(sender, payload) of a datagram that arrived on ``sock``; None for one to drop."""

    def wait_closed(self) -> None:
        """Block until the upstream ends the relay."""

    def close(self) -> None: ...


def udp_socket(family: int, host: str, outbound: Outbound | None = None) -> socket.socket:
    """A UDP socket bound to ``host`` port 0 (marked for --mark when ``outbound`` is given)."""
    sock = gsocket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if outbound is not None:
            outbound.mark_socket(sock)
        sock.bind((host, 0))
    except OSError:
        sock.close()
        raise
    return sock  # type: ignore[no-any-return]


def udp_upstreams(dialer: Dialer) -> list[UdpUpstream] | None:
    """The upstreams of a listener's dialer that can carry UDP, up ones first; None: no upstreams.

    Raises:
        DialError: upstreams are set and none can carry UDP (0x07).
    """
    if not isinstance(dialer, Router) or dialer.group is None:
        return None
    members = [m.dialer for m in dialer.group.order() if isinstance(m.dialer, Socks5Upstream | SsUpstreamDialer)]
    if not members:
        raise DialError(
            "no upstream can carry UDP (socks5://, socks5+tls:// and ss:// can; http(s):// and socks4:// cannot)",
            ReplyCode.COMMAND_NOT_SUPPORTED,
        )
    return members


def udp_route(dialer: Dialer, dest: Address) -> list[UdpUpstream] | None:
    """The upstreams UDP to ``dest`` may go through, up ones first; None: direct (``--bypass``, or
    no upstreams). DialError (0x07) when upstreams are set and none can carry UDP."""
    if isinstance(dialer, Router) and dialer.bypass and dialer.bypassed(dest):
        return None
    return udp_upstreams(dialer)


def open_relay(upstreams: Sequence[UdpUpstream], timeout: float, outbound: Outbound) -> tuple[UdpUpstream, UdpRelay]:
    """A relay through the first of ``upstreams`` that works, all within ``timeout`` (each may take
    its share of what is left, the last one all of it); the upstream chosen and its relay.

    Raises:
        UpstreamDown: every upstream failed itself (the last one's error).
        DialError: an upstream refused the association (its reply code), or no time was left.
    """
    deadline = time.monotonic() + timeout
    last: DialError = DialError("no time left to reach an upstream for UDP", ReplyCode.TTL_EXPIRED)
    for index, upstream in enumerate(upstreams):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        share = remaining / (len(upstreams) - index)
        try:
            if isinstance(upstream, SsUpstreamDialer):
                return upstream, ss_relay(upstream, share, outbound)
            return upstream, associate(upstream, share, outbound)
        except UpstreamDown as exc:
            logger.debug("%s", exc)
            last = exc
    raise last


class SsUdpRelay:
    """Shadowsocks UDP through an ss:// upstream: a UDP socket connected to the server's port
    (the kernel drops packets from anyone else); packets that do not open are dropped."""

    __slots__ = ("dialer", "sock", "_raw", "_closed")

    def __init__(self, dialer: SsUpstreamDialer, sock: socket.socket) -> None:
        self.dialer = dialer
        self.sock = sock
        self._raw = raw_socket(sock)  # sends never yield
        self._closed = Event()

    def send(self, payload: Buffer, dest: Address) -> None:
        self._raw.send(self.dialer.seal_datagram(dest, payload))

    def unwrap(self, datagram: memoryview) -> tuple[Address, memoryview] | None:
        return self.dialer.open_datagram(datagram)

    def wait_closed(self) -> None:
        """Shadowsocks UDP has no connection that could end: wait for close()."""
        self._closed.wait()

    def close(self) -> None:
        self.sock.close()
        self._closed.set()


def ss_relay(dialer: SsUpstreamDialer, timeout: float, outbound: Outbound) -> SsUdpRelay:
    """A UDP socket toward the ss:// upstream's port (the TCP port number), resolved within ``timeout``.

    Raises:
        UpstreamDown: its name does not resolve, or no socket can be opened toward it.
    """
    up = dialer.upstream
    try:
        with gevent.Timeout(timeout, DialError(f"resolving {up.host} timed out", ReplyCode.TTL_EXPIRED)):
            family, sockaddr = resolve(up.address, dialer.resolver)[0]
        sock = udp_socket(family, outbound.udp_host(family), outbound)
    except DialError as exc:
        raise UpstreamDown(f"upstream {up}: {exc}", exc.reply) from None
    except OSError as exc:
        raise UpstreamDown(f"upstream {up}: {exc}", ReplyCode.GENERAL_FAILURE) from None
    try:
        raw_socket(sock).connect(sockaddr)  # UDP: never blocks
    except OSError as exc:
        sock.close()
        raise UpstreamDown(f"upstream {up}: {exc}", ReplyCode.NETWORK_UNREACHABLE) from None
    return SsUdpRelay(dialer, sock)


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


def associate(dialer: Socks5Upstream, timeout: float, outbound: Outbound) -> Socks5UdpRelay:
    """UDP ASSOCIATE through the upstream of ``dialer`` within ``timeout``; ``outbound``'s source
    address and mark apply to the control connection and the UDP socket.

    Raises:
        UpstreamDown: the upstream is unreachable or failed its handshake.
        DialError: the upstream refused the association (its reply code).
    """
    up = dialer.upstream
    deadline = time.monotonic() + timeout
    try:
        control = DirectDialer(dialer.resolver, prepare=outbound.prepare()).dial(up.address, timeout)
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
            local = str(control.getsockname()[0])  # --outgoing's address when there is one
            udp = udp_socket(control.family, local, outbound)
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
