"""``--upstream URL`` parsing (no I/O, no gevent: config imports it).

An Upstream prints as ``socks5://user:***@host:port``: the password is kept
out of every message, repr and log line. ``ss://`` URLs are SIP002
(``ss://BASE64URL(method:password)@host:port[/][?query][#tag]``, padding optional) or
``ss://method:password@host:port``; plugins (``/?plugin=``) are refused, other query parameters
(Outline's ``?outline=1``) and the tag are ignored.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote, urlsplit

from gproxy.core.addr import Address, format_hostport, parse_ip
from gproxy.core.errors import ConfigError

if TYPE_CHECKING:
    from gproxy.codec.shadowsocks import Method

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
    """A URL we could not parse, for an error message, without what may be secret: the
    password (``scheme://user:***@host...``), and the query or fragment (either may carry
    a token). An '@' past the first '/', '?' or '#' leaves only ``scheme://user...``."""
    url = url.strip()
    scheme_match = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", url)
    scheme = scheme_match.group() if scheme_match else ""
    rest = url[len(scheme) :]
    at = rest.rfind("@")
    if at == -1:  # no user info
        return scheme + _without_query(rest)
    if at < len(re.split(r"[/?#]", rest, maxsplit=1)[0]):  # USER:PASSWORD@HOST...
        return f"{scheme}{rest[:at].partition(':')[0]}:***@{_without_query(rest[at + 1 :])}"
    # an '@' after a '/', '?' or '#': in the path or query, or in a password holding them
    return scheme + re.split(r"[:/?#]", rest, maxsplit=1)[0] + "..."


def _without_query(text: str) -> str:
    """``host/path?...``: what follows the first '?' or '#' is left out."""
    query = re.search(r"[?#]", text)
    return text if query is None else text[: query.end()] + "..."


@dataclass(frozen=True)
class SsUrl:
    """A parsed ``ss://`` URL; the password never shows in ``str`` or ``repr``."""

    method: Method
    host: str
    port: int
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"ss://{self.method.name}:***@{format_hostport(self.host, self.port)}"

    def to_upstream(self) -> Upstream:
        return Upstream("ss", self.host, self.port, self.method.name, self.password)


def parse_ss_url(url: str) -> SsUrl:
    """SIP002 or plain ``ss://method:password@host:port``; ConfigError (password hidden) otherwise."""
    bad = ConfigError(
        "--upstream: an ss:// URL is ss://BASE64URL(method:password)@host:port or ss://method:password@host:port"
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    if parts.scheme.lower() != "ss" or not parts.hostname or not port:
        raise bad
    if "plugin" in parse_qs(parts.query, keep_blank_values=True):
        raise ConfigError("--upstream: ss:// plugins (SIP003, ?plugin=) are not supported")
    if parts.path not in ("", "/"):
        raise ConfigError("--upstream: an ss:// URL may not have a path")
    userinfo = parts.netloc.rpartition("@")[0]
    if not userinfo:
        raise bad
    if ":" in userinfo:  # plain method:password (percent-encoded)
        method_name, _, password = userinfo.partition(":")
        method_name, password = unquote(method_name), unquote(password)
    else:  # SIP002: base64url, padding optional
        text = unquote(userinfo)
        try:
            decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("utf-8")
        except (binascii.Error, ValueError):
            raise bad from None
        method_name, sep, password = decoded.partition(":")
        if not sep:
            raise bad
    if not password:
        raise ConfigError("--upstream: the ss:// URL has no password")
    host = parts.hostname
    if ":" in host and parse_ip(host) is None:
        raise bad
    from gproxy.codec.shadowsocks import method_by_name  # noqa: PLC0415 (needs cryptography: only for ss://)

    try:
        method = method_by_name(method_name)
    except ConfigError as exc:
        raise ConfigError(f"--upstream: {exc}") from None
    return SsUrl(method, host, port, password)


def parse_upstream(url: str) -> Upstream:
    """``socks5://[user:pass@]host:port``, ``socks4://host:port``, ``socks4a://...``,
    ``http://[user:pass@]host:port``, and over TLS ``https://...`` and ``socks5+tls://...``;
    ConfigError (with the password hidden) otherwise."""
    if url[:5].lower() == "ss://":  # Shadowsocks: SIP002 userinfo is not user:pass
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
