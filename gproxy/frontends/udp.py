"""UDP: SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) and the ``--udp-forward`` relay.

With upstreams set, an association opens one relay through an upstream that carries UDP
(``udp_upstream``) and sends every destination through it but ``--bypass`` ones.

One read loop (greenlet) per socket, never a greenlet per datagram. A loop
receives into a hub-wide buffer and sends without yielding (a datagram the
kernel will not take at once is dropped, as UDP allows), so no other
greenlet can touch the buffer in between.
"""

from __future__ import annotations

import contextlib
import socket
import time
from typing import TYPE_CHECKING, TypeVar

import gevent

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.core._gevent import raw_socket
from gproxy.core.addr import Address, IPAddress, from_sockaddr, parse_ip, unmap_ip
from gproxy.core.config import ListenerSpec
from gproxy.core.context import Context
from gproxy.core.dial import resolve
from gproxy.core.errors import ClientProtocolError, ConfigError, Denied, DialError, GproxyError, Outcome
from gproxy.core.log import logger
from gproxy.core.outbound import Outbound
from gproxy.core.rules import DestinationPolicy
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import rate_limits
from gproxy.core.udp_mappings import UdpService, hub_buffer, received, received_sizes
from gproxy.core.udp_upstream import UdpRelay, open_relay, udp_socket, udp_upstreams
from gproxy.core.upstream_group import Router, dialled_via

if TYPE_CHECKING:
    from gproxy.server.proxy import Proxy

#: room in front of a received reply for the largest reply header (IPv6 source)
HEADROOM = 22
#: destinations an association remembers (resolution, rules, reply filter)
MAX_PEERS = 1024
#: how long a resolved name is reused
NAME_TTL = 60.0
#: a client sends "0" as a name (PySocks) or zeros when it does not know its address
_UNKNOWN_HOSTS = frozenset({"0", "0.0.0.0", "::"})

K = TypeVar("K")
T = TypeVar("T")


def outbound_udp_socket(outbound: Outbound, family: int) -> socket.socket:
    """A UDP socket toward destinations: bound to --outgoing's address of ``family``, marked (--mark)."""
    return udp_socket(family, outbound.udp_host(family), outbound)


def _sockaddr_key(sockaddr: tuple[object, ...]) -> tuple[str, int]:
    return str(sockaddr[0]), int(sockaddr[1])  # type: ignore[call-overload]


class _Peer:
    """A destination the client has sent to: where to send, and the reply header."""

    __slots__ = ("family", "sockaddr", "header", "expires")

    def __init__(self, family: int, sockaddr: tuple[object, ...], expires: float) -> None:
        self.family = family
        self.sockaddr = sockaddr
        self.header = socks5.encode_udp_header(from_sockaddr(sockaddr))
        self.expires = expires


class _Via:
    """A destination reached through the upstream relay: sent as the client named it (the upstream
    resolves names)."""

    __slots__ = ("dest",)

    def __init__(self, dest: Address) -> None:
        self.dest = dest


