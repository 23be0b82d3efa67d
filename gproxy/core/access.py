"""Who may use the proxy: users with passwords, and client address rules.

Credentials are compared in constant time; hashed ones (bcrypt, Argon2) are
checked in gevent's threadpool and remembered a while (core.passwords). The
users table is swapped whole on reload, so sessions in flight never see a
half-read file.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import gevent

from gproxy.core import passwords
from gproxy.core.addr import IPAddress, unmap_ip
from gproxy.core.errors import ConfigError
from gproxy.core.passwords import AuthCache, Secret

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_user(spec: str, where: str = "--user") -> tuple[str, str]:
    """``USER:PASS`` (the password may contain colons; the name may not)."""
    user, sep, password = spec.partition(":")
    if not sep or not user:
        raise ConfigError(f"{where}: expected USER:PASS, got {_redact(spec)!r}")
    if len(user.encode()) > 255 or len(password.encode()) > 255:
        raise ConfigError(f"{where}: user names and passwords are at most 255 bytes (RFC 1929)")
    _parse_secret(user, password, where)
    return user, password


def _parse_secret(user: str, text: str, where: str) -> Secret:
    try:
        return Secret.parse(text)
    except ValueError as exc:  # the message names the hash kind, never the secret
        raise ConfigError(f"{where}: user {user!r}: {exc}") from None


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
    """The configured users; empty means authentication is off.

    Hashed secrets are verified in gevent's threadpool (a bcrypt check takes
    ~0.25 s of CPU), and successes are kept in an AuthCache for
    ``cache_seconds``; a reload starts a fresh cache.
    """

    def __init__(
        self,
        pairs: Iterable[tuple[str, str]] = (),
        cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._cache = AuthCache(cache_seconds, clock=clock)
        self.replace(pairs)

    def __bool__(self) -> bool:
        return bool(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def replace(self, pairs: Iterable[tuple[str, str]], cache_seconds: float | None = None) -> None:
        """A new table (and a new, empty cache: a changed password must not stay good)."""
        table = {user.encode(): _parse_secret(user, text, "users") for user, text in pairs}
        seconds = self._cache.seconds if cache_seconds is None else cache_seconds
        # an unknown user's password is checked against a real hash too, so timing does not tell who exists
        self._decoy = next((secret for secret in table.values() if secret.is_hash), None)
        self._table, self._cache = table, AuthCache(seconds, clock=self._clock)

    def check(self, user: bytes, password: bytes) -> bool:
        """True if the pair matches, in time independent of the password."""
        secret, cache = self._table.get(user), self._cache
        if secret is None:
            if self._decoy is not None:
                _verify_off_loop(self._decoy, password)
            else:
                hmac.compare_digest(password, password)  # same work as a real compare
            return False
        if not secret.is_hash:
            return passwords.verify(secret, password)
        if cache.hit(user, password):
            return True
        if not _verify_off_loop(secret, password):
            return False
        cache.remember(user, password)
        return True


def _verify_off_loop(secret: Secret, password: bytes) -> bool:
    """A slow hash check in the hub's threadpool, so other connections keep moving."""
    return bool(gevent.get_hub().threadpool.apply(passwords.verify, (secret, password)))


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
