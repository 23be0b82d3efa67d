"""``--tproxy ADDR``, UDP: datagrams that TPROXY diverted to the listener's port number.

Each datagram's original destination comes with it (``IP_RECVORIGDSTADDR``). Each (client,
original destination) gets a mapping: an outbound socket connected to the destination, or a
relay through an upstream (SOCKS5 UDP ASSOCIATE or Shadowsocks UDP, see ``udp_upstream``) when
upstreams are set, and a transparent socket bound to the original
destination, so replies reach the client from the address it sent to. Client and destination
rules apply when a mapping opens; mappings expire when idle (see ``udp_mappings``).
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import TYPE_CHECKING

import gevent
from gevent import socket as gsocket

from gproxy.core._gevent import raw_socket
from gproxy.core.addr import Address, from_sockaddr, parse_ip
from gproxy.core.config import ListenerSpec
from gproxy.core.context import Context
from gproxy.core.dial import Prepare
from gproxy.core.errors import Denied, DialError, Outcome
from gproxy.core.log import logger
from gproxy.core.relay import Limits
from gproxy.core.session import Session
from gproxy.core.tunnel import rate_limits
from gproxy.core.udp_mappings import Sockaddr, UdpService, hub_buffer, received_sizes
from gproxy.core.udp_upstream import UdpRelay, UdpUpstream, open_relay, udp_route
from gproxy.core.upstream_group import DIRECT
from gproxy.frontends.transparent import parse_sockaddr

if TYPE_CHECKING:
    from gproxy.server.proxy import Proxy

#: linux/in.h and linux/in6.h (the RECV option turns on the control message of the same number)
IP_ORIGDSTADDR = IP_RECVORIGDSTADDR = 20
IPV6_ORIGDSTADDR = IPV6_RECVORIGDSTADDR = 74
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
#: room for one control message carrying a sockaddr_in6
ANCILLARY_SIZE = socket.CMSG_SPACE(28)
#: datagrams kept for a mapping while its upstream association opens
MAX_PENDING = 16
KIND = "tproxy"
FlowKey = tuple[str, int, str, int]  # client host, port, original destination host, port


def original_destination(ancdata: list[tuple[int, int, bytes]]) -> Address | None:
    """The IP_ORIGDSTADDR / IPV6_ORIGDSTADDR that recvmsg returned; None when there is none."""
    for level, kind, data in ancdata:
        if (level, kind) in ((socket.IPPROTO_IP, IP_ORIGDSTADDR), (socket.IPPROTO_IPV6, IPV6_ORIGDSTADDR)):
            try:
                return parse_sockaddr(data)
            except ValueError:
                return None
    return None


def reply_socket(dest: Address) -> socket.socket:
    """A transparent UDP socket bound to ``dest`` (not one of ours): replies leave from there."""
    ip = dest.ip
    assert ip is not None
    v6 = ip.version == 6
    sock: socket.socket = gsocket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # one per client, and the destination may be ours
        if v6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
        raw_socket(sock).bind((str(ip), dest.port))
    except BaseException:
        sock.close()
        raise
    return sock


class _Flow:
    """One (client, original destination): where datagrams go, and the socket replies leave from."""

    __slots__ = ("client", "dest", "session", "last", "reply", "outbound", "relay", "pending", "loops", "limits")

    def __init__(
        self, client: Sockaddr, dest: Address, session: Session, reply: socket.socket, now: int, limits: Limits
    ) -> None:
        self.client = client
        self.limits = limits  # the client IP's buckets: over the rate, a datagram is dropped
        self.dest = dest
        self.session = session
        self.last = now
        self.reply = reply
        self.outbound: socket.socket | None = None  # direct: connected to dest
        self.relay: UdpRelay | None = None  # through an upstream, once open
        self.pending: list[bytes] = []  # while the association opens
        self.loops: list[gevent.Greenlet] = []

    def close(self) -> None:
        current = gevent.getcurrent()
        gevent.killall([loop for loop in self.loops if loop is not current], block=False)
        self.loops = []  # a killed greenlet keeps its GreenletExit, whose frames point back here
        for sock in (self.outbound, self.reply):
            if sock is not None:
                sock.close()
        if self.relay is not None:
            self.relay.close()


class TproxyUdp(UdpService[FlowKey, _Flow]):
    """The UDP half of a --tproxy listener: a Service over its bound (transparent) UDP socket."""

    label = "tproxy udp"

    def __init__(self, proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> None:
        super().__init__(proxy, sock, proxy.config.idle_timeout)
        self.proxy = proxy
        self.spec = replace(spec, kind=KIND)  # rules, sessions and metrics of the tproxy listener
        level, option = (
            (socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR)
            if sock.family == socket.AF_INET6
            else (socket.IPPROTO_IP, IP_RECVORIGDSTADDR)
        )
        sock.setsockopt(level, option, 1)
        self.ctx = proxy.context(self.spec)

    def _context(self) -> Context:
        """The latest rules: rebuilt after a reload (a new Config), else the same one."""
        if self.ctx.config is not self.proxy.config:
            self.ctx = self.proxy.context(self.spec)
        return self.ctx

    # -- client -> destinations ----------------------------------------------------------

    def receive_loop(self) -> None:
        """Like UdpService's, with each datagram's original destination (a control message)."""
        buf = hub_buffer()
        sock = self.sock
        metrics = self.proxy.metrics
        while True:
            try:
                n, ancdata, _flags, client = sock.recvmsg_into([buf], ANCILLARY_SIZE)
            except OSError:
                if sock.fileno() < 0:
                    return
                continue
            dest = original_destination(ancdata)
            if dest is None:
                metrics.udp_datagram(KIND, "up", dropped="malformed")
                continue
            key = (str(client[0]), int(client[1]), dest.host, dest.port)
            flow = self.mappings.get(key)
            data: memoryview | bytes = buf[:n]
            if flow is None:
                data = bytes(data)
                flow = self._open(key, client, dest)
                if flow is None:
                    continue
            flow.last = self.mappings.clock
            if flow.limits is not None and not flow.limits[0].take_whole(n):
                metrics.udp_datagram(KIND, "up", dropped="rate")
                continue
            try:
                if flow.outbound is not None:
                    raw_socket(flow.outbound).send(data)
                elif flow.relay is not None:
                    flow.relay.send(data, dest)
                elif len(flow.pending) < MAX_PENDING:
                    flow.pending.append(bytes(data))
                    continue  # counted once sent
                else:
                    raise BlockingIOError("the upstream association is still opening")
            except OSError:  # EAGAIN, or ECONNREFUSED from an earlier ICMP: this datagram only, never counted
                metrics.udp_datagram(KIND, "up", dropped="send_failed")
                continue
            flow.session.up += n
            metrics.udp_datagram(KIND, "up")

    def _open(self, key: FlowKey, client: Sockaddr, dest: Address) -> _Flow | None:
        """A new mapping if the client and the destination pass the rules; None drops the datagram."""
        metrics = self.proxy.metrics
        ctx = self._context()
        ip = parse_ip(key[0])
        if ip is None or not self.proxy.clients.permits(ip):
            metrics.udp_datagram(KIND, "up", dropped="client_denied")
            return None
        try:
            ctx.destinations.check(dest)  # an IP: checked as it is (own listeners, local, rules)
            upstreams = udp_route(ctx.dialer, dest)
            reply = reply_socket(dest)
        except (Denied, DialError, OSError) as exc:
            if isinstance(exc, Denied):
                logger.debug("%s: tproxy udp to %s dropped: %s", key[0], dest, exc)
            else:
                self.warn(f"to {dest}: {exc}")
            metrics.udp_datagram(KIND, "up", dropped="denied" if isinstance(exc, Denied) else "send_failed")
            return None
        via = DIRECT if upstreams is None else str(upstreams[0].upstream)  # the one chosen, once open
        session = Session(from_sockaddr(client), KIND, proto=KIND, cmd="udp", dest=str(dest), via=via)
        flow = _Flow(client, dest, session, reply, self.mappings.clock, rate_limits(ctx, session))
        if upstreams is None:
            try:
                flow.outbound = _outbound_socket(dest, ctx.outbound.prepare())
            except OSError as exc:
                flow.close()
                self.warn(f"to {dest}: {exc}")
                metrics.udp_datagram(KIND, "up", dropped="send_failed")
                return None
        metrics.session_opened(KIND)
        self.mappings.add(key, flow)
        if upstreams is None:
            flow.loops.append(gevent.spawn(self._reply_loop, flow))
        else:
            flow.loops.append(gevent.spawn(self._associate, key, flow, upstreams, ctx))
        return flow

    def _associate(self, key: FlowKey, flow: _Flow, upstreams: list[UdpUpstream], ctx: Context) -> None:
        """Open the relay, send what queued meanwhile, relay until the upstream ends it."""
        try:
            upstream, relay = open_relay(upstreams, self.proxy.config.connect_timeout, ctx.outbound)
        except DialError as exc:
            self.warn(exc)
            self._end(key, flow, exc.reason)
            return
        flow.relay = relay
        flow.session.via = str(upstream.upstream)
        metrics = self.proxy.metrics
        for data in flow.pending:
            try:
                relay.send(data, flow.dest)
            except OSError:
                metrics.udp_datagram(KIND, "up", dropped="send_failed")
                continue
            flow.session.up += len(data)
            metrics.udp_datagram(KIND, "up")
        flow.pending.clear()
        flow.loops.append(gevent.spawn(self._reply_loop, flow))
        relay.wait_closed()
        self._end(key, flow, Outcome.UPSTREAM_CLOSED)

    def _end(self, key: FlowKey, flow: _Flow, outcome: Outcome) -> None:
        """End ``flow`` if it is still the mapping of ``key`` (not evicted and replaced meanwhile)."""
        if self.mappings.get(key) is flow:
            self.mappings.end(key, outcome)

    # -- destinations -> client ------------------------------------------------------------

    def _reply_loop(self, flow: _Flow) -> None:
        buf = hub_buffer()
        relay = flow.relay
        sock = flow.outbound if relay is None else relay.sock
        assert sock is not None
        reply = raw_socket(flow.reply)
        dest = flow.dest
        metrics = self.proxy.metrics
        for n in received_sizes(sock, buf):
            data = buf[:n]
            if relay is not None:
                unwrapped = relay.unwrap(data)
                if unwrapped is None or unwrapped[0].ip != dest.ip or unwrapped[0].port != dest.port:
                    metrics.udp_datagram(KIND, "down", dropped="unknown_source")  # only the destination may answer
                    continue
                data = unwrapped[1]
            flow.last = self.mappings.clock
            if flow.limits is not None and not flow.limits[1].take_whole(len(data)):
                metrics.udp_datagram(KIND, "down", dropped="rate")
                continue
            try:
                reply.sendto(data, flow.client)
            except OSError:  # EAGAIN included: dropped, never counted as sent
                metrics.udp_datagram(KIND, "down", dropped="send_failed")
                continue
            flow.session.down += len(data)
            metrics.udp_datagram(KIND, "down")


def _outbound_socket(dest: Address, prepare: Prepare | None) -> socket.socket:
    """A UDP socket connected to ``dest``: the kernel drops datagrams from anyone else."""
    ip = dest.ip
    assert ip is not None
    sock: socket.socket = gsocket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if prepare is not None:
            prepare(sock)
        raw_socket(sock).connect((str(ip), dest.port))  # UDP: never blocks, never resolves
    except BaseException:
        sock.close()
        raise
    return sock
