"""Token buckets and rate parsing (pure: an injected clock)."""

from __future__ import annotations

import gc

import pytest

from gproxy.core.errors import ConfigError
from gproxy.core.limits import RateLimits, TokenBucket, parse_rate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("text", "rate"),
    [("0", 0), ("1000", 1000), ("500k", 500 * 1024), ("500K", 500 * 1024), ("1M", 1 << 20), ("1.5m", 3 << 19),
     ("2G", 2 << 30), (" 7 ", 7), (2048, 2048)],
)  # fmt: skip
def test_parse_rate(text, rate):
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "fast", "1T", "-5", "1 M", "k", "1MB", True, -1])
def test_parse_rate_refuses(text):
    with pytest.raises(ConfigError, match="--rate"):
        parse_rate(text)


def test_burst_is_one_second_then_the_rate():
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.take(5000) == 1000  # the burst
    assert bucket.take(1) == 0
    assert bucket.delay(500) == pytest.approx(0.5)
    clock.now += 0.25
    assert bucket.take(5000) == 250
    clock.now += 10  # idle time does not pile up beyond the burst
    assert bucket.take(5000) == 1000


def test_spend_goes_into_debt_and_delays():
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    bucket.spend(3000)  # a datagram is taken whole
    assert bucket.take(1) == 0
    assert bucket.delay(1) == pytest.approx(2.001)


def test_owners_share_a_bucket_per_direction_and_zero_is_unlimited():
    limits = RateLimits(Clock())
    assert limits.buckets("alice", 0) is None
    up, down = limits.buckets("alice", 1000)
    again_up, again_down = limits.buckets("alice", 1000)
    assert up is again_up and down is again_down and up is not down
    other_up, _ = limits.buckets("bob", 1000)
    assert other_up is not up
    assert up.take(800) == 800
    assert again_up.take(800) == 200  # two tunnels of one user share one rate


def test_a_bucket_is_forgotten_when_no_tunnel_holds_it():
    limits = RateLimits(Clock())
    up, _ = limits.buckets("alice", 1000)
    up.take(1000)
    del up, _
    gc.collect()
    fresh, _ = limits.buckets("alice", 1000)
    assert fresh.take(1000) == 1000


def test_take_waits_for_the_least_it_asks_and_unused_grants_go_back():
    clock = Clock()
    bucket = TokenBucket(1600, clock)
    assert bucket.quantum == 100
    assert bucket.take(1550) == 1550
    assert bucket.take(1000, least=100) == 0  # 50 left: not worth a read
    assert bucket.take(40, least=100) == 40  # but a small want is served
    bucket.give_back(30)  # a read returned 10 of 40
    assert bucket.take(1000) == 40
    bucket.give_back(5000)  # never above the burst
    assert bucket.take(5000) == 1600


def test_a_datagram_passes_whole_or_not_at_all():
    clock = Clock()
    bucket = TokenBucket(1000, clock)
    assert bucket.take_whole(800)
    assert not bucket.take_whole(300)  # 200 left: dropped, nothing spent
    assert bucket.take_whole(200)
    clock.now += 0.5
    assert bucket.take_whole(500)
