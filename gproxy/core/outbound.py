"""What every outbound socket gets: its source address (``--outgoing``) and its firewall
mark (``--mark``), for TCP dials (a ``prepare`` hook) and UDP relay sockets alike."""

from __future__ import annotations

import _socket
import errno
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gproxy.core.addr import parse_ip
from gproxy.core.errors import ConfigError

#: linux/in.h: bind() reserves no port; connect() picks it (no port exhaustion from bind-before-connect)
IP_BIND_ADDRESS_NO_PORT = 24

Prepare = Callable[[_socket.socket], None]


def parse_outgoing(addresses: Iterable[str]) -> tuple[str | None, str | None]:
    """(IPv4, IPv6) from ``--outgoing`` values; at most one of each family.

    Raises:
        ConfigError: not an IP address, or two of one family.
    """
    v4: str | None = None
    v6: str | None = None
    for text in addresses:
        ip = parse_ip(text.strip("[]"))
        if ip is None:
            raise ConfigError(f"--outgoing: {text!r} is not an IP address")
        if ip.version == 4:
            if v4 is not None:
                raise ConfigError(f"--outgoing: two IPv4 addresses ({v4} and {ip}); give at most one of each family")
            v4 = str(ip)
        else:
            if v6 is not None:
                raise ConfigError(f"--outgoing: two IPv6 addresses ({v6} and {ip}); give at most one of each family")
            v6 = str(ip)
    return v4, v6


@dataclass(frozen=True, slots=True)
class Outbound:
    """Source addresses per family (None: the system's choice) and the SO_MARK (0: none)."""

    v4: str | None = None
    v6: str | None = None
    mark: int = 0

    def source(self, family: int) -> str | None:
        return self.v6 if family == socket.AF_INET6 else self.v4

    def udp_host(self, family: int) -> str:
        """Where a UDP relay socket of ``family`` binds."""
        return self.source(family) or ("::" if family == socket.AF_INET6 else "0.0.0.0")

    def check(self) -> None:
        """At start: every source address is this host's, and marks may be set.

        Raises:
            ConfigError: one line naming --outgoing or --mark.
        """
        for family, host in ((socket.AF_INET, self.v4), (socket.AF_INET6, self.v6)):
            if host is None:
                continue
            probe = socket.socket(family, socket.SOCK_DGRAM)
            try:
                probe.bind((host, 0))
            except OSError as exc:
                reason = "this host has no such address" if exc.errno == errno.EADDRNOTAVAIL else exc.strerror
                raise ConfigError(f"--outgoing {host}: {reason}") from None
            finally:
                probe.close()
        if self.mark:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
            except PermissionError:
                raise ConfigError("--mark: SO_MARK needs CAP_NET_ADMIN (run as root or grant it)") from None
            finally:
                probe.close()

    def prepare(self) -> Prepare | None:
        """The hook for outbound TCP sockets (None when there is nothing to do: no cost per dial)."""
        if self.v4 is None and self.v6 is None and not self.mark:
            return None
        return self.apply

    def apply(self, sock: _socket.socket) -> None:
        """Mark a new TCP socket and bind it to its family's source address (port chosen at connect)."""
        self.mark_socket(sock)
        host = self.source(sock.family)
        if host is not None:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((host, 0))

    def mark_socket(self, sock: _socket.socket) -> None:
        if self.mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, self.mark)
