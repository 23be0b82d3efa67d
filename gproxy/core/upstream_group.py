"""Upstream groups: which of several ``--upstream`` a dial goes through, and ``--bypass``.

An UpstreamGroup keeps each upstream's health (down for ``--upstream-cooldown``
after it failed itself) and orders them by strategy; a Router, one per
listener, sends bypassed destinations direct and notes each dial's route
(``via=`` in the access log). No parsing here: Config hands over parsed rules.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Protocol

from gproxy.codec.replies import ReplyCode
from gproxy.core._gevent import is_plain, raw_socket
from gproxy.core.addr import Address
from gproxy.core.context import Metrics
from gproxy.core.dial import Dialer, IPCheck
from gproxy.core.errors import DialError, UpstreamDown
from gproxy.core.log import logger
from gproxy.core.rules import DestRule

#: the route of the latest dial in this greenlet: ``direct`` or an upstream (password
#: redacted). Each greenlet has its own context, so sessions never see each other's.
dialled_via: ContextVar[str | None] = ContextVar("dialled_via", default=None)

DIRECT = "direct"
#: least-conns looks for closed sockets at most this often (seconds): no per-chunk or per-close work
PRUNE_EVERY = 0.1


class UpstreamDialing(Protocol):
    """What a group needs of one upstream: an UpstreamDialer, or a fake in tests."""

    def dial(
        self, dest: Address, timeout: float, check: IPCheck | None = None, *, reach_timeout: float | None = None
    ) -> socket.socket: ...


class _Member:
    """One upstream of a group and what the group knows about it."""

    __slots__ = ("dialer", "name", "failed_at", "dialling", "sockets")

    def __init__(self, dialer: UpstreamDialing, name: str) -> None:
        self.dialer = dialer
        self.name = name
        self.failed_at: float | None = None  # when it last failed itself; None: up
        self.dialling = 0  # dials in flight through it
        self.sockets: list[socket.socket] = []  # least-conns: tunnels' sockets, closed ones pruned lazily

    def is_down(self, now: float, cooldown: float) -> bool:
        return self.failed_at is not None and now - self.failed_at < cooldown


def _distinct_names(members: Iterable[tuple[str, UpstreamDialing]]) -> list[tuple[str, UpstreamDialing]]:
    """The members with a name each of its own: a name given before (the same URL, or two
    that differ only in the password, which names leave out) gets ``#2``, ``#3``... so that
    metrics and ``via=`` tell them apart."""
    seen: dict[str, int] = {}
    named = []
    for name, dialer in members:
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name}#{seen[name]}", dialer))
    return named


class UpstreamGroup:
    """Dial through the first upstream that works, in strategy order, within one timeout.

    Upstreams that are up come first (``failover``: in the order given;
    ``round-robin``: rotating; ``random``; ``least-conns``: fewest open tunnels
    and dials in flight), then the ones cooling down, the one that failed
    longest ago first. An upstream that fails itself (UpstreamDown) is marked
    down and the next one is tried; a destination error it reports ends the
    dial at once, with its reply code.
    """

    def __init__(
        self,
        members: Iterable[tuple[str, UpstreamDialing]],
        strategy: str = "failover",
        cooldown: float = 30.0,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.members = [_Member(dialer, name) for name, dialer in _distinct_names(members)]
        if not self.members:
            raise ValueError("an upstream group needs at least one upstream")
        self.strategy = strategy
        self.cooldown = cooldown
        self.metrics = metrics or Metrics()
        self.clock = clock
        self.rng = rng or random.Random()
        self._turn = 0  # round-robin
        self._pruned = float("-inf")  # least-conns
        for member in self.members:
            self.metrics.upstream_state(member.name, True)

    def dial(self, dest: Address, timeout: float, check: IPCheck | None = None) -> socket.socket:
        deadline = self.clock() + timeout
        order = self.order()
        last: DialError | None = None
        for index, member in enumerate(order):
            remaining = deadline - self.clock()
            if remaining <= 0:
                break
            dialled_via.set(member.name)
            member.dialling += 1
            try:
                # each upstream may take its share of what is left to be reached; the last one all of it
                sock = member.dialer.dial(dest, remaining, check, reach_timeout=remaining / (len(order) - index))
            except UpstreamDown as exc:
                self._failed(member, exc)
                last = exc
                continue
            except DialError:
                self._worked(member, "refused")  # it answered for the destination: it is up
                raise
            finally:
                member.dialling -= 1
            self._worked(member, "ok")
            if self.strategy == "least-conns":
                member.sockets.append(_tunnel_socket(sock))
            return sock
        if last is None:
            raise DialError(f"no time left to try an upstream for {dest}", ReplyCode.TTL_EXPIRED)
        if len(self.members) > 1:
            raise DialError(f"every upstream failed; the last: {last}", last.reply)
        raise last

    def order(self) -> list[_Member]:
        """The members to try, in order: up ones by strategy, then down ones, longest failed first."""
        now = self.clock()
        up = [member for member in self.members if not member.is_down(now, self.cooldown)]
        down = sorted((m for m in self.members if m.is_down(now, self.cooldown)), key=lambda m: m.failed_at or 0.0)
        if len(up) > 1:
            if self.strategy == "round-robin":
                turn = self._turn % len(up)
                self._turn += 1
                up = up[turn:] + up[:turn]
            elif self.strategy == "random":
                self.rng.shuffle(up)
            elif self.strategy == "least-conns":
                self._prune(now)
                up.sort(key=self.load)  # stable: ties keep the order given
        return up + down

    def load(self, member: _Member) -> int:
        """least-conns: open tunnels through ``member`` (as of the last prune) and dials in flight."""
        return member.dialling + len(member.sockets)

    def _prune(self, now: float) -> None:
        if now - self._pruned < PRUNE_EVERY:
            return
        self._pruned = now
        for member in self.members:
            member.sockets = [sock for sock in member.sockets if sock.fileno() >= 0]

    def _failed(self, member: _Member, exc: DialError) -> None:
        was_up = member.failed_at is None
        member.failed_at = self.clock()
        self.metrics.upstream_dial(member.name, "failed")
        self.metrics.upstream_state(member.name, False)
        if was_up:
            logger.warning("%s; skipping it for %g s", exc, self.cooldown)
        else:
            logger.debug("%s", exc)

    def _worked(self, member: _Member, result: str) -> None:
        if member.failed_at is not None:
            member.failed_at = None
            logger.info("upstream %s works again", member.name)
        self.metrics.upstream_dial(member.name, result)
        self.metrics.upstream_state(member.name, True)


def _tunnel_socket(sock: socket.socket) -> socket.socket:
    """What stays open exactly as long as the tunnel over ``sock``: a plain socket's kernel
    socket (the relay takes it out of the gevent socket, which then reads as closed while
    the tunnel runs on), any other socket itself."""
    return raw_socket(sock) if is_plain(sock) else sock


class Router:
    """One listener's Dialer: through the group, or direct for ``--bypass`` destinations
    (and for every destination when there are no upstreams). Notes the route taken."""

    def __init__(self, direct: Dialer, group: UpstreamGroup | None = None, bypass: Sequence[DestRule] = ()) -> None:
        self.direct = direct
        self.group = group
        self.bypass = tuple(bypass)

    def dial(self, dest: Address, timeout: float, check: IPCheck | None = None) -> socket.socket:
        if self.group is None or (self.bypass and self.bypassed(dest)):
            dialled_via.set(DIRECT)
            return self.direct.dial(dest, timeout, check)
        return self.group.dial(dest, timeout, check)

    def bypassed(self, dest: Address) -> bool:
        """Whether a bypass rule names the destination as the client gave it (a name
        by name rules, an IP by network rules; ``*`` matches both)."""
        ip = dest.ip
        if ip is not None:
            return any(rule.matches_ip(ip, dest.port) for rule in self.bypass)
        return any(rule.matches_name(dest.host, dest.port) for rule in self.bypass)
