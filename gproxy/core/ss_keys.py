"""Shadowsocks keys and salts: every user with a clear-text password is a key; recent salts are remembered
(in one ``SaltFilter`` per gproxy, shared by its workers).

Hashed users (bcrypt, Argon2) cannot be keys: a Shadowsocks key is derived from the password itself.
The keyring follows reloads (a new Context, or a re-read users file) by re-deriving on first use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from gproxy.codec.shadowsocks import Method, derive_key
from gproxy.core.access import read_users_file
from gproxy.core.salt_filter import SaltFilter

if TYPE_CHECKING:
    from gproxy.core.config import Config

#: password prefixes of the hashes a users file may hold (htpasswd -B, argon2)
HASH_PREFIXES = ("$2a$", "$2b$", "$2y$", "$argon2")

Keys = tuple[tuple[str, bytes], ...]


def clear_text_users(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The (user, password) pairs whose password is in clear (not a bcrypt or Argon2 hash)."""
    return [(user, password) for user, password in pairs if not password.startswith(HASH_PREFIXES)]


class Keyring:
    """(user, key) for one method, derived from a Config's users (and its users file) once per change."""

    __slots__ = ("method", "_source", "_keys")

    def __init__(self, method: Method) -> None:
        self.method = method
        self._source: tuple[object, object] | None = None
        self._keys: Keys = ()

    def keys(self, config: Config, generation: object) -> Keys:
        """The keys for ``config``; ``generation`` is anything that changes when the users file is re-read."""
        source = (config, generation)
        cached = self._source
        if cached is None or cached[0] is not config or cached[1] is not generation:
            pairs = list(config.users)
            if config.users_file:
                pairs += read_users_file(config.users_file)
            seen: dict[str, bytes] = {}
            for user, password in clear_text_users(pairs):
                seen.setdefault(user, derive_key(password, self.method))  # the first entry of a name wins
            self._keys = tuple(seen.items())
            self._source = source
        return self._keys

    def prefer(self, user: str) -> None:
        """Try ``user``'s key first from now on (the last one that matched, as outline-ss-server does)."""
        keys = self._keys
        if keys and keys[0][0] != user:
            self._keys = tuple(sorted(keys, key=lambda pair: pair[0] != user))


_keyrings: dict[str, Keyring] = {}


def keyring_for(method: Method) -> Keyring:
    """The process's keyring for ``method`` (shared by the TCP and UDP sides of every --ss listener)."""
    ring = _keyrings.get(method.name)
    if ring is None:
        ring = _keyrings[method.name] = Keyring(method)
    return ring


def users_generation(users: object) -> object:
    """Changes whenever the users are reloaded: ``Users.replace`` swaps its table whole."""
    return getattr(users, "_table", None)


_salt_filter: SaltFilter | None = None


def salt_filter() -> SaltFilter:
    """The replay filter of this gproxy, shared by every --ss listener, both directions and (with
    --workers) every worker; a process that was given none makes its own on first use."""
    global _salt_filter
    if _salt_filter is None:
        _salt_filter = SaltFilter.create(shared=False)
    return _salt_filter


def use_salt_filter(shared: SaltFilter) -> None:
    """Use ``shared`` (the --workers supervisor's) as this process's replay filter."""
    global _salt_filter
    _salt_filter = shared
