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
from typing import Protocol, TypeVar

import gevent
from gevent import socket as gsocket
from gevent.event import AsyncResult

from gproxy.codec.replies import ReplyCode
from gproxy.core import happy_eyeballs
from gproxy.core.addr import Address, IPAddress, canonical_host, parse_ip_cached
from gproxy.core.errors import ClientProtocolError, Denied, DialError

_T = TypeVar("_T")

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
#: a resolver that can answer before it has every address (RFC 8305 section 3): what it has,
#: and the rest still coming (an AsyncResult of Resolved) or None; given a deadline
RacingResolve = Callable[[str, int, float], tuple[Resolved, "AsyncResult | None"]]
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
    return _named(dest, resolver, dest.port)


def _named(dest: Address, resolve_name: Callable[..., _T], *args: object) -> _T:
    """``resolve_name(canonical host, *args)``, its failures as DialError (HOST_UNREACHABLE)."""
    try:
        return resolve_name(canonical_host(dest.host), *args)
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
    later: AsyncResult | None = None,
) -> socket.socket:
    """Connect to the first address that answers, Happy Eyeballs style (RFC 8305), within
    ``timeout`` overall; addresses ``check`` refuses are left out. ``later``: more addresses
    still being resolved (an AsyncResult of Resolved), which join the race when they come.

    ``what`` names the destination in errors (formatted only when one is raised).
    """
    denied: list[Denied] = []
    if check is not None:
        addrs = _allowed(addrs, check, denied)
        if later is not None:
            later = _checked_later(later, check, denied)
    if not addrs and later is None:
        if denied:
            raise denied[-1]
        raise DialError(f"{what}: no address to connect to", ReplyCode.HOST_UNREACHABLE)
    try:
        return happy_eyeballs.race(happy_eyeballs.interleave(addrs), timeout, prepare, later)
    except OSError as exc:
        if denied and not addrs:
            raise denied[-1] from None
        raise DialError(f"{what}: {exc}", reply_for(exc)) from None


def _allowed(addrs: Resolved, check: IPCheck, denied: list[Denied]) -> Resolved:
    """The addresses ``check`` lets through; what it refused goes to ``denied``."""
    allowed = []
    for family, sockaddr in addrs:
        try:
            check(parse_ip_cached(str(sockaddr[0])), int(sockaddr[1]))  # type: ignore[arg-type, call-overload]
        except Denied as exc:
            denied.append(exc)
            continue
        allowed.append((family, sockaddr))
    return allowed


def _checked_later(later: AsyncResult, check: IPCheck, denied: list[Denied]) -> AsyncResult:
    """``later``'s addresses, once in, with what ``check`` refuses left out."""
    checked: AsyncResult = AsyncResult()

    def arrived(result: AsyncResult) -> None:  # on the loop: whatever happens, the race hears of it
        try:
            if not result.successful():
                raise result.exception
            checked.set(_allowed(result.value, check, denied))
        except Exception as exc:  # noqa: BLE001 (a check's own failure ends the wait, not the loop)
            checked.set_exception(exc)

    later.rawlink(arrived)
    return checked


class DirectDialer:
    """Connect straight to the destination, trying every resolved address."""

    def __init__(
        self, resolver: Resolver = system_resolve, check: IPCheck | None = None, prepare: Prepare | None = None
    ) -> None:
        self.resolver = resolver
        #: DnsResolver.resolve_racing: IPv6 addresses may be raced before the A answer is in
        self.racing: RacingResolve | None = getattr(resolver, "resolve_racing", None)
        self.check = check
        self.prepare = prepare

    def dial(self, dest: Address, timeout: float, check: IPCheck | None = None) -> socket.socket:
        if dest.ip is not None:  # a literal: nothing to resolve, no timer needed
            return connect_any(resolve(dest, self.resolver), timeout, check or self.check, dest, self.prepare)
        deadline = time.monotonic() + timeout
        later = None
        timed_out = DialError(f"resolving {dest.host} timed out", ReplyCode.TTL_EXPIRED)
        with gevent.Timeout(timeout, timed_out):
            if self.racing is not None:
                addrs, later = _named(dest, self.racing, dest.port, deadline)
            else:
                addrs = resolve(dest, self.resolver)
        remaining = max(deadline - time.monotonic(), 0.001)
        return connect_any(addrs, remaining, check or self.check, dest, self.prepare, later)