class UdpAssociation:
    """One UDP ASSOCIATE: a client-facing socket, outbound sockets per family, and the relay
    through an upstream when one is given."""

    def __init__(
        self, conn: Conn, ctx: Context, session: Session, declared: Address, relay: UdpRelay | None = None
    ) -> None:
        self.conn = conn
        self.ctx = ctx
        self.session = session
        # The session's client: the peer, or the address a --proxy-protocol header carried
        # (then the peer is the balancer, and the client sends its datagrams to us directly).
        self.client_ip = session.client.host
        self.client_port: int | None = None
        if declared.port and parse_ip(declared.host) == parse_ip(self.client_ip):
            # The client named its own address: trust the port it gave. A zero
            # address (or PySocks' "0") means a NAT may change the port, so the
            # first datagram fixes it instead.
            self.client_port = declared.port
        self.client_addr: tuple[object, ...] | None = None
        family, host = conn.sock.family, str(conn.sock.getsockname()[0])
        client_ip = parse_ip(self.client_ip)
        if client_ip is not None and (client_ip.version == 6) != (family == socket.AF_INET6):
            # A balancer reached over the other family: listen on the client's, all addresses.
            family, host = (socket.AF_INET6, "::") if client_ip.version == 6 else (socket.AF_INET, "0.0.0.0")
        self.client_sock = udp_socket(family, host)
        self.relay = relay
        self._outbound: dict[int, tuple[socket.socket, socket.socket]] = {}  # family -> socket, its kernel socket
        self._by_header: dict[bytes, _Peer | _Via | Denied] = {}  # keyed by the address bytes the client sent
        self._by_source: dict[tuple[str, int], _Peer] = {}  # replies are accepted from these only
        self._loops: list[gevent.Greenlet] = []
        self.datagrams = 0
        self.dropped = 0
        self.limits = rate_limits(ctx, session)  # over the rate, a datagram is dropped (never queued)

    @property
    def bound(self) -> Address:
        """BND.ADDR/BND.PORT for the reply (``--udp-advertise`` overrides the address)."""
        host, port = self.client_sock.getsockname()[:2]
        return Address(self.ctx.config.udp_advertise or str(host), int(port))

    def run(self) -> None:
        """Relay until the control connection closes or nothing moves for the idle timeout."""
        self._loops.append(gevent.spawn(self._client_loop))
        watchers = [gevent.spawn(self._watch_control)]
        if self.relay is not None:
            self._loops.append(gevent.spawn(self._relay_loop, self.relay))
            watchers.append(gevent.spawn(self.relay.wait_closed))
        idle = self.ctx.config.idle_timeout
        try:
            if idle <= 0:
                gevent.joinall(watchers, count=1)
            ticks, seen = 0, self.datagrams
            while not any(watcher.ready() for watcher in watchers):  # no clock reads per datagram: counts per tick
                gevent.joinall(watchers, timeout=idle / 4, count=1)
                ticks = ticks + 1 if self.datagrams == seen else 0
                seen = self.datagrams
                if ticks >= 4 and not any(watcher.ready() for watcher in watchers):
                    self.session.outcome = Outcome.IDLE_TIMEOUT
                    break
            if watchers[1:] and watchers[1].ready() and not watchers[0].ready():
                self.session.outcome = Outcome.UPSTREAM_CLOSED
        finally:
            self.close()
            gevent.killall(watchers, block=False)

    def close(self) -> None:
        """Close every socket first (no yield), then stop the loops."""
        self.client_sock.close()
        for sock, _ in self._outbound.values():
            sock.close()
        if self.relay is not None:
            self.relay.close()
        gevent.killall(self._loops, block=False)
        self._loops = []  # a killed greenlet keeps its GreenletExit, whose frames point back here

    def _watch_control(self) -> None:
        """The control connection carries nothing more; EOF (or an error) ends the association."""
        self.conn.take_buffered()
        with contextlib.suppress(OSError):
            while self.conn.sock.recv(4096):
                pass

    # -- client -> destinations ----------------------------------------------------

    def _client_loop(self) -> None:
        sock = self.client_sock
        buf = hub_buffer()
        metrics, kind = self.ctx.metrics, self.ctx.listener.kind
        for n, source in received(sock, buf):
            if source[0] != self.client_ip or (self.client_port is not None and source[1] != self.client_port):
                self.dropped += 1  # not our client
                continue
            start = _header_end(buf, n)
            key = bytes(buf[3:start]) if start and not buf[2] else b""  # ATYP DST.ADDR DST.PORT as sent
            peer = self._by_header.get(key) if key else None
            if peer is None or (isinstance(peer, _Peer) and peer.expires < time.monotonic()):
                try:  # the slow path: parse, check, resolve, remember
                    header, start = socks5.parse_udp_header(buf[:n])
                except ClientProtocolError as exc:
                    self._drop(f"malformed datagram: {exc}")
                    continue
                if header.frag:
                    self._drop("fragment (FRAG != 0)")
                    continue
                key = bytes(buf[3:start])
                payload = bytes(buf[start:n])  # resolving yields: keep our own copy
                peer = self._lookup(key, header.address)
                data: memoryview | bytes = payload
            else:
                data = buf[start:n]
            if isinstance(peer, Denied):
                self._drop(str(peer))
                continue
            if self.client_port is None:
                self.client_port = int(source[1])
            self.client_addr = source
            self.datagrams += 1
            if self.limits is not None and not self.limits[0].take_whole(len(data)):
                self._drop("over the rate")
                metrics.udp_datagram(kind, "up", dropped="rate")
                continue
            try:
                if isinstance(peer, _Via):
                    assert self.relay is not None
                    self.relay.send(data, peer.dest)
                else:
                    (self._outbound.get(peer.family) or self._open_outbound(peer.family))[1].sendto(data, peer.sockaddr)
            except OSError as exc:  # EAGAIN, unreachable, too big: this datagram only, never counted as sent
                self._drop(f"send to {peer}: {exc}")
                metrics.udp_datagram(kind, "up", dropped="send_failed")
                continue
            self.session.up += len(data)
            metrics.udp_datagram(kind, "up")

    def _drop(self, why: str) -> None:
        self.dropped += 1
        logger.debug("%s: udp datagram dropped: %s", self.session.client, why)

    def _lookup(self, key: bytes, dest: Address) -> _Peer | _Via | Denied:
        """Check, resolve and remember a destination (rules apply to every address; through the
        upstream, to the destination as the client named it)."""
        result: _Peer | _Via | Denied
        if self.relay is not None and not self._bypassed(dest):
            try:
                self.ctx.destinations.for_user(self.session.user).check(dest)
                result = _Via(dest)
            except Denied as exc:
                result = exc
            _remember(self._by_header, key, result)
            return result
        try:
            found = resolve_datagram_dest(self.ctx, self.session.user, dest)
        except DialError as exc:
            return Denied(str(exc))  # not remembered: resolution may work next time
        result = found if isinstance(found, Denied) else _Peer(*found, time.monotonic() + NAME_TTL)
        _remember(self._by_header, key, result)
        if isinstance(result, _Peer):
            _remember(self._by_source, _sockaddr_key(result.sockaddr), result)
        return result

    def _bypassed(self, dest: Address) -> bool:
        """``--bypass`` names the destination: it goes direct even with the relay open."""
        router = self.ctx.dialer
        return isinstance(router, Router) and bool(router.bypass) and router.bypassed(dest)

    def _open_outbound(self, family: int) -> tuple[socket.socket, socket.socket]:
        """The outbound socket of ``family`` (its replies read by a loop of their own), and its
        kernel socket: sends through it never yield (see the shared-buffer rule)."""
        sock = outbound_udp_socket(self.ctx.outbound, family)
        out = self._outbound[family] = sock, raw_socket(sock)
        self._loops.append(gevent.spawn(self._reply_loop, sock))
        return out

    # -- destinations -> client -----------------------------------------------------

    def _reply_loop(self, sock: socket.socket) -> None:
        buf = hub_buffer()
        body = buf[HEADROOM:]
        client = raw_socket(self.client_sock)
        metrics, kind = self.ctx.metrics, self.ctx.listener.kind
        for n, source in received(sock, body):
            peer = self._by_source.get((source[0], source[1]))
            if peer is None or self.client_addr is None:
                self.dropped += 1  # only destinations the client sent to may answer
                continue
            if self.limits is not None and not self.limits[1].take_whole(n):
                self._drop("over the rate")
                metrics.udp_datagram(kind, "down", dropped="rate")
                continue
            header = peer.header
            start = HEADROOM - len(header)
            buf[start:HEADROOM] = header
            try:
                client.sendto(buf[start : HEADROOM + n], self.client_addr)
            except OSError as exc:  # EAGAIN included: dropped, never counted as sent
                self._drop(f"send to client: {exc}")
                metrics.udp_datagram(kind, "down", dropped="send_failed")
                continue
            self.datagrams += 1
            self.session.down += n
            metrics.udp_datagram(kind, "down")

    def _relay_loop(self, relay: UdpRelay) -> None:
        """Replies through the upstream, headed with the source it reports (it filters its own)."""
        buf = hub_buffer()
        client = raw_socket(self.client_sock)
        metrics, kind = self.ctx.metrics, self.ctx.listener.kind
        for n in received_sizes(relay.sock, buf):
            unwrapped = relay.unwrap(buf[:n])
            if unwrapped is None or self.client_addr is None:
                self._drop("malformed datagram from the upstream" if unwrapped is None else "no client yet")
                continue
            source, payload = unwrapped
            if self.limits is not None and not self.limits[1].take_whole(len(payload)):
                self._drop("over the rate")
                metrics.udp_datagram(kind, "down", dropped="rate")
                continue
            try:
                client.sendmsg([socks5.encode_udp_header(source), payload], (), 0, self.client_addr)
            except OSError as exc:  # EAGAIN included: dropped, never counted as sent
                self._drop(f"send to client: {exc}")
                metrics.udp_datagram(kind, "down", dropped="send_failed")
                continue
            self.datagrams += 1
            self.session.down += len(payload)
            metrics.udp_datagram(kind, "down")


