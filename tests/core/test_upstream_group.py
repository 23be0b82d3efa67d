"""Upstream groups: strategy order, cooldown, failover within one timeout, --bypass, via and metrics.

Fake upstream dialers and an injectable clock: no sockets but socketpairs, no waiting.
"""

from __future__ import annotations

import random
import socket
from collections import Counter

import pytest

from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address
from gproxy.core.context import Metrics
from gproxy.core.errors import DialError, UpstreamDown
from gproxy.core.rules import parse_dest_rule
from gproxy.core.upstream_group import PRUNE_EVERY, Router, UpstreamGroup, dialled_via

DEST = Address("example.com", 443)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeUpstream:
    """Hands out one end of a socketpair, or raises ``error``; records every dial."""

    def __init__(self, name: str, sockets: list[socket.socket], log: list[str] | None = None) -> None:
        self.name = name
        self.error: DialError | None = None
        self.sockets = sockets
        self.log = log if log is not None else []  # names of every upstream dialled, in order
        self.calls: list[tuple[float, float | None]] = []  # (timeout, reach_timeout)

    def dial(self, dest, timeout, check=None, *, reach_timeout=None):
        self.calls.append((timeout, reach_timeout))
        self.log.append(self.name)
        if self.error is not None:
            raise self.error
        ours, theirs = socket.socketpair()
        self.sockets += [ours, theirs]
        return ours


class RecordingMetrics(Metrics):
    def __init__(self) -> None:
        self.state: dict[str, bool] = {}
        self.dials: Counter[tuple[str, str]] = Counter()

    def upstream_state(self, upstream, up):
        self.state[upstream] = up

    def upstream_dial(self, upstream, result):
        self.dials[upstream, result] += 1


DOWN = UpstreamDown("upstream x: connection refused", ReplyCode.CONNECTION_REFUSED)


@pytest.fixture
def sockets():
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def clock():
    return Clock()


def group_of(names, sockets, clock, strategy="failover", **kwargs):
    log: list[str] = []
    fakes = [FakeUpstream(name, sockets, log) for name in names]
    group = UpstreamGroup([(f.name, f) for f in fakes], strategy, cooldown=30, clock=clock, **kwargs)
    return group, fakes


def names_dialled(fakes):
    return fakes[0].log


def test_failover_uses_the_first_that_is_up_and_skips_a_failed_one_for_the_cooldown(sockets, clock):
    metrics = RecordingMetrics()
    group, (a, b, c) = group_of("abc", sockets, clock, metrics=metrics)
    assert metrics.state == {"a": True, "b": True, "c": True}  # present before any dial
    group.dial(DEST, 10)
    assert (len(a.calls), len(b.calls)) == (1, 0)

    a.error = DOWN
    group.dial(DEST, 10)  # a fails itself: the same dial moves on to b
    assert (len(a.calls), len(b.calls), len(c.calls)) == (2, 1, 0)
    assert metrics.state["a"] is False and metrics.dials["a", "failed"] == 1

    clock.now += 29
    group.dial(DEST, 10)  # a is cooling down: not even tried
    assert (len(a.calls), len(b.calls)) == (2, 2)

    a.error = None
    clock.now += 2  # the cooldown is over: a is first again
    group.dial(DEST, 10)
    assert (len(a.calls), len(b.calls)) == (3, 2)
    assert metrics.state["a"] is True and metrics.dials["a", "ok"] == 2


def test_a_destination_error_the_upstream_reports_ends_the_dial_and_keeps_it_up(sockets, clock):
    metrics = RecordingMetrics()
    group, (a, b) = group_of("ab", sockets, clock, metrics=metrics)
    a.error = DialError("upstream a: it answered 0x05", ReplyCode.CONNECTION_REFUSED)
    with pytest.raises(DialError) as info:
        group.dial(DEST, 10)
    assert not isinstance(info.value, UpstreamDown) and info.value.reply == ReplyCode.CONNECTION_REFUSED
    assert b.calls == []  # no failover for the destination's own failure
    assert metrics.state["a"] is True and metrics.dials["a", "refused"] == 1
    assert [m.name for m in group.order()] == ["a", "b"]


def test_when_all_are_down_the_one_that_failed_longest_ago_goes_first(sockets, clock):
    group, (a, b, c) = group_of("abc", sockets, clock)
    for fake in (a, b, c):
        fake.error = DOWN
        fake.dial = slow(fake.dial, clock)  # each failure takes a second: a, b, c fail in that order
    with pytest.raises(DialError):
        group.dial(DEST, 10)
    assert [m.name for m in group.order()] == ["a", "b", "c"]
    names_dialled([a]).clear()
    b.error = None
    group.dial(DEST, 10)  # a (failed longest ago) is tried first and fails again, then b, which works
    assert names_dialled([a]) == ["a", "b"]
    assert [m.name for m in group.order()] == ["b", "c", "a"]  # b is up; c failed before a now


def slow(dial, clock):
    def dial_slowly(*args, **kwargs):
        clock.now += 1
        return dial(*args, **kwargs)

    return dial_slowly


def test_all_failing_raises_the_last_reply(sockets, clock):
    group, fakes = group_of("ab", sockets, clock)
    fakes[0].error = DOWN
    fakes[1].error = UpstreamDown("upstream b: no answer in time", ReplyCode.TTL_EXPIRED)
    with pytest.raises(DialError) as info:
        group.dial(DEST, 10)
    assert info.value.reply == ReplyCode.TTL_EXPIRED
    assert "every upstream failed" in str(info.value) and "upstream b" in str(info.value)


