"""Thousands of malformed, truncated, oversized and random handshakes against
every listener kind: each ends with an error reply or a close within the
handshake timeout, the server keeps serving, and nothing leaks."""

from __future__ import annotations

import collections
import functools
import os

from gproxy.core.addr import Address
from tests.robustness.live import (
    attack,
    fd_count,
    garbage,
    good_session,
    greenlet_count,
    hub_errors,
    run_all,
    settle,
    socks4_missing,
)

COUNT = int(os.environ.get("GPROXY_ROBUST_COUNT", "600"))
HANDSHAKE_TIMEOUT = 0.5
#: generous: scheduling on a loaded 2-core machine, not gproxy, decides the excess
SLACK = 8.0


def test_garbage_handshakes_end_fast_and_leak_nothing(probe, sandbox, echo_tcp, gproxy_warnings):
    dest = Address("127.0.0.1", echo_tcp.port)
    running = sandbox(probe, dest, handshake_timeout=HANDSHAKE_TIMEOUT, idle_timeout=1)
    bound = running.address(probe.kind)
    address = (bound.host, bound.port)
    for _ in range(3):  # warm up lazily created fds and greenlets
        good_session(address, probe, dest, b"warm-up")
    fds, greenlets = fd_count(), greenlet_count()

    count = COUNT // 4 if probe.fixed_target else COUNT  # a forwarder relays any bytes: less to learn
    cases = list(garbage(probe, dest, count, seed=COUNT))
    jobs = [
        functools.partial(attack, address, data, half_close=i % 3 == 0, chunk=7 if i % 5 == 0 else 0, wait=SLACK + 2)
        for i, (_, data) in enumerate(cases)
    ]
    with hub_errors() as tracebacks:
        attempts = run_all(jobs, concurrency=150)

    outcomes: collections.Counter[str] = collections.Counter()
    for (category, data), attempt in zip(cases, attempts, strict=True):
        verdict = probe.transcript(attempt.received)  # raises on bytes no server may send
        outcomes[f"{verdict}/{attempt.ended}"] += 1
        assert attempt.ended != "hung", (category, data[:100], attempt)
        # idle timeout 1 s ends tunnels that a mutation happened to make valid
        assert attempt.elapsed < HANDSHAKE_TIMEOUT + 1 + SLACK, (category, data[:100], attempt)
    print(f"{probe.kind}: {len(cases)} handshakes: {dict(outcomes)}")
    if socks4_missing():  # first byte 0x04 imports the SOCKS4 front end, not merged yet
        tracebacks = [t for t in tracebacks if "gproxy.frontends.socks4" not in t]
    assert not tracebacks, tracebacks[:5]
    assert not gproxy_warnings, [r.getMessage() for r in gproxy_warnings[:5]]

    for i in range(20):  # normal clients still work
        good_session(address, probe, dest, os.urandom(1000 + i))
    assert settle(fd_count, fds) <= fds
    assert settle(greenlet_count, greenlets) <= greenlets