def _header_end(buf: memoryview, n: int) -> int:
    """Where the payload starts in a well-formed datagram of ``n`` bytes, else 0."""
    if n < 5:
        return 0
    atyp = buf[3]
    end = 10 if atyp == 1 else 22 if atyp == 4 else 7 + buf[4] if atyp == 3 else 0
    return end if end <= n else 0


def resolve_datagram_dest(ctx: Context, user: str | None, dest: Address) -> tuple[int, tuple[object, ...]] | Denied:
    """Where a datagram to ``dest`` goes: the first resolved address that ``user``'s rules
    allow, as (family, sockaddr as recvfrom reports it), or the Denied that says why not.

    Raises:
        DialError: resolution failed or timed out (worth trying again later, not remembering).
    """
    try:
        check_resolved = ctx.destinations.for_user(user).check(dest)
        with gevent.Timeout(ctx.config.connect_timeout, DialError("resolving timed out", ReplyCode.TTL_EXPIRED)):
            addrs = resolve(dest, ctx.resolver)
    except Denied as exc:
        return exc
    result = Denied(f"{dest}: no address")
    for _family, sockaddr in addrs:
        ip = parse_ip(str(sockaddr[0]))
        try:
            if ip is None:
                raise Denied(f"{dest}: resolved to {sockaddr[0]!r}")
            check_resolved(ip, dest.port)
        except Denied as exc:
            result = exc
            continue
        return _canonical(ip, dest.port)
    return result


