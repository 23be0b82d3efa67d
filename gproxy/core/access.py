"""Who may use the proxy: users with passwords, and client address rules.

Credentials are compared in constant time. The users table is swapped whole
on reload, so sessions in flight never see a half-read file.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from gproxy.core.addr import IPAddress, unmap_ip
from gproxy.core.errors import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_user(spec: str, where: str = "--user") -> tuple[str, str]:
    """``USER:PASS`` (the password may contain colons; the name may not)."""
    user, sep, password = spec.partition(":")
    if not sep or not user:
        raise ConfigError(f"{where}: expected USER:PASS, got {_redact(spec)!r}")
    if len(user.encode()) > 255 or len(password.encode()) > 255:
        raise ConfigError(f"{where}: user names and passwords are at most 255 bytes (RFC 1929)")
    return user, password


def _redact(spec: str) -> str:
    user, sep, _ = spec.partition(":")
    return f"{user}:***" if sep else spec


def read_users_file(path: str) -> list[tuple[str, str]]:
    """One ``USER:PASS`` a line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--users-file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    users = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            users.append(parse_user(line, f"{path}:{number}"))
    return users


class Users:
    """The configured users; empty means authentication is off."""

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        self._table = {user.encode(): password.encode() for user, password in pairs}

    def __bool__(self) -> bool:
        return bool(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def replace(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._table = {user.encode(): password.encode() for user, password in pairs}

    def check(self, user: bytes, password: bytes) -> bool:
        """True if the pair matches, in time independent of the password."""
        expected = self._table.get(user)
        if expected is None:
            hmac.compare_digest(password, password)  # same work as a real compare
            return False
        return hmac.compare_digest(password, expected)


def parse_network(spec: str, flag: str) -> Network:
    try:
        return ipaddress.ip_network(spec, strict=False)
    except ValueError:
        raise ConfigError(f"{flag}: {spec!r} is not an IP address or CIDR network") from None


class ClientRules:
    """``--allow`` / ``--deny`` on the client's address.

    Deny wins; with any allow rule, only the allowed may connect.
    """

    def __init__(self, allow: Iterable[Network] = (), deny: Iterable[Network] = ()) -> None:
        self.allow = tuple(allow)
        self.deny = tuple(deny)

    def permits(self, ip: IPAddress) -> bool:
        ip = unmap_ip(ip)
        if any(ip in net for net in self.deny):
            return False
        return not self.allow or any(ip in net for net in self.allow)
