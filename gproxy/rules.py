"""Destination rules: where clients may be relayed to.

Checked twice: on the destination as the client named it, and on every IP
a name resolves to (so a name cannot smuggle a denied address past us).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from gproxy.addr import Address, IPAddress, unmap_ip
from gproxy.errors import Denied

_LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(net) for net in ("127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128")
)


class DestinationPolicy:
    """The rules for one listener.

    ``own`` are gproxy's listening (ip, port) pairs: relaying to them would
    loop. ``deny_local`` denies loopback and link-local destinations, the
    default for listeners reachable from other hosts.
    """

    def __init__(self, own: Iterable[tuple[IPAddress, int]] = (), deny_local: bool = False) -> None:
        self.own = {(unmap_ip(ip), port) for ip, port in own}
        self.own_ports = {port for ip, port in self.own if ip.is_unspecified}
        self.deny_local = deny_local

    def check(self, dest: Address) -> None:
        """Check a destination as the client gave it (before any resolution)."""
        if dest.port == 0:
            raise Denied(f"{dest}: port 0")
        if dest.ip is not None:
            self.check_ip(dest.ip, dest.port)

    def check_ip(self, ip: IPAddress, port: int) -> None:
        """Check one resolved address; raises Denied."""
        ip = unmap_ip(ip)
        if ip.is_unspecified or port == 0:
            raise Denied(f"{ip}: unspecified address or port")
        if (ip, port) in self.own or (port in self.own_ports and _is_local(ip)):
            raise Denied(f"{ip} port {port} is gproxy itself")
        if self.deny_local and any(ip in net for net in _LOCAL_NETWORKS):
            raise Denied(f"{ip} is a loopback or link-local address")


def _is_local(ip: IPAddress) -> bool:
    """Whether ``ip`` is this host's (loopback; interface addresses come later)."""
    return ip.is_loopback
