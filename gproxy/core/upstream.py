"""``--upstream URL``: chain every outbound connection through another proxy.

The dialers speak the client side of SOCKS5, SOCKS4/4a and HTTP CONNECT (over
TLS for https:// and socks5+tls://) with the same sans-I/O codecs the server
side uses (URLs are parsed once, at config time, by ``upstream_url``; groups
of upstreams are ``upstream_group``). Messages name the upstream redacted.
"""

from __future__ import annotations

import base64
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar, cast

import gevent
import h11

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.codec.socks5 import AuthMethod, Command
from gproxy.core.addr import Address, parse_ip
from gproxy.core.dial import DirectDialer, IPCheck, Prepare, Resolver, reply_for, resolve, system_resolve
from gproxy.core.errors import ClientClosed, ClientProtocolError, Denied, DialError, UpstreamDown
from gproxy.core.stream import Conn
from gproxy.core.tls_client import client_context, tls_connect
from gproxy.core.upstream_url import Upstream

if TYPE_CHECKING:
    import ssl  # imported lazily (see client_context): gevent patches it at start

T = TypeVar("T")
#: the largest HTTP response head we read from an HTTP upstream
MAX_HEAD = 16384


class UpstreamDialer:
    """Connect to the upstream proxy (TLS for https:// and socks5+tls://), then ask it for the destination.

    Failing to reach the upstream maps through the usual dial table; the
    upstream's own refusals map to the reply code it gave (SOCKS5), 0x5B
    -> 0x01 (SOCKS4), or its HTTP status (403 -> 0x02, 502 -> 0x04,
    504 -> 0x06, anything else -> 0x01). Failures of the upstream itself
    raise UpstreamDown; the destination's, plain DialError.
    """

    def __init__(
        self,
        upstream: Upstream,
        resolver: Resolver = system_resolve,
        tls: ssl.SSLContext | None = None,
        prepare: Prepare | None = None,
    ) -> None:
        self.upstream = upstream
        self.resolver = resolver
        self._direct = DirectDialer(resolver, prepare=prepare)  # the upstream is the operator's: no rules
        #: the TLS schemes only; the system's store when no context is given
        self.tls = (tls or client_context(())) if upstream.tls else None

    def dial(
        self, dest: Address, timeout: float, check: IPCheck | None = None, *, reach_timeout: float | None = None
    ) -> socket.socket:
        """``reach_timeout`` bounds reaching the upstream and its own handshake (a group
        leaves time for the next upstream); ``timeout`` bounds the whole dial."""
        up = self.upstream
        started = time.monotonic()
        deadline = started + timeout
        reach = timeout if reach_timeout is None else min(reach_timeout, timeout)
        try:
            sock = self._direct.dial(up.address, reach)
        except DialError as exc:
            raise UpstreamDown(f"upstream {up}: {exc}", exc.reply) from None
        requested = False  # past the upstream's own handshake: what fails now is the destination's
        timer = gevent.Timeout(max(started + reach - time.monotonic(), 0.001))
        timer.start()
        try:
            if self.tls is not None:
                sock = tls_connect(sock, self.tls, up.host)
            conn = Conn(sock)
            self.greet(conn)
            timer.close()
            timer = gevent.Timeout(max(deadline - time.monotonic(), 0.001))
            timer.start()
            requested = True
            self.request(conn, dest, check)
        except gevent.Timeout as exc:
            sock.close()
            if exc is not timer:
                raise
            if requested:
                raise DialError(f"upstream {up}: no answer for {dest} in time", ReplyCode.TTL_EXPIRED) from None
            raise UpstreamDown(f"upstream {up}: no answer in time", ReplyCode.TTL_EXPIRED) from None
        except (DialError, Denied):  # already says whose fault it is
            sock.close()
            raise
        except ClientClosed:
            sock.close()
            raise UpstreamDown(f"upstream {up} closed the connection", ReplyCode.GENERAL_FAILURE) from None
        except ClientProtocolError as exc:
            sock.close()
            raise UpstreamDown(f"upstream {up}: {exc}", ReplyCode.GENERAL_FAILURE) from None
        except OSError as exc:  # reset, TLS failure (SSLCertVerificationError is a ValueError too)
            sock.close()
            raise UpstreamDown(f"upstream {up}: {exc}", reply_for(exc)) from None
        except (ValueError, h11.LocalProtocolError) as exc:  # a destination this protocol cannot carry
            sock.close()
            raise DialError(f"upstream {up}: {exc}", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED) from None
        except BaseException:
            sock.close()
            raise
        finally:
            timer.close()
        return sock

    def greet(self, conn: Conn) -> None:
        """The upstream's own handshake (methods, credentials); nothing about the destination yet."""

    def request(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        raise NotImplementedError

    def refused(self, why: str, reply: ReplyCode) -> DialError:
        """The upstream works and reports that the destination failed."""
        return DialError(f"upstream {self.upstream}: {why}", reply)

    def broken(self, why: str) -> UpstreamDown:
        """The upstream itself failed its handshake."""
        return UpstreamDown(f"upstream {self.upstream}: {why}", ReplyCode.GENERAL_FAILURE)


class Socks5Upstream(UpstreamDialer):
    """RFC 1928 CONNECT through a SOCKS5 proxy; names go as names (remote DNS)."""

    def greet(self, conn: Conn) -> None:
        up = self.upstream
        methods: list[int] = [AuthMethod.NO_AUTH]
        if up.username is not None:
            methods.append(AuthMethod.USERNAME_PASSWORD)
        conn.sendall(socks5.encode_greeting(methods))
        method = _parse_all(socks5.parse_method_choice, conn.read_exact(2))
        if method == AuthMethod.USERNAME_PASSWORD and up.username is not None:
            conn.sendall(socks5.encode_auth(up.username.encode(), (up.password or "").encode()))
            if not _parse_all(socks5.parse_auth_reply, conn.read_exact(2)):
                raise self.broken("it rejected our user name or password")
        elif method != AuthMethod.NO_AUTH:
            raise self.broken(f"it wants authentication method {method:#04x}")

    def request(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        conn.sendall(socks5.encode_request(Command.CONNECT, dest))
        head = conn.read_exact(5)  # VER REP RSV ATYP and the first address byte
        rest = {int(socks5.AddressType.IPV4): 5, int(socks5.AddressType.IPV6): 17}.get(head[3], head[4] + 2)
        reply = _parse_all(socks5.parse_reply, head + conn.read_exact(rest))
        if reply.code != ReplyCode.SUCCEEDED:
            code = ReplyCode(reply.code) if reply.code in ReplyCode._value2member_map_ else ReplyCode.GENERAL_FAILURE
            raise self.refused(f"it answered {reply.code:#04x} for {dest}", code)


class Socks4Upstream(UpstreamDialer):
    """SOCKS4 (names resolved here, and checked) or SOCKS4a (names sent as names)."""

    def request(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        from gproxy.codec import socks4  # noqa: PLC0415 (the SOCKS4 codec lives with its front end)

        address = dest
        if self.upstream.scheme == "socks4" and dest.ip is None:
            address = self._resolve_v4(dest, check)
        if address.ip is not None and address.ip.version != 4:
            raise self.refused(f"SOCKS4 cannot carry the IPv6 address {dest}", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
        conn.sendall(socks4.encode_request(Command.CONNECT, address, (self.upstream.username or "").encode()))
        reply = _parse_all(socks4.parse_reply, conn.read_exact(8))
        if reply.code in (socks4.Reply.NO_IDENTD, socks4.Reply.IDENTD_MISMATCH):
            raise self.broken(f"it answered {reply.code:#04x} (identd) for our user id")
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

    def request(self, conn: Conn, dest: Address, check: IPCheck | None) -> None:
        up = self.upstream
        target = str(dest).encode()
        headers = [(b"Host", target)]
        if up.username is not None:
            token = base64.b64encode(f"{up.username}:{up.password or ''}".encode()).decode()
            headers.append((b"Proxy-Authorization", f"Basic {token}".encode()))
        http = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        conn.sendall(http.send(h11.Request(method=b"CONNECT", target=target, headers=headers)))
        peek = self.tls is None  # TLS cannot peek: the head is read a byte at a time instead
        http.receive_data(read_head(conn.sock, MAX_HEAD, peek))
        try:
            event = http.next_event()
            while isinstance(event, h11.InformationalResponse):
                http.receive_data(read_head(conn.sock, MAX_HEAD, peek))
                event = http.next_event()
        except h11.RemoteProtocolError as exc:
            raise self.broken(f"bad HTTP response: {exc}") from None
        if not isinstance(event, h11.Response):
            raise self.broken("no HTTP response")
        if event.status_code == 407:
            raise self.broken("it answered HTTP 407 (our credentials were missing or wrong)")
        if not 200 <= event.status_code < 300:
            why = f"it answered HTTP {event.status_code} for {dest}"
            raise self.refused(why, HTTP_STATUS_REPLY.get(event.status_code, ReplyCode.GENERAL_FAILURE))


def read_head(sock: socket.socket, limit: int, peek: bool = True) -> bytes:
    """Read one HTTP head (through the blank line) and not a byte more.

    Peeks, then consumes only what belongs to the head, so bytes the
    destination sends right after the 200 stay in the socket for the relay.
    Without ``peek`` (TLS), reads one byte at a time.
    """
    if not peek:
        return _read_head_bytewise(sock, limit)
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


def _read_head_bytewise(sock: socket.socket, limit: int) -> bytes:
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        if len(head) >= limit:
            raise ClientProtocolError(f"HTTP response head larger than {limit} bytes")
        byte = sock.recv(1)  # TLS: from the record already decrypted, no syscall
        if not byte:
            raise ClientClosed("upstream closed the connection")
        head += byte
    return bytes(head)


def _parse_all(parse: Callable[[bytes], tuple[T, int] | None], buf: bytes) -> T:
    """Run a codec parser on a buffer that must hold exactly one whole message."""
    parsed = parse(buf)
    if parsed is None:
        raise ClientProtocolError("short reply")
    return parsed[0]


def upstream_dialer(
    upstream: Upstream,
    resolver: Resolver = system_resolve,
    tls: ssl.SSLContext | None = None,
    prepare: Prepare | None = None,
) -> UpstreamDialer:
    """The dialer for an upstream URL's scheme; ``tls`` (see client_context()) for the TLS schemes;
    ``prepare`` for the connection to the upstream (--outgoing, --mark)."""
    if upstream.scheme == "ss":
        from gproxy.core.upstream_ss import SsUpstreamDialer

        return cast(UpstreamDialer, SsUpstreamDialer(upstream, resolver, prepare))  # the same dial() interface
    if upstream.scheme in ("http", "https"):
        return HttpUpstream(upstream, resolver, tls, prepare)
    if upstream.scheme.startswith("socks4"):
        return Socks4Upstream(upstream, resolver, prepare=prepare)
    return Socks5Upstream(upstream, resolver, tls, prepare)
