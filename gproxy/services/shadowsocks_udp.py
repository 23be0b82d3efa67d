"""``--ss ADDR``, UDP: Shadowsocks AEAD datagrams on the TCP listener's port number.

Each packet is ``salt seal(address header + payload)``; the user is whoever's key opens it (the
key that opened a client address's last packet is tried first). Destination rules apply to every
packet. Each (client address, user) gets its own outbound socket (a mapping, expired when idle);
replies come back sealed with that user's key, headed with their source address. Only
destinations the mapping sent to may answer. A packet whose salt was seen recently (on TCP or UDP,
by any worker: the one replay filter of ``ss_keys.salt_filter``) is dropped silently, as one no key
opens (metric reason ``ss_probe``); only packets that open are remembered, so only a user can push
salts out of the filter. Our replies' salts are not remembered (as shadowsocks-libev).
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import gevent

from gproxy.codec import socks5
from gproxy.codec.shadowsocks import ShadowsocksError, decrypt_udp, encrypt_udp, method_by_name, try_udp_keys
from gproxy.core._gevent import raw_socket
from gproxy.core.addr import Address, from_sockaddr, parse_ip
from gproxy.core.config import ListenerSpec
from gproxy.core.errors import ClientProtocolError, ConfigError, Denied, DialError
from gproxy.core.log import logger
from gproxy.core.relay import Limits
from gproxy.core.session import Session
from gproxy.core.ss_keys import keyring_for, salt_filter, users_generation
from gproxy.core.tunnel import rate_limits
from gproxy.core.udp_mappings import Sockaddr, UdpService, hub_buffer, received
from gproxy.frontends.udp import MAX_PEERS, NAME_TTL, _remember, outbound_udp_socket, resolve_datagram_dest

if TYPE_CHECKING:
    from gproxy.server.proxy import Proxy


class _Mapping:
    """One (client address, user): outbound sockets per family, the destinations it sent to."""

    __slots__ = ("client", "user", "key", "session", "outbound", "by_dest", "by_source", "last", "loops", "limits")

    def __init__(self, client: Sockaddr, user: str, key: bytes, session: Session, now: int, limits: Limits) -> None:
        self.client = client
        self.limits = limits  # the user's buckets: over the rate, a datagram is dropped
        self.user = user
        self.key = key
        self.session = session
        self.outbound: dict[int, tuple[socket.socket, socket.socket]] = {}  # family -> socket, its kernel socket
        self.by_dest: dict[bytes, tuple[int, Sockaddr, float] | Denied] = {}  # address header -> where
        self.by_source: dict[tuple[str, int], bytes] = {}  # a destination that may answer -> its header
        self.last = now
        self.loops: list[gevent.Greenlet] = []

    def close(self) -> None:
        gevent.killall(self.loops, block=False)
        self.loops = []  # a killed greenlet keeps its GreenletExit, whose frames point back here
        for sock, _ in self.outbound.values():
            sock.close()


class ShadowsocksUdp(UdpService[tuple[Sockaddr, str], _Mapping]):
    """The UDP half of an --ss listener: a Service over its bound UDP socket."""

    label = "ss udp"

    def __init__(self, proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> None:
        super().__init__(proxy, sock, proxy.config.idle_timeout)
        self.proxy = proxy
        self.spec = replace(spec, kind="ss")  # rules, sessions and metrics of the ss listener
        self.ctx = proxy.context(self.spec)
        self.method = method_by_name(proxy.config.ss_method)
        self.keyring = keyring_for(self.method)
        if not self._keys():
            raise ConfigError("--ss needs a user with a clear-text password: the password is the key")
        self.last_user: dict[Sockaddr, str] = {}  # client address -> the user its last packet opened with

    def _keys(self) -> tuple[tuple[str, bytes], ...]:
        return self.keyring.keys(self.proxy.config, users_generation(self.proxy.users))

    # -- client -> destinations ---------------------------------------------------------------

    def _open(self, packet: memoryview) -> tuple[str, bytes, bytes] | None:
        """(user, key, plaintext) of the first key that opens ``packet``."""
        opened = try_udp_keys(self.method, ((user_key, user_key[1]) for user_key in self._keys()), packet)
        if opened is None:
            return None
        (user, key), plain = opened
        return user, key, plain

    def datagram(self, buf: memoryview, n: int, client: Sockaddr) -> None:
        ip = parse_ip(str(client[0]))
        if ip is None or not self.proxy.clients.permits(ip):
            return
        metrics = self.proxy.metrics
        packet = buf[:n]
        opened = None
        last = self.last_user.get(client)
        if last is not None:
            mapping = self.mappings.get((client, last))
            if mapping is not None:
                try:
                    opened = last, mapping.key, decrypt_udp(mapping.key, self.method, packet)
                except ShadowsocksError:
                    opened = None
        if opened is None:
            opened = self._open(packet)
        if opened is None or not salt_filter().add(packet[: self.method.salt_size]):  # a probe or a replay
            metrics.udp_datagram("ss", "up", dropped="ss_probe")
            return
        user, key, plain = opened
        try:
            parsed = socks5.parse_address(plain, 0)
        except ClientProtocolError:
            parsed = None
        if parsed is None:
            metrics.udp_datagram("ss", "up", dropped="malformed")
            return
        dest, start = parsed
        mapping = self._mapping(client, user, key)
        header = plain[:start]
        peer = mapping.by_dest.get(header)
        if peer is None or (not isinstance(peer, Denied) and peer[2] < time.monotonic()):
            peer = self._lookup(mapping, header, dest)
        if isinstance(peer, Denied):
            logger.debug("%s: ss udp datagram dropped: %s", mapping.session.client, peer)
            metrics.udp_datagram("ss", "up", dropped="denied")
            return
        family, sockaddr, _ = peer
        data = memoryview(plain)[start:]
        if mapping.limits is not None and not mapping.limits[0].take_whole(len(data)):
            metrics.udp_datagram("ss", "up", dropped="rate")
            return
        try:
            (mapping.outbound.get(family) or self._open_outbound(mapping, family))[1].sendto(data, sockaddr)
        except OSError:
            metrics.udp_datagram("ss", "up", dropped="send_failed")
            return
        mapping.last = self.mappings.clock
        mapping.session.up += len(data)
        metrics.udp_datagram("ss", "up")

    def _mapping(self, client: Sockaddr, user: str, key: bytes) -> _Mapping:
        if client not in self.last_user and len(self.last_user) > MAX_PEERS * 4:
            self.last_user = {c: u for c, u in self.mappings}  # forget clients whose mappings ended
        self.last_user[client] = user
        mapping = self.mappings.get((client, user))
        if mapping is not None:
            return mapping
        session = Session(from_sockaddr(client), "ss", proto="ss", user=user, cmd="udp")
        self.proxy.metrics.session_opened("ss")
        limits = rate_limits(replace(self.ctx, config=self.proxy.config), session)  # the rate as of now (SIGHUP)
        return self.mappings.add((client, user), _Mapping(client, user, key, session, self.mappings.clock, limits))

    def _lookup(self, mapping: _Mapping, header: bytes, dest: Address) -> tuple[int, Sockaddr, float] | Denied:
        """Check (with the user's rules) and resolve a destination; remembered for NAME_TTL."""
        try:
            found = resolve_datagram_dest(self.ctx, mapping.user, dest)
        except DialError as exc:
            return Denied(str(exc))  # not remembered: resolution may work next time
        result: tuple[int, Sockaddr, float] | Denied
        if isinstance(found, Denied):
            result = found
        else:
            family, sockaddr = found
            result = (family, sockaddr, time.monotonic() + NAME_TTL)
            _remember(mapping.by_source, (str(sockaddr[0]), dest.port), header)
        _remember(mapping.by_dest, header, result)
        if mapping.session.dest == "-":
            mapping.session.dest = str(dest)
        return result

    def _open_outbound(self, mapping: _Mapping, family: int) -> tuple[socket.socket, socket.socket]:
        """The mapping's socket of ``family`` (replies read by a loop of its own) and its kernel socket."""
        sock = outbound_udp_socket(self.ctx.outbound, family)
        out = mapping.outbound[family] = sock, raw_socket(sock)
        mapping.loops.append(gevent.spawn(self._reply_loop, mapping, sock))
        return out

    # -- destinations -> client -----------------------------------------------------------------

    def _reply_loop(self, mapping: _Mapping, sock: socket.socket) -> None:
        buf = hub_buffer()
        listener = raw_socket(self.sock)
        metrics = self.proxy.metrics
        for n, source in received(sock, buf):
            header = mapping.by_source.get((str(source[0]), int(source[1])))
            if header is None:
                metrics.udp_datagram("ss", "down", dropped="unknown_source")
                continue
            if mapping.limits is not None and not mapping.limits[1].take_whole(n):
                metrics.udp_datagram("ss", "down", dropped="rate")
                continue
            # the source as it really is (a name the client sent is answered with the address)
            reply = socks5.encode_address(from_sockaddr(source)) + buf[:n]
            try:
                listener.sendto(encrypt_udp(mapping.key, self.method, reply), mapping.client)
            except OSError:
                continue
            mapping.last = self.mappings.clock
            mapping.session.down += n
            metrics.udp_datagram("ss", "down")
