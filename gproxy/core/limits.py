"""Rate limits: token buckets per user (or per client IP), one per direction.

Pure bookkeeping, no I/O and no timers: the relay asks a bucket how many bytes it
may move now (``take``, ``give_back`` what it did not use) and, when the answer is
nothing, how long to wait (``delay``); a datagram is let through whole or not at all
(``take_whole``). A bucket holds at most one second's worth (the burst) and is shared by
every tunnel and datagram of its owner, so their sum stays at the rate.
"""

from __future__ import annotations

import math
import re
import time
import weakref
from collections.abc import Callable

from gproxy.core.errors import ConfigError

_RATE = re.compile(r"(\d+(?:\.\d+)?)([kKmMgG]?)")
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_rate(text: str | int | float, what: str = "--rate") -> int:
    """Bytes per second from curl's ``--limit-rate`` spelling (``500k``, ``1M``, ``2G``); 0 = no limit.

    Raises:
        ConfigError: anything else, naming ``what``.
    """
    if isinstance(text, bool) or (isinstance(text, float) and not math.isfinite(text)):  # TOML's nan, inf
        raise ConfigError(f"{what}: expected a rate such as 500k, 1M or 0, got {text!r}")
    if isinstance(text, int | float):
        if text < 0:
            raise ConfigError(f"{what}: a rate cannot be negative")
        return int(text)
    match = _RATE.fullmatch(text.strip())
    if match is None:
        raise ConfigError(f"{what}: expected a rate such as 500k, 1M or 0, got {text!r}")
    return int(float(match.group(1)) * _SUFFIX[match.group(2).lower()])


class TokenBucket:
    """``rate`` bytes per second, bursts of up to one second's worth."""

    __slots__ = ("rate", "capacity", "quantum", "tokens", "stamp", "clock", "__weakref__")

    def __init__(self, rate: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = float(rate)
        #: the least a paused reader waits for: about 1/16 s worth, at most one 64 KiB chunk
        self.quantum = max(1, min(rate // 16, 1 << 16))
        self.tokens = float(rate)
        self.clock = clock
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.stamp = now

    def take(self, wanted: int, least: int = 1) -> int:
        """Grant up to ``wanted`` bytes now and spend them; 0 when fewer than
        ``least`` (nor ``wanted``) are there: no trickle of tiny reads."""
        self._refill()
        granted = min(wanted, int(self.tokens))
        if granted < min(least, wanted) or granted <= 0:
            return 0
        self.tokens -= granted
        return granted

    def give_back(self, n: int) -> None:
        """Return ``n`` granted bytes that were not moved (a read returned fewer)."""
        self.tokens = min(self.capacity, self.tokens + n)

    def take_whole(self, n: int) -> bool:
        """Spend ``n`` bytes if all of them are there now (a datagram), else nothing."""
        self._refill()
        if self.tokens < n:
            return False
        self.tokens -= n
        return True

    def spend(self, n: int) -> None:
        """Spend ``n`` bytes already moved (a datagram is taken whole); the balance may go negative."""
        self._refill()
        self.tokens -= n

    def delay(self, wanted: int = 1) -> float:
        """Seconds until ``wanted`` bytes (at most the burst) will be there."""
        self._refill()
        missing = min(wanted, self.capacity) - self.tokens
        return max(missing / self.rate, 0.0) if missing > 0 else 0.0


class RateLimits:
    """The buckets of everyone with a limit: ``(owner, direction) -> TokenBucket``.

    Buckets are held weakly: the tunnels that use one keep it alive, and it is gone
    (its balance forgotten) once its owner has no open tunnel.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._buckets: weakref.WeakValueDictionary[tuple[str, bool, int], TokenBucket] = weakref.WeakValueDictionary()

    def buckets(self, owner: str, rate: int) -> tuple[TokenBucket, TokenBucket] | None:
        """(upload, download) buckets of ``owner`` at ``rate``; None when rate is 0 (no limit)."""
        if rate <= 0:
            return None
        return self._bucket(owner, True, rate), self._bucket(owner, False, rate)

    def _bucket(self, owner: str, upward: bool, rate: int) -> TokenBucket:
        key = (owner, upward, rate)  # a changed rate (SIGHUP) starts a fresh bucket
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(rate, self.clock)
        return bucket
