"""Outbound connections: the Dialer interface, direct dialing and error mapping.

``dial(dest, timeout)`` returns a connected socket or raises DialError whose
``reply`` is the SOCKS5 code that front ends translate into their own answer.
Upstream proxies (chaining) implement the same interface in ``upstream.py``.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable
from typing import Protocol

import gevent
from gevent import socket as gsocket

from gproxy.codec.replies import ReplyCode
from gproxy.core import happy_eyeballs
from gproxy.core.addr import Address, IPAddress, canonical_host, parse_ip_cached
from gproxy.core.errors import ClientProtocolError, Denied, DialError

#: errno -> SOCKS5 reply code (microsocks' connect_socks_target table)
ERRNO_TO_REPLY: dict[int, ReplyCode] = {
    errno.ECONNREFUSED: ReplyCode.CONNECTION_REFUSED,
    errno.ENETUNREACH: ReplyCode.NETWORK_UNREACHABLE,
    errno.ENETDOWN: ReplyCode.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: ReplyCode.HOST_UNREACHABLE,
    errno.EHOSTDOWN: ReplyCode.HOST_UNREACHABLE,
    errno.ETIMEDOUT: ReplyCode.TTL_EXPIRED,
    errno.EADDRNOTAVAIL: ReplyCode.HOST_UNREACHABLE,
}

#: (family, sockaddr) pairs, as getaddrinfo gives them
Resolved = list[tuple[int, tuple[object, ...]]]
Resolver = Callable[[str, int], Resolved]
#: called for every resolved IP before connecting; raises Denied to refuse it
IPCheck = Callable[[IPAddress, int], None]
#: called on every new outbound socket before it connects (--mark, --outgoing)
Prepare = happy_eyeballs.Prepare


class Dialer(Protocol):
    def dial(self, dest: Address, timeout: float, check: IPCheck | None = None) -> socket.socket:
        """``check``, when given, replaces the dialer's own check for every resolved address."""
        ...


def reply_for(exc: BaseException) -> ReplyCode:
    """The SOCKS5 reply code that best describes a failed connect."""
    if isinstance(exc, DialError | Denied):
        return exc.reply
    if isinstance(exc, socket.gaierror):
        return ReplyCode.HOST_UNREACHABLE
    if isinstance(exc, TimeoutError | socket.timeout):
        return ReplyCode.TTL_EXPIRED
    if isinstance(exc, OSError) and exc.errno is not None:
        return ERRNO_TO_REPLY.get(exc.errno, ReplyCode.GENERAL_FAILURE)
    return ReplyCode.GENERAL_FAILURE


def system_resolve(host: str, port: int) -> Resolved:
    """getaddrinfo for TCP; IPv6 and IPv4 results in the system's order."""
    infos = gsocket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def resolve(dest: Address, resolver: Resolver) -> Resolved:
    """Literal IPs skip the resolver (no DNS round trip for them); a name reaches it only
    in its canonical ASCII form (a malformed one never does: HOST_UNREACHABLE)."""
    ip = dest.ip
    if ip is not None:
        if ip.version == 4:  # ipaddress takes only the canonical dotted quad: host is str(ip)
            return [(socket.AF_INET, (dest.host, dest.port))]
        return [(socket.AF_INET6, (dest.host, dest.port, 0, 0))]
    try:
        return resolver(canonical_host(dest.host), dest.port)
    except ClientProtocolError as exc:
        raise DialError(str(exc), ReplyCode.HOST_UNREACHABLE) from None
    except DialError:
        raise
    except (OSError, UnicodeError) as exc:
        raise DialError(f"cannot resolve {dest.host}: {exc}", ReplyCode.HOST_UNREACHABLE) from None


def connect_any(
    addrs: Resolved,
    timeout: float,
    check: IPCheck | None = None,
    what: object = "",
    prepare: Prepare | None = None,
) -> socket.socket:
    """Connect to the first address that answers, Happy Eyeballs style (RFC 8305), within
    ``timeout`` overall; addresses ``check`` refuses are left out.

    ``what`` names the destination in errors (formatted only when one is raised).
    """
    denied: Denied | None = None
    if check is not None:
        allowed = []
        for family, sockaddr in addrs:
            try:
                check(parse_ip_cached(str(sockaddr[0])), int(sockaddr[1]))  # type: ignore[arg-type, call-overload]
            except Denied as exc:
                denied = exc
                continue
            allowed.append((family, sockaddr))
        addrs = allowed
    if not addrs:
        if denied is not None:
            raise denied
        raise DialError(f"{what}: no address to connect to", ReplyCode.HOST_UNREACHABLE)
    try:
        return happy_eyeballs.race(happy_eyeballs.interleave(addrs), timeout, prepare)
    except OSError as exc:
        raise DialError(f"{what}: {exc}", reply_for(exc)) from None


class DirectDialer:
    """Connect straight to the destination, trying every resolved address."""

    def __init__(
        self, resolver: Resolver = system_resolve, check: IPCheck | None = None, prepare: Prepare | None = None
    ) -> None:
        self.resolver = resolver
        self.check = check
        self.prepare = prepare

    def dial(self, dest: Address, timeout: float, check: IPCheck | None = None) -> socket.socket:
        if dest.ip is not None:  # a literal: nothing to resolve, no timer needed
            return connect_any(resolve(dest, self.resolver), timeout, check or self.check, dest, self.prepare)
        deadline = time.monotonic() + timeout
        timed_out = DialError(f"resolving {dest.host} timed out", ReplyCode.TTL_EXPIRED)
        with gevent.Timeout(timeout, timed_out):
            addrs = resolve(dest, self.resolver)
        remaining = max(deadline - time.monotonic(), 0.001)
        return connect_any(addrs, remaining, check or self.check, dest, self.prepare)
