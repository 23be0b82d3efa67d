"""Who may use the proxy: users with passwords, and client address rules.

Credentials are compared in constant time; hashed ones (bcrypt, Argon2) are
checked in gevent's threadpool and remembered a while (core.passwords). The
users table is swapped whole on reload, so sessions in flight never see a
half-read file. Error messages name where a bad entry is (flag, file and line),
never its text: it may hold a password. Names not in the table may be checked by an
auth service (--auth-url, core.auth_service); open sessions are counted per user
(UserSessions) for --max-conns-per-user.
"""

from __future__ import annotations

import hmac
import ipaddress
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from gproxy.core import passwords
from gproxy.core.addr import IPAddress, unmap_ip
from gproxy.core.errors import ConfigError, GproxyError, Outcome
from gproxy.core.passwords import AuthCache, Secret
from gproxy.core.rules import RuleSet, UserSettings

if TYPE_CHECKING:
    from gproxy.core.auth_service import AuthService
    from gproxy.core.session import Session

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
        self._settings: Mapping[str, UserSettings] = {}  # [users.NAME] tables
        self._remote: dict[str, tuple[UserSettings, float]] = {}  # --auth-url: answer, until when it is cached
        self._remote_kept = 0
        self.service: AuthService | None = None
        self.max_conns_per_user = 0
        self.sessions = UserSessions()
        self.rules: Mapping[str, RuleSet] = _RulesView(self)
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

    def set_policy(
        self, settings: Mapping[str, UserSettings], max_conns_per_user: int = 0, service: AuthService | None = None
    ) -> None:
        """Per-user settings (``[users.NAME]``), the --max-conns-per-user default and the --auth-url client."""
        self._settings, self.max_conns_per_user, self.service = settings, max_conns_per_user, service

    def settings(self, user: str) -> UserSettings:
        """``user``'s own settings: their table's, overlaid with the auth service's answer for its users."""
        local = self._settings.get(user, _NO_SETTINGS)
        remote = self._remote.get(user)
        if remote is None or user.encode() in self._table:
            return local
        return local.overlaid(remote[0])

    def check(self, user: bytes, password: bytes, *, client: str = "-", listener: str = "-") -> bool:
        """True if the pair matches, in time independent of the password.

        A name not in the table goes to the auth service, if any (``client`` and ``listener``
        are what it is told); raises AuthUnavailable when the service gives no usable answer.
        """
        secret, cache = self._table.get(user), self._cache
        if secret is None:
            if self.service is not None:
                return self._check_remote(self.service, user, password, client, listener)
            if self._decoy is not None:
                _verify_off_loop(self._decoy, password)
            else:
                hmac.compare_digest(password, password)  # same work as a real compare
            return False
        if not secret.is_hash:
            if passwords.verify(secret, password):
                return True
            if self._decoy is not None:  # as slow as an unknown user's: timing does not tell who is in clear
                _verify_off_loop(self._decoy, password)
            return False
        if cache.hit(user, password):
            return True
        if not _verify_off_loop(secret, password):
            return False
        cache.remember(user, password)
        return True

    def _check_remote(self, service: AuthService, user: bytes, password: bytes, client: str, listener: str) -> bool:
        try:
            name, text = user.decode("utf-8"), password.decode("utf-8")
        except UnicodeDecodeError:
            return False  # JSON carries text only
        cache = self._cache
        if name in self._remote and cache.hit(user, password):
            return True
        settings = service.check(name, text, client, listener)
        if settings is None:
            return False
        if cache is self._cache:  # no reload while the service was asked
            cache.remember(user, password)
        self._remember_remote(name, settings)
        return True

    def _remember_remote(self, user: str, settings: UserSettings) -> None:
        """Keep the answer while the user's accept is cached or any session of theirs is open."""
        now = self._clock()
        self._remote.pop(user, None)
        self._remote[user] = (settings, now + self._cache.seconds)
        if len(self._remote) > max(1024, 2 * self._remote_kept):
            for name, (_, until) in list(self._remote.items()):
                if until <= now and not self.sessions.count(name):
                    del self._remote[name]
            self._remote_kept = len(self._remote)

    def admit(self, session: Session) -> None:
        """Count one more open session of ``session.user`` (once per session and user);
        raises UserLimit beyond their max-conns (else --max-conns-per-user; 0: no limit)."""
        user, slot = session.user, session.user_slot
        if user is None or (slot is not None and slot.user == user):
            return
        if slot is not None:
            slot.release()
            session.user_slot = None
        limit = self.settings(user).max_conns
        session.user_slot = self.sessions.acquire(user, self.max_conns_per_user if limit is None else limit)


_NO_SETTINGS = UserSettings()


class _RulesView(Mapping[str, RuleSet]):
    """user -> their destination rules, live (what DestinationPolicy.for_user reads)."""

    def __init__(self, users: Users) -> None:
        self._users = users

    def __getitem__(self, user: str) -> RuleSet:
        return self._users.settings(user).rules

    def __iter__(self) -> Iterator[str]:
        users = self._users
        return iter({*users._settings, *users._remote})

    def __len__(self) -> int:
        return sum(1 for _ in self)


class UserLimit(GproxyError):
    """The user already has as many open sessions as they may."""

    reason = Outcome.USER_LIMIT


class UserSessions:
    """Open sessions per user: ``acquire`` after authentication, the slot's ``release`` at the session's end."""

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def count(self, user: str) -> int:
        return self._open.get(user, 0)

    def acquire(self, user: str, limit: int) -> UserSlot:
        """One more session of ``user``; UserLimit if ``limit`` (0: none) are open already."""
        count = self._open.get(user, 0)
        if limit and count >= limit:
            raise UserLimit(f"user {user!r} has {count} open sessions (limit {limit})")
        self._open[user] = count + 1
        return UserSlot(self, user)

    def _release(self, user: str) -> None:
        count = self._open[user] - 1
        if count:
            self._open[user] = count
        else:
            del self._open[user]


class UserSlot:
    """One counted session; ``release`` (idempotent) gives it back."""

    __slots__ = ("owner", "user")

    def __init__(self, owner: UserSessions, user: str) -> None:
        self.owner: UserSessions | None = owner
        self.user = user

    def release(self) -> None:
        owner, self.owner = self.owner, None
        if owner is not None:
            owner._release(self.user)


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
