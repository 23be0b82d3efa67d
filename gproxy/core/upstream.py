"""``--upstream URL``: chain every outbound connection through another proxy.

The dialers speak the client side of SOCKS5, SOCKS4/4a and HTTP CONNECT with
the same sans-I/O codecs the server side uses (URLs are parsed once, at
config time, by ``upstream_url``). Messages name the upstream redacted.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from typing import TypeVar, cast

import gevent
import h11

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.codec.socks5 import AuthMethod, Command
from gproxy.core.addr import Address, parse_ip
from gproxy.core.dial import DirectDialer, IPCheck, Resolver, resolve, system_resolve
from gproxy.core.errors import ClientClosed, ClientProtocolError, Denied, DialError
from gproxy.core.stream import Conn
from gproxy.core.upstream_url import Upstream

T = TypeVar("T")
#: the largest HTTP response head we read from an HTTP upstream
MAX_HEAD = 16384


class UpstreamDialer:
    """Connect to the upstream proxy, then ask it for the destination.

    Failing to reach the upstream maps through the usual dial table; the
    upstream's own refusals map to the reply code it gave (SOCKS5), 0x5B
    -> 0x01 (SOCKS4), or its HTTP status (403 -> 0x02, 502 -> 0x04,
    504 -> 0x06, anything else -> 0x01).
    """

    def __init__(self, upstream: Upstream, resolver: Resolver = system_resolve) -> None:
        self.upstream = upstream
        self.resolver = resolver
        self._direct = DirectDialer(resolver)  # the upstream itself is the operator's: no rules

    def dial(self, dest: Address, timeout: float, check: IPCheck | None = None) -> socket.socket:
        deadline = time.monotonic() + timeout
        try:
            sock = self._direct.dial(self.upstream.address, timeout)
        except DialError as exc:
            raise DialError(f"upstream {self.upstream}: {exc}", exc.reply) from None
        remaining = max(deadline - time.monotonic(), 0.001)
        timed_out = DialError(f"upstream {self.upstream}: no answer in time", ReplyCode.TTL_EXPIRED)
        try:
            with gevent.Timeout(remaining, timed_out):
                self.handshake(Conn(sock), dest, check)
        except ClientClosed:
            sock.close()
            raise DialError(f"upstream {self.upstream} closed the connection", ReplyCode.GENERAL_FAILURE) from None
        except ClientProtocolError as exc:
            sock.close()
            raise DialError(f"upstream {self.upstream}: {exc}", ReplyCode.GENERAL_FAILURE) from None
        except (ValueError, h11.LocalProtocolError) as exc:  # a destination this protocol cannot carry
            sock.close()
            raise DialError(f"upstream {self.upstream}: {exc}", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED) from None
        except BaseException:
            sock.close()
            raise
        return sock

    def handshake(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        raise NotImplementedError

    def refused(self, why: str, reply: ReplyCode) -> DialError:
        return DialError(f"upstream {self.upstream}: {why}", reply)


class Socks5Upstream(UpstreamDialer):
    """RFC 1928 CONNECT through a SOCKS5 proxy; names go as names (remote DNS)."""

    def handshake(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        up = self.upstream
        methods: list[int] = [AuthMethod.NO_AUTH]
        if up.username is not None:
            methods.append(AuthMethod.USERNAME_PASSWORD)
        conn.sendall(socks5.encode_greeting(methods))
        method = _parse_all(socks5.parse_method_choice, conn.read_exact(2))
        if method == AuthMethod.USERNAME_PASSWORD and up.username is not None:
            conn.sendall(socks5.encode_auth(up.username.encode(), (up.password or "").encode()))
            if not _parse_all(socks5.parse_auth_reply, conn.read_exact(2)):
                raise self.refused("it rejected our user name or password", ReplyCode.GENERAL_FAILURE)
        elif method != AuthMethod.NO_AUTH:
            raise self.refused(f"it wants authentication method {method:#04x}", ReplyCode.GENERAL_FAILURE)
        conn.sendall(socks5.encode_request(Command.CONNECT, dest))
        head = conn.read_exact(5)  # VER REP RSV ATYP and the first address byte
        rest = {int(socks5.AddressType.IPV4): 5, int(socks5.AddressType.IPV6): 17}.get(head[3], head[4] + 2)
        reply = _parse_all(socks5.parse_reply, head + conn.read_exact(rest))
        if reply.code != ReplyCode.SUCCEEDED:
            code = ReplyCode(reply.code) if reply.code in ReplyCode._value2member_map_ else ReplyCode.GENERAL_FAILURE
            raise self.refused(f"it answered {reply.code:#04x} for {dest}", code)


class Socks4Upstream(UpstreamDialer):
    """SOCKS4 (names resolved here, and checked) or SOCKS4a (names sent as names)."""

    def handshake(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        from gproxy.codec import socks4  # noqa: PLC0415 (the SOCKS4 codec lives with its front end)

        address = dest
        if self.upstream.scheme == "socks4" and dest.ip is None:
            address = self._resolve_v4(dest, check)
        if address.ip is not None and address.ip.version != 4:
            raise self.refused(f"SOCKS4 cannot carry the IPv6 address {dest}", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
        conn.sendall(socks4.encode_request(Command.CONNECT, address, (self.upstream.username or "").encode()))
        reply = _parse_all(socks4.parse_reply, conn.read_exact(8))
        if reply.code != socks4.Reply.GRANTED:
            raise self.refused(f"it answered {reply.code:#04x} for {dest}", ReplyCode.GENERAL_FAILURE)

    def _resolve_v4(self, dest: Address, check: IPCheck | None) -> Address:
        denied: Denied | None = None
        for family, sockaddr in resolve(dest, self.resolver):
            ip = parse_ip(str(sockaddr[0]))
            if family != socket.AF_INET or ip is None:
                continue
            try:
                if check is not None:
                    check(ip, dest.port)
            except Denied as exc:
                denied = exc
                continue
            return Address(str(ip), dest.port)
        if denied is not None:
            raise denied
        raise self.refused(f"{dest.host} has no IPv4 address (try socks4a://)", ReplyCode.HOST_UNREACHABLE)


#: HTTP status from an upstream -> the reply code front ends answer with
HTTP_STATUS_REPLY = {
    403: ReplyCode.NOT_ALLOWED,
    502: ReplyCode.HOST_UNREACHABLE,
    504: ReplyCode.TTL_EXPIRED,
}


class HttpUpstream(UpstreamDialer):
    """``CONNECT host:port`` through an HTTP proxy, with Basic auth if given."""

    def handshake(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        up = self.upstream
        target = str(dest).encode()
        headers = [(b"Host", target)]
        if up.username is not None:
            token = base64.b64encode(f"{up.username}:{up.password or ''}".encode()).decode()
            headers.append((b"Proxy-Authorization", f"Basic {token}".encode()))
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        conn.sendall(http.send(h11.Request(method=b"CONNECT", target=target, headers=headers)))
        http.receive_data(read_head(conn.sock, MAX_HEAD))
        try:
            event = http.next_event()
            while isinstance(event, h11.InformationalResponse):
                http.receive_data(read_head(conn.sock, MAX_HEAD))
                event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise self.refused(f"bad HTTP response: {exc}", ReplyCode.GENERAL_FAILURE) from None
        if not isinstance(event, h11.Response):
            raise self.refused("no HTTP response", ReplyCode.GENERAL_FAILURE)
        if not 200 <= event.status_code < 300:
            why = f"it answered HTTP {event.status_code} for {dest}"
            if event.status_code == 407:
                why += " (our credentials were missing or wrong)"
            raise self.refused(why, HTTP_STATUS_REPLY.get(event.status_code, ReplyCode.GENERAL_FAILURE))


def read_head(sock: socket.socket, limit: int) -> bytes:
    """Read one HTTP head (through the blank line) and not a byte more.

    Peeks, then consumes only what belongs to the head, so bytes the
    destination sends right after the 200 stay in the socket for the relay.
    """
    head = bytearray()
    while True:
        peeked = sock.recv(limit, socket.MSG_PEEK)
        if not peeked:
            raise ClientClosed("upstream closed the connection")
        window = bytes(head[-3:]) + peeked
        end = window.find(b"\r\n\r\n")
        take = len(peeked) if end < 0 else end + 4 - len(head[-3:])
        while take > 0:  # peeked bytes are there: this does not block
            chunk = sock.recv(take)
            if not chunk:
                raise ClientClosed("upstream closed the connection")
            head += chunk
            take -= len(chunk)
        if end >= 0:
            return bytes(head)
        if len(head) >= limit:
            raise ClientProtocolError(f"HTTP response head larger than {limit} bytes")


def _parse_all(parse: Callable[[bytes], tuple[T, int] | None], buf: bytes) -> T:
    """Run a codec parser on a buffer that must hold exactly one whole message."""
    parsed = parse(buf)
    if parsed is None:
        raise ClientProtocolError("short reply")
    return parsed[0]


def upstream_dialer(upstream: Upstream, resolver: Resolver = system_resolve) -> UpstreamDialer:
    """The dialer for an upstream URL's scheme."""
    if upstream.scheme == "ss":
        from gproxy.core.upstream_ss import SsUpstreamDialer  # noqa: PLC0415

        return cast(UpstreamDialer, SsUpstreamDialer(upstream, resolver))  # the same dial() interface
    if upstream.scheme == "http":
        return HttpUpstream(upstream, resolver)
    if upstream.scheme.startswith("socks4"):
        return Socks4Upstream(upstream, resolver)
    return Socks5Upstream(upstream, resolver)