def _canonical(ip: IPAddress, port: int) -> tuple[int, tuple[object, ...]]:
    """Family and sockaddr as recvfrom reports them, so replies can be matched."""
    ip = unmap_ip(ip)
    if ip.version == 6:
        return socket.AF_INET6, (str(ip), port, 0, 0)
    return socket.AF_INET, (str(ip), port)


def _remember(table: dict[K, T], key: K, value: T) -> None:
    """Insert into a bounded table, forgetting the oldest entry when full."""
    table.pop(key, None)
    if len(table) >= MAX_PEERS:
        del table[next(iter(table))]
    table[key] = value


def udp_associate(conn: Conn, ctx: Context, session: Session, declared: Address) -> None:
    """SOCKS5 UDP ASSOCIATE: open the relay (and one through an upstream when upstreams are
    set), answer with its address, relay until done."""
    relay = _upstream_relay(conn, ctx)
    try:
        association = UdpAssociation(conn, ctx, session, declared, relay)
    except OSError as exc:
        if relay is not None:
            relay.close()
        conn.sendall(socks5.encode_reply(ReplyCode.GENERAL_FAILURE))
        raise GproxyError(f"cannot open a UDP relay: {exc}", reason=Outcome.UDP_BIND_FAILED) from None
    try:
        conn.sendall(socks5.encode_reply(ReplyCode.SUCCEEDED, association.bound))
    except BaseException:
        association.close()
        raise
    association.run()


def _upstream_relay(conn: Conn, ctx: Context) -> UdpRelay | None:
    """A relay through the first upstream that carries UDP and works; None without upstreams.
    Answers the client itself when there is none: 0x07 when no upstream can carry UDP, else
    the upstream's error."""
    try:
        upstreams = udp_upstreams(ctx.dialer)
        if upstreams is None:
            return None
        upstream, relay = open_relay(upstreams, ctx.config.connect_timeout, ctx.outbound)
    except DialError as exc:
        conn.sendall(socks5.encode_reply(exc.reply))
        if exc.reply == ReplyCode.COMMAND_NOT_SUPPORTED:
            raise ClientProtocolError(f"UDP ASSOCIATE: {exc}", reason=Outcome.BAD_COMMAND) from None
        raise
    dialled_via.set(str(upstream.upstream))  # via= in the access log
    return relay


# -- --udp-forward -----------------------------------------------------------------


class _Mapping:
    """One client of a UDP forwarder: its own socket toward the target."""

    __slots__ = ("client", "sock", "raw", "session", "last", "loop")

    def __init__(self, client: tuple[object, ...], sock: socket.socket, session: Session, now: int) -> None:
        self.client = client
        self.sock = sock
        self.raw = raw_socket(sock)
        self.session = session
        self.last = now
        self.loop: gevent.Greenlet | None = None

    def close(self) -> None:
        if self.loop is not None:
            self.loop.kill(block=False)
            self.loop = None  # a killed greenlet keeps its GreenletExit, whose frames point back here
        self.sock.close()


