"""Addresses: a host (IP literal or name) and a port, and how to print them.

Pure data; no socket I/O and no name resolution here.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from enum import Enum

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


def unmap_ip(ip: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) as plain IPv4."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def format_hostport(host: str, port: int) -> str:
    """``host:port``, with IPv6 literals in brackets."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def from_sockaddr(sockaddr: tuple[object, ...]) -> Address:
    """An Address from a socket address tuple (IPv4 or IPv6)."""
    return Address(str(sockaddr[0]), int(sockaddr[1]))  # type: ignore[call-overload]