def test_a_single_upstream_that_fails_raises_its_own_error(sockets, clock):
    group, (a,) = group_of("a", sockets, clock)
    a.error = DOWN
    with pytest.raises(UpstreamDown) as info:
        group.dial(DEST, 10)
    assert info.value is DOWN


def test_each_upstream_gets_a_share_of_the_time_left_to_be_reached(sockets, clock):
    group, (a, b, c) = group_of("abc", sockets, clock)
    a.error = b.error = DOWN
    group.dial(DEST, 9)
    assert a.calls == [(9, 3)]  # three to try: a third of the time to reach a, all of it to finish
    assert b.calls == [(9, 4.5)]
    assert c.calls == [(9, 9)]


def test_a_slow_failure_can_use_up_the_time_of_the_others(sockets, clock):
    group, (a, b) = group_of("ab", sockets, clock)

    def slow_failure(*args, **kwargs):
        clock.now += 5
        raise DOWN

    a.dial = slow_failure
    with pytest.raises(DialError) as info:
        group.dial(DEST, 5)
    assert b.calls == []  # the whole timeout went on a
    assert info.value.reply == ReplyCode.CONNECTION_REFUSED


def test_round_robin_spreads_over_the_ones_that_are_up(sockets, clock):
    group, fakes = group_of("abc", sockets, clock, "round-robin")
    for _ in range(6):
        group.dial(DEST, 10)
    assert names_dialled(fakes) == ["a", "b", "c", "a", "b", "c"]
    fakes[1].error = DOWN
    names_dialled(fakes).clear()
    for _ in range(4):
        group.dial(DEST, 10)
    # b fails once (c takes that dial), then only a and c are up and take turns
    assert names_dialled(fakes) == ["a", "b", "c", "a", "c"]


def test_random_reaches_every_upstream_and_still_fails_over(sockets, clock):
    group, fakes = group_of("abc", sockets, clock, "random", rng=random.Random(7))
    for _ in range(30):
        group.dial(DEST, 10)
    assert all(len(fake.calls) >= 3 for fake in fakes)
    fakes[0].error = DOWN
    for _ in range(10):
        group.dial(DEST, 10)  # never raises: a failure moves on


def test_least_conns_counts_open_tunnels_and_closing_releases_them(sockets, clock):
    group, (a, b) = group_of("ab", sockets, clock, "least-conns")
    first = group.dial(DEST, 10)
    group.dial(DEST, 10)
    group.dial(DEST, 10)
    assert (len(a.calls), len(b.calls)) == (2, 1)  # a, b, then a (tie: the order given)
    clock.now += PRUNE_EVERY
    group.dial(DEST, 10)  # a has 2 open, b 1
    assert (len(a.calls), len(b.calls)) == (2, 2)
    first.close()
    clock.now += PRUNE_EVERY
    group.dial(DEST, 10)  # a has 1 open now, b 2
    assert (len(a.calls), len(b.calls)) == (3, 2)


def test_least_conns_counts_dials_in_flight(sockets, clock):
    group, (a, b) = group_of("ab", sockets, clock, "least-conns")
    seen = []

    def nested(*args, **kwargs):  # while a's dial is in flight, another dial picks b
        seen.append(group.order()[0].name)
        return FakeUpstream.dial(a, *args, **kwargs)

    a.dial = nested
    group.dial(DEST, 10)
    assert seen == ["b"]


def test_router_bypass_goes_direct_and_notes_the_route(sockets, clock):
    group, (a,) = group_of("a", sockets, clock)
    direct = FakeUpstream("direct", sockets)
    rules = [parse_dest_rule(spec, "--bypass") for spec in ("*.lan", "10.0.0.0/8", "intranet.example:443")]
    router = Router(direct, group, rules)
    for dest, via in [
        (Address("nas.lan", 80), "direct"),
        (Address("10.1.2.3", 22), "direct"),
        (Address("intranet.example", 443), "direct"),
        (Address("intranet.example", 80), "a"),  # the rule's port does not match
        (Address("example.com", 443), "a"),
        (Address("11.0.0.1", 22), "a"),
    ]:
        router.dial(dest, 10)
        assert dialled_via.get() == via, dest
    assert (len(direct.calls), len(a.calls)) == (3, 3)


def test_router_without_upstreams_is_direct(sockets):
    direct = FakeUpstream("direct", sockets)
    Router(direct).dial(DEST, 10)
    assert dialled_via.get() == "direct" and len(direct.calls) == 1


def test_the_route_of_a_failed_dial_is_the_last_upstream_tried(sockets, clock):
    group, (a, b) = group_of("ab", sockets, clock)
    a.error = b.error = DOWN
    with pytest.raises(DialError):
        Router(FakeUpstream("direct", sockets), group).dial(DEST, 10)
    assert dialled_via.get() == "b"


def test_upstreams_with_the_same_name_are_told_apart(sockets, clock):
    """Two upstreams whose URLs differ only in the password (which names leave out) get
    names of their own in metrics and via=."""
    metrics = RecordingMetrics()
    group, fakes = group_of(["socks5://u:***@h:1080", "socks5://u:***@h:1080", "x"], sockets, clock, metrics=metrics)
    assert [member.name for member in group.members] == ["socks5://u:***@h:1080", "socks5://u:***@h:1080#2", "x"]
    fakes[0].error = DOWN
    group.dial(DEST, 10)
    assert dialled_via.get() == "socks5://u:***@h:1080#2"
    assert metrics.state == {"socks5://u:***@h:1080": False, "socks5://u:***@h:1080#2": True, "x": True}
