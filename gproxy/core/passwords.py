"""Password secrets: plain text, bcrypt or Argon2 hashes, and the cache of good checks.

A users-file line is ``USER:SECRET``; ``Secret.parse`` tells the kinds apart and
refuses malformed hashes. ``AuthCache`` remembers successful checks under a keyed
hash of the credentials, so reconnecting clients cost one slow hash per period.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import argon2
import bcrypt

#: bcrypt reads at most this many bytes of a password (longer ones are cut, as htpasswd does)
BCRYPT_MAX_PASSWORD = 72
BCRYPT_COST = 12
_BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
# PHC string format as libargon2 writes it; salt >= 8 bytes, hash >= 4 bytes, unpadded base64
_ARGON2 = re.compile(r"\$argon2(id|i|d)\$(v=\d+\$)?m=\d+,t=\d+,p=\d+\$[A-Za-z0-9+/]{11,}\$[A-Za-z0-9+/]{6,}")
_ARGON2_VERIFIER = argon2.PasswordHasher()  # verify() reads the type and costs from the hash itself


class SecretKind(Enum):
    PLAIN = "plain"
    BCRYPT = "bcrypt"
    ARGON2 = "argon2"


@dataclass(frozen=True)
class Secret:
    """What follows the colon of a ``USER:SECRET`` line."""

    kind: SecretKind
    value: bytes = field(repr=False)

    @property
    def is_hash(self) -> bool:
        return self.kind is not SecretKind.PLAIN

    @classmethod
    def parse(cls, text: str) -> Secret:
        """Raises ValueError (whose message never holds the secret) for a malformed hash."""
        if text.startswith("$2"):
            match = _BCRYPT.fullmatch(text)
            if match is None or not 4 <= int(match.group(1)) <= 31:
                raise ValueError("malformed bcrypt hash (expected $2a$, $2b$ or $2y$, cost 04-31, 53 characters)")
            return cls(SecretKind.BCRYPT, ("$2b$" + text[4:]).encode("ascii"))  # one algorithm, three names
        if text.startswith("$argon2"):
            if _ARGON2.fullmatch(text) is None:
                raise ValueError("malformed Argon2 hash (expected $argon2id$, $argon2i$ or $argon2d$)")
            try:
                argon2.extract_parameters(text)
            except (argon2.exceptions.InvalidHashError, ValueError):
                raise ValueError("malformed Argon2 hash") from None
            return cls(SecretKind.ARGON2, text.encode("ascii"))
        return cls(SecretKind.PLAIN, text.encode("utf-8"))


def verify(secret: Secret, password: bytes) -> bool:
    """True if ``password`` matches; constant time for plain text, the libraries' for hashes."""
    if secret.kind is SecretKind.PLAIN:
        return hmac.compare_digest(password, secret.value)
    try:
        if secret.kind is SecretKind.BCRYPT:
            return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], secret.value)
        return _ARGON2_VERIFIER.verify(secret.value, password)
    except (ValueError, argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
        return False  # a mismatch, or a hash the library refuses: either way, no


def hash_password(password: bytes) -> str:
    """A bcrypt ``$2b$`` hash for a users file; ValueError beyond 72 bytes (bcrypt would cut it)."""
    if len(password) > BCRYPT_MAX_PASSWORD:
        raise ValueError(f"bcrypt passwords are at most {BCRYPT_MAX_PASSWORD} bytes")
    return bcrypt.hashpw(password, bcrypt.gensalt(BCRYPT_COST)).decode("ascii")


class AuthCache:
    """Successful checks, remembered for ``seconds`` (0: off), at most ``max_entries``, oldest out.

    Entries are keyed by HMAC-SHA256 under a random key of this instance, so
    neither a password nor a plain hash of one is ever held. Failures are not stored.
    """

    def __init__(
        self, seconds: float = 300.0, max_entries: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._expiry: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def _entry(self, user: bytes, password: bytes) -> bytes:
        # user length first: no (user, password) pair can be spelt as another
        message = len(user).to_bytes(4, "big") + user + b"\0" + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def hit(self, user: bytes, password: bytes) -> bool:
        if self.seconds <= 0:
            return False
        entry = self._entry(user, password)
        expiry = self._expiry.get(entry)
        if expiry is None:
            return False
        if self._clock() < expiry:
            return True
        del self._expiry[entry]
        return False

    def remember(self, user: bytes, password: bytes) -> None:
        if self.seconds <= 0 or self.max_entries <= 0:
            return
        now = self._clock()
        entry = self._entry(user, password)
        self._expiry.pop(entry, None)
        self._expiry[entry] = now + self.seconds
        # oldest first: drop the expired at the front, then any beyond the bound
        while self._expiry and (len(self._expiry) > self.max_entries or next(iter(self._expiry.values())) <= now):
            self._expiry.popitem(last=False)
