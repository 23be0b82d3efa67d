"""``ss://`` upstreams: the dialer that tunnels TCP through a Shadowsocks server and seals
and opens its UDP packets (the UDP socket itself is ``udp_upstream``'s; URLs: ``upstream_url``).

The URL itself is parsed in ``upstream_url`` (``parse_ss_url``): an ``Upstream`` with scheme
``ss``, the method as its user name and the password hidden as usual.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, cast

from gproxy.codec import socks5
from gproxy.codec.shadowsocks import (
    TcpDecryptor,
    TcpEncryptor,
    decrypt_udp,
    derive_key,
    encrypt_udp,
    method_by_name,
)
from gproxy.core.addr import Address
from gproxy.core.errors import ClientProtocolError
from gproxy.core.upstream_url import Upstream

if TYPE_CHECKING:
    from gproxy.core.dial import IPCheck, Prepare, Resolver

Buffer = bytes | bytearray | memoryview


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
