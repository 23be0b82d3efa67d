"""``ss://`` upstreams: SIP002 URLs, and the dialer that tunnels TCP through a Shadowsocks server
and seals and opens its UDP packets (the UDP socket itself is ``udp_upstream``'s).

``ss://BASE64URL(method:password)@host:port`` (padding optional) or ``ss://method:password@host:port``.
Plugins (``/?plugin=``) are refused. The parsed URL is an ``Upstream`` with scheme ``ss``, the
method as its user name and the password hidden as usual.
"""

from __future__ import annotations

import base64
import binascii
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs, unquote, urlsplit

from gproxy.codec import socks5
from gproxy.codec.shadowsocks import (
    Method,
    TcpDecryptor,
    TcpEncryptor,
    decrypt_udp,
    derive_key,
    encrypt_udp,
    method_by_name,
)
from gproxy.core.addr import Address, format_hostport, parse_ip
from gproxy.core.errors import ClientProtocolError, ConfigError
from gproxy.core.upstream_url import Upstream

if TYPE_CHECKING:
    from gproxy.core.dial import IPCheck, Prepare, Resolver

Buffer = bytes | bytearray | memoryview


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
    if "plugin" in parse_qs(parts.query):
        raise ConfigError("--upstream: ss:// plugins (SIP003, ?plugin=) are not supported")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("--upstream: an ss:// URL may not have a path, query or fragment")
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
    try:
        method = method_by_name(method_name)
    except ConfigError as exc:
        raise ConfigError(f"--upstream: {exc}") from None
    return SsUrl(method, host, port, password)


class SsUpstreamDialer:
    """Dial the Shadowsocks server and send the destination; the socket-like result seals and opens.

    No answer comes back from the server before data (the protocol has none): a destination it
    cannot reach shows as a connection it closes.
    """

    def __init__(self, upstream: Upstream, resolver: Resolver | None = None, prepare: Prepare | None = None) -> None:
        from gproxy.core.dial import DirectDialer, system_resolve  # noqa: PLC0415 (gevent: not at config time)

        self.upstream = upstream
        self.method = method_by_name(upstream.username or "")
        self.key = derive_key(upstream.password or "", self.method)
        self.resolver = resolver or system_resolve
        self._direct = DirectDialer(self.resolver, prepare=prepare)  # the operator's: no rules

    def dial(
        self, dest: Address, timeout: float, check: IPCheck | None = None, *, reach_timeout: float | None = None
    ) -> socket.socket:
        """``reach_timeout`` bounds reaching the server (a group gives each member a share)."""
        from gproxy.core.errors import DialError, UpstreamDown  # noqa: PLC0415
        from gproxy.core.ss_stream import SsSocket  # noqa: PLC0415

        reach = timeout if reach_timeout is None else min(reach_timeout, timeout)
        try:
            sock = self._direct.dial(self.upstream.address, reach)
        except DialError as exc:  # the server itself is unreachable: a group moves on
            raise UpstreamDown(f"upstream {self.upstream}: {exc}", exc.reply) from None
        try:
            wrapped = SsSocket(sock, TcpDecryptor(self.key, self.method), TcpEncryptor(self.key, self.method))
            wrapped.sendall(socks5.encode_address(dest))  # salt and the address header, before any data
        except BaseException:
            sock.close()
            raise
        return cast("socket.socket", wrapped)  # socket-like: the relay takes its generic path for it

    def seal_datagram(self, dest: Address, payload: Buffer) -> bytes:
        """One UDP packet for the server: ``dest``'s address header and ``payload``, sealed."""
        return encrypt_udp(self.key, self.method, b"".join((socks5.encode_address(dest), payload)))

    def open_datagram(self, packet: Buffer) -> tuple[Address, memoryview] | None:
        """(source, payload) of a UDP packet from the server; None for one that does not open
        with the key (tampered, or not the server's) or carries no address header."""
        try:
            plain = decrypt_udp(self.key, self.method, packet)
            parsed = socks5.parse_address(plain, 0)
        except ClientProtocolError:  # ShadowsocksError included
            return None
        if parsed is None:
            return None
        source, start = parsed
        return source, memoryview(plain)[start:]