class UdpForwarder(UdpService[tuple[object, ...], _Mapping]):
    """``--udp-forward ADDR=HOST:PORT``: a Service over the bound listener socket.

    Each client address gets its own socket connected to the target, so the
    kernel hands each reply to the mapping of the client that caused it.
    Mappings idle for the idle timeout expire; at most MAX_MAPPINGS are kept.
    """

    label = "udp-forward"

    def __init__(self, proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> None:
        assert spec.target is not None
        super().__init__(proxy, sock, proxy.config.idle_timeout)
        self.proxy = proxy
        self.spec = spec
        self.target = spec.target
        self.ctx = proxy.context(spec)
        self._target: tuple[int, tuple[object, ...], float] | None = None
        # Our own UDP listeners: a target among them turns one datagram into a storm
        # (each one relayed comes back from a new source port: a new mapping).
        own = (addr for kind, addr in proxy.addresses if kind == spec.kind)
        self.own = DestinationPolicy((ip, addr.port) for addr in own if (ip := addr.ip) is not None)
        ip = self.target.ip
        if ip is not None:
            try:
                self.own.check_ip(ip, self.target.port)
            except Denied as exc:
                raise ConfigError(f"--udp-forward target {self.target}: {exc}: datagrams would loop") from None

    @property
    def max_mappings(self) -> int:
        return self.mappings.limit

    @max_mappings.setter
    def max_mappings(self, limit: int) -> None:
        self.mappings.limit = limit

    def datagram(self, buf: memoryview, n: int, client: tuple[object, ...]) -> None:
        mappings = self.mappings
        mapping = mappings.get(client)
        data: memoryview | bytes = buf[:n]
        if mapping is None:
            data = bytes(data)  # opening a mapping may yield (DNS)
            mapping = self._open(client)
            if mapping is None:
                return
        mapping.last = mappings.clock
        try:
            mapping.raw.send(data)
        except OSError:  # EAGAIN, or ECONNREFUSED from an earlier ICMP: this datagram only, never counted
            self.proxy.metrics.udp_datagram("udp-forward", "up", dropped="send_failed")
            return
        mapping.session.up += n
        self.proxy.metrics.udp_datagram("udp-forward", "up")

    def _open(self, client: tuple[object, ...]) -> _Mapping | None:
        ip = parse_ip(str(client[0]))
        if ip is None or not self.proxy.clients.permits(ip):
            return None
        try:
            family, sockaddr = self._resolve_target()
            sock = outbound_udp_socket(self.ctx.outbound, family)
        except (OSError, Denied) as exc:
            self.warn(f"{self.target}: {exc}")
            return None
        try:
            sock.connect(sockaddr)  # the kernel now drops datagrams from anyone but the target
        except OSError as exc:
            sock.close()
            self.warn(f"{self.target}: {exc}")
            return None
        session = Session(from_sockaddr(client), self.spec.kind, proto="udp-forward", cmd="udp", dest=str(self.target))
        self.proxy.metrics.session_opened(self.spec.kind)
        mapping = self.mappings.add(client, _Mapping(client, sock, session, self.mappings.clock))
        mapping.loop = gevent.spawn(self._reply_loop, mapping)
        return mapping

    def _resolve_target(self) -> tuple[int, tuple[object, ...]]:
        """The target's first address, re-resolved every NAME_TTL seconds."""
        now = time.monotonic()
        if self._target is None or self._target[2] < now:
            timed_out = DialError(f"resolving {self.target.host} timed out", ReplyCode.TTL_EXPIRED)
            with gevent.Timeout(self.proxy.config.connect_timeout, timed_out):
                addrs = resolve(self.target, self.ctx.resolver)
            family, sockaddr = self._first_not_own(addrs)
            self._target = (family, sockaddr, now + NAME_TTL)
        return self._target[0], self._target[1]

    def _first_not_own(self, addrs: list[tuple[int, tuple[object, ...]]]) -> tuple[int, tuple[object, ...]]:
        """The first resolved address that is not one of our own UDP listeners; Denied if none."""
        refused: Denied = Denied(f"{self.target.host} has no address")
        for family, sockaddr in addrs:
            ip = parse_ip(str(sockaddr[0]))
            try:
                if ip is None:
                    raise Denied(f"{self.target.host} resolved to {sockaddr[0]!r}")
                self.own.check_ip(ip, self.target.port)
            except Denied as exc:
                refused = exc
                continue
            return family, sockaddr
        raise refused

    def _reply_loop(self, mapping: _Mapping) -> None:
        buf = hub_buffer()
        listener = raw_socket(self.sock)
        metrics = self.proxy.metrics
        for n in received_sizes(mapping.sock, buf):
            mapping.last = self.mappings.clock
            try:
                listener.sendto(buf[:n], mapping.client)
            except OSError:  # EAGAIN included: dropped, never counted as sent
                metrics.udp_datagram("udp-forward", "down", dropped="send_failed")
                continue
            mapping.session.down += n
            metrics.udp_datagram("udp-forward", "down")
