"""Addresses: a host (IP literal or name) and a port, and how to print them.

Pure data; no socket I/O and no name resolution here. ``canonical_host`` turns
a name a client sent into the ASCII form the resolver will look up.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

from gproxy.codec.replies import ReplyCode
from gproxy.core.errors import ClientProtocolError, Outcome

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: one DNS label in its ASCII (IDNA) form, lower case: 1 to 63 bytes
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
#: the longest name, without its trailing dot (RFC 1035 2.3.4)
MAX_NAME = 253


class AddrKind(Enum):
    IPV4 = "ipv4"
    IPV6 = "ipv6"
    DOMAIN = "domain"


@dataclass(frozen=True)
class Address:
    """A destination or endpoint: ``host`` is an IP literal or a name."""

    host: str
    port: int

    @property
    def ip(self) -> IPAddress | None:
        """The host as an IP address, or None when it is a name.

        From the LRU cache: Python 3.11's cached_property takes a lock (a
        Python-level gevent RLock once monkey-patched) on every first access.
        """
        return parse_ip_cached(self.host)

    @property
    def kind(self) -> AddrKind:
        ip = self.ip
        if ip is None:
            return AddrKind.DOMAIN
        return AddrKind.IPV4 if ip.version == 4 else AddrKind.IPV6

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


def parse_ip(host: str) -> IPAddress | None:
    """Return ``host`` as an IP address, or None if it is not a literal."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0] if ":" in host else host)
    except ValueError:
        return None


#: parsing an IP string costs microseconds; destinations and resolved addresses repeat
parse_ip_cached = functools.lru_cache(maxsize=4096)(parse_ip)


@functools.lru_cache(maxsize=4096)
def canonical_host(host: str) -> str:
    """A client-supplied host as the resolver will see it: an IP literal unchanged, a name
    in lower-case ASCII (IDNA 2003, what ``getaddrinfo`` applies: NFKC, case folding,
    U+3002/U+FF0E/U+FF61 as dots), so rules compare what is looked up.

    Raises ClientProtocolError (SOCKS5 reply 0x04) for a name no resolver would take:
    over 253 bytes, an empty or over-63-byte label, a character outside ``a-z 0-9 _ -``.
    """
    if parse_ip(host) is not None:
        return host
    try:
        name = (host if host.isascii() else host.encode("idna").decode("ascii")).lower()
    except UnicodeError:
        raise _bad_name(host, "not a valid international name") from None
    if parse_ip(name) is not None:  # full-width digits: an IP literal after all
        return name
    body = name[:-1] if name.endswith(".") else name
    if not body or len(body) > MAX_NAME:
        raise _bad_name(host, f"names are 1 to {MAX_NAME} bytes")
    if not all(_LABEL.fullmatch(label) for label in body.split(".")):
        raise _bad_name(host, "a label is empty, over 63 bytes or has a character outside a-z 0-9 _ -")
    return name


def _bad_name(host: str, why: str) -> ClientProtocolError:
    shown = host if len(host) <= 80 else host[:80] + "..."
    return ClientProtocolError(
        f"bad destination name {shown!r}: {why}", ReplyCode.HOST_UNREACHABLE, reason=Outcome.BAD_NAME
    )


def unmap_ip(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as plain IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def ascii_digits(text: str) -> bool:
    """A port or count as text: ASCII digits only (``str.isdigit`` also takes '²', which
    ``int`` refuses, and '१२३', which it reads as 123)."""
    return text.isascii() and text.isdigit()


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def from_sockaddr(sockaddr: tuple[object, ...]) -> Address:
    """An Address from a socket address tuple (IPv4 or IPv6)."""
    return Address(str(sockaddr[0]), int(sockaddr[1]))  # type: ignore[call-overload]
