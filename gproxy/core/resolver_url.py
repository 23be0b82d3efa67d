"""``--resolver URL`` parsing (no I/O, no gevent: config imports it)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from gproxy.core.addr import format_hostport
from gproxy.core.errors import ConfigError

Transport = Literal["udp", "tcp", "tls", "https"]
DEFAULT_PORTS: dict[Transport, int] = {"udp": 53, "tcp": 53, "tls": 853, "https": 443}


@dataclass(frozen=True)
class ResolverServer:
    """One ``--resolver``: how to reach it (``host`` is an IP for udp/tcp, an IP or name for tls/https)."""

    transport: Transport
    host: str
    port: int
    path: str = ""

    def __str__(self) -> str:
        return f"{self.transport}://{format_hostport(self.host, self.port)}{self.path}"


def parse_resolver_url(value: str) -> ResolverServer:
    """``IP``, ``IP:PORT``, ``[IPV6]:PORT``, ``udp://``, ``tcp://``, ``tls://HOST[:PORT]``, ``https://HOST[:PORT]/PATH``."""

    def bad(why: str) -> ConfigError:
        return ConfigError(f"--resolver {value!r}: {why}")

    text = value.strip()
    if not text:
        raise bad("empty")
    if "://" not in text:
        if is_ip(text):  # a bare IPv6 literal has colons but no port
            return ResolverServer("udp", bare_ip(text), 53)
        text = "udp://" + text
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise bad(f"unknown scheme {scheme!r} (use udp://, tcp://, tls:// or https://)")
    transport: Transport = scheme
    if parts.username is not None or parts.password is not None:
        raise bad("credentials are not allowed in a resolver URL")
    if parts.fragment:
        raise bad("a fragment (#...) is not allowed")
    host = parts.hostname or ""
    if not host:
        raise bad("no host")
    try:
        port = parts.port
    except ValueError:
        raise bad("the port must be a number from 1 to 65535") from None
    if port == 0:
        raise bad("the port must be a number from 1 to 65535")
    if ":" in host and not parts.netloc.startswith("["):
        raise bad("an IPv6 address with a port needs brackets: [IPV6]:PORT")
    if transport in ("udp", "tcp"):
        if not is_ip(host):
            raise bad(f"{transport}:// needs an IP address, not a name (use tls:// or https:// for a name)")
        if parts.path not in ("", "/") or parts.query:
            raise bad(f"{transport}:// takes no path")
    elif not is_ip(host) and not _is_hostname(host):
        raise bad(f"{host!r} is neither an IP address nor a host name")
    path = ""
    if transport == "https":
        path = (parts.path or "/dns-query") + (f"?{parts.query}" if parts.query else "")
    elif parts.path not in ("", "/") or parts.query:
        raise bad(f"{transport}:// takes no path")
    return ResolverServer(transport, bare_ip(host) if is_ip(host) else host, port or DEFAULT_PORTS[transport], path)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def bare_ip(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _is_hostname(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() and label.isascii()
        for label in labels
    )
