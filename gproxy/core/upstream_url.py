"""``--upstream URL`` parsing (no I/O, no gevent: config imports it).

An Upstream prints as ``socks5://user:***@host:port``: the password is kept
out of every message, repr and log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from gproxy.core.addr import Address, format_hostport, parse_ip
from gproxy.core.errors import ConfigError

SCHEMES = ("socks5", "socks5h", "socks4", "socks4a", "http", "https", "socks5+tls")
#: schemes spoken over TLS to the upstream (what gproxy's --https and --socks-tls listeners speak)
TLS_SCHEMES = frozenset({"https", "socks5+tls"})
#: a DNS name: dot-separated labels of letters, digits, '-' and '_' (no leading or trailing '-')
_NAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")


@dataclass(frozen=True)
class Upstream:
    """A parsed upstream URL; ``str()`` and ``repr()`` hide the password."""

    scheme: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        user = f"{self.username}:***@" if self.username is not None else ""
        return f"{self.scheme}://{user}{format_hostport(self.host, self.port)}"

    def __repr__(self) -> str:
        return f"Upstream({str(self)!r})"

    @property
    def address(self) -> Address:
        return Address(self.host, self.port)

    @property
    def tls(self) -> bool:
        """Whether the upstream is spoken to over TLS (certificate checked against ``host``)."""
        return self.scheme in TLS_SCHEMES


def redact_url(url: str) -> str:
    """``scheme://user:***@rest`` for messages about a URL we could not parse."""
    scheme, sep, rest = url.rpartition("://")
    userinfo, at, hostport = rest.rpartition("@")
    if not at:
        return url
    return f"{scheme}{sep}{userinfo.partition(':')[0]}:***@{hostport}"


def parse_upstream(url: str) -> Upstream:
    """``socks5://[user:pass@]host:port``, ``socks4://host:port``, ``socks4a://...``,
    ``http://[user:pass@]host:port``, and over TLS ``https://...`` and ``socks5+tls://...``;
    ConfigError (with the password hidden) otherwise."""
    if url[:5].lower() == "ss://":  # Shadowsocks: SIP002 userinfo is not user:pass
        from gproxy.core.upstream_ss import parse_ss_url  # noqa: PLC0415 (the codec needs cryptography)

        return parse_ss_url(url).to_upstream()
    shown = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ConfigError(f"--upstream: {shown!r} is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"--upstream: scheme of {shown!r} must be one of {', '.join(SCHEMES)}")
    if not parts.hostname or port is None or port == 0:
        raise ConfigError(f"--upstream: {shown!r} needs a host and a port, as {scheme}://host:1080")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--upstream: {shown!r} may not have a path, query or fragment")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and scheme.startswith("socks4") and password is not None:
        raise ConfigError(f"--upstream: SOCKS4 has no passwords ({shown!r}); use socks5://")
    if username is not None and (len(username.encode()) > 255 or len((password or "").encode()) > 255):
        raise ConfigError("--upstream: user names and passwords are at most 255 bytes")
    host = parts.hostname
    if ":" in host and parse_ip(host) is None:
        raise ConfigError(f"--upstream: {shown!r} has a bad IPv6 address")
    if parse_ip(host) is None and (len(host) > 253 or not _NAME.fullmatch(host)):
        raise ConfigError(f"--upstream: {shown!r} has a bad host name")
    return Upstream("socks5" if scheme == "socks5h" else scheme, host, port, username, password)
