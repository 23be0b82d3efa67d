"""Outbound connections: the Dialer interface, direct dialing and error mapping.

``dial(dest, timeout)`` returns a connected socket or raises DialError whose
``reply`` is the SOCKS5 code that front ends translate into their own answer.
Upstream proxies (chaining) implement the same interface in ``upstream.py``.
"""

from __future__ import annotations

import errno
import os
import socket
import time
from collections.abc import Callable
from typing import Protocol

import gevent
from gevent import socket as gsocket

from gproxy.codec.replies import ReplyCode
from gproxy.core._gevent import raw_socket, wait_writable
from gproxy.core.addr import Address, IPAddress, parse_ip_cached
from gproxy.core.errors import Denied, DialError

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
    """Literal IPs skip the resolver (no DNS round trip for them)."""
    ip = dest.ip
    if ip is not None:
        if ip.version == 4:  # ipaddress takes only the canonical dotted quad: host is str(ip)
            return [(socket.AF_INET, (dest.host, dest.port))]
        return [(socket.AF_INET6, (dest.host, dest.port, 0, 0))]
    try:
        return resolver(dest.host, dest.port)
    except DialError:
        raise
    except (OSError, UnicodeError) as exc:
        raise DialError(f"cannot resolve {dest.host}: {exc}", ReplyCode.HOST_UNREACHABLE) from None


def connect_any(addrs: Resolved, timeout: float, check: IPCheck | None = None, what: object = "") -> socket.socket:
    """Connect to the first address that answers, within ``timeout`` overall.

    ``what`` names the destination in errors (formatted only when one is raised).
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    denied: Denied | None = None
    for family, sockaddr in addrs:
        if check is not None:
            try:
                check(parse_ip_cached(str(sockaddr[0])), int(sockaddr[1]))  # type: ignore[arg-type, call-overload]
            except Denied as exc:
                denied = exc
                continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            last = TimeoutError("connect timed out")
            break
        try:
            sock: socket.socket = gsocket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:  # EMFILE/ENFILE: a failed dial, answered like any other
            last = exc
            continue
        try:
            _connect(sock, sockaddr, remaining)
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError):
                raise
            last = exc
            continue
        return sock
    if last is None and denied is not None:
        raise denied
    if last is None:
        raise DialError(f"{what}: no address to connect to", ReplyCode.HOST_UNREACHABLE)
    raise DialError(f"{what}: {last}", reply_for(last)) from None


def _connect(sock: socket.socket, sockaddr: tuple[object, ...], timeout: float) -> None:
    """One non-blocking connect(), a wait for writability, one SO_ERROR read; then TCP_NODELAY.

    gevent's own connect() costs two more syscalls and a resolver check per call.
    """
    raw = raw_socket(sock)
    err = raw.connect_ex(sockaddr)
    if err in _IN_PROGRESS:
        _wait_writable(sock, timeout)
        err = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if err:
        raise OSError(err, os.strerror(err))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _wait_writable(sock: socket.socket, timeout: float) -> None:
    """Sleep until ``sock`` is writable; TimeoutError after ``timeout`` seconds.

    One watcher and one timer: no Timeout object, no settimeout().
    """
    wait_writable(sock.fileno(), timeout)


_IN_PROGRESS = frozenset({errno.EINPROGRESS, errno.EAGAIN, errno.EALREADY})


class DirectDialer:
    """Connect straight to the destination, trying every resolved address."""

    def __init__(self, resolver: Resolver = system_resolve, check: IPCheck | None = None) -> None:
        self.resolver = resolver
        self.check = check

    def dial(self, dest: Address, timeout: float, check: IPCheck | None = None) -> socket.socket:
        if dest.ip is not None:  # a literal: nothing to resolve, no timer needed
            return connect_any(resolve(dest, self.resolver), timeout, check or self.check, dest)
        deadline = time.monotonic() + timeout
        timed_out = DialError(f"resolving {dest.host} timed out", ReplyCode.TTL_EXPIRED)
        with gevent.Timeout(timeout, timed_out):
            addrs = resolve(dest, self.resolver)
        remaining = max(deadline - time.monotonic(), 0.001)
        return connect_any(addrs, remaining, check or self.check, dest)
