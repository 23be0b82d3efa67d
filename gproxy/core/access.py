"""Who may use the proxy: users with passwords, and client address rules.

Credentials are compared in constant time; hashed ones (bcrypt, Argon2) are
checked in gevent's threadpool and remembered a while (core.passwords). The
users table is swapped whole on reload, so sessions in flight never see a
half-read file. Error messages name where a bad entry is (flag, file and line),
never its text: it may hold a password.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from gproxy.core import passwords
from gproxy.core.addr import IPAddress, unmap_ip
from gproxy.core.errors import ConfigError
from gproxy.core.passwords import AuthCache, Secret

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_user(spec: str, where: str = "--user") -> tuple[str, str]:
    """``USER:PASS`` (the password may contain colons; the name may not).

    The message of the ConfigError never quotes ``spec``: a typo (a space or
    ``=`` for the colon) would print the password.
    """
    user, sep, password = spec.partition(":")
    if not sep or not user:
        raise ConfigError(f"{where}: expected USER:PASS (the entry is not shown: it may hold a password)")
    if len(user.encode()) > 255 or len(password.encode()) > 255:
        raise ConfigError(f"{where}: user names and passwords are at most 255 bytes (RFC 1929)")
    _parse_secret(user, password, where)
    return user, password


def _parse_secret(user: str, text: str, where: str) -> Secret:
    try:
        return Secret.parse(text)
    except ValueError as exc:  # the message names the hash kind, never the secret
        raise ConfigError(f"{where}: user {user!r}: {exc}") from None


def parse_users(specs: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """Every ``--user USER:PASS``; errors say which one (``--user #2``), not what it says."""
    specs = tuple(specs)
    if len(specs) == 1:
        return (parse_user(specs[0]),)
    return tuple(parse_user(spec, f"--user #{number}") for number, spec in enumerate(specs, 1))


def read_users_file(path: str) -> list[tuple[str, str]]:
    """One ``USER:PASS`` a line; blank lines and ``#`` comments are skipped.

    A file with no users is an error: a users file given means authentication
    is on, and an empty table must never read as "no authentication".
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"--users-file {path}: {reason}") from None
    users = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if line and not line.startswith("#"):
            users.append(parse_user(line, f"--users-file {path}:{number}"))
    if not users:
        raise ConfigError(f"--users-file {path}: no users in the file (one USER:PASS a line)")
    return users


class Users:
    """The users table, and whether authentication is on.

    ``bool(users)`` answers "must clients authenticate?": it comes from the
    configuration (``required``), never from how many entries the table has,
    so a table that ends up empty refuses everyone instead of opening the proxy.
    Hashed secrets are verified in gevent's threadpool (a bcrypt check takes
    ~0.25 s of CPU), and successes are kept in an AuthCache for
    ``cache_seconds``; a reload starts a fresh cache.
    """

    def __init__(
        self,
        pairs: Iterable[tuple[str, str]] = (),
        *,
        required: bool | None = None,
        cache_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._cache = AuthCache(cache_seconds, clock=clock)
        table = self.table(pairs)
        self.replace(table, required=bool(table) if required is None else required)

    def __bool__(self) -> bool:
        return self.required

    def __len__(self) -> int:
        return len(self._table)

    @staticmethod
    def table(pairs: Iterable[tuple[str, str]]) -> dict[bytes, Secret]:
        """The lookup table for ``pairs`` (build it off the event loop for big files)."""
        return {user.encode(): _parse_secret(user, text, "users") for user, text in pairs}

    def replace(self, table: dict[bytes, Secret], *, required: bool, cache_seconds: float | None = None) -> None:
        """Swap in a table from ``Users.table``, with a new, empty cache (a changed password
        must not stay good); one assignment, no half-read state."""
        seconds = self._cache.seconds if cache_seconds is None else cache_seconds
        # an unknown user's password is checked against a real hash too, so timing does not tell who exists
        decoy = next((secret for secret in table.values() if secret.is_hash), None)
        self._table, self._decoy, self.required = table, decoy, required
        self._cache = AuthCache(seconds, clock=self._clock)

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
    from gevent import get_hub  # here: config (and so `import gproxy`) needs no gevent

    return bool(get_hub().threadpool.apply(passwords.verify, (secret, password)))


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
