"""The metrics listener under abuse: junk requests, and clients that open a
connection and never finish their request. It is part of the same process,
so a connection it holds forever is an fd the proxy cannot use."""

from __future__ import annotations

import functools
import random
import socket
import urllib.request

import pytest

from tests.robustness.live import attack, fd_count, greenlet_count, hub_errors, run_all, settle, steady

HANDSHAKE_TIMEOUT = 0.5
SLACK = 8.0


@pytest.fixture
def metrics_proxy():
    from gproxy import Config, Proxy
    from gproxy.services.metrics import PrometheusMetrics

    running = Proxy(
        Config.build(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], handshake_timeout=HANDSHAKE_TIMEOUT),
        metrics=PrometheusMetrics(),
    ).start()
    yield running
    running.stop(0)


def _scrape(address: tuple[str, int]) -> bytes:
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=10) as response:
        return response.read()


def test_metrics_listener_survives_junk(metrics_proxy):
    bound = metrics_proxy.address("metrics")
    address = (bound.host, bound.port)
    assert _scrape(address)
    fds, greenlets = steady(fd_count), steady(greenlet_count)
    rng = random.Random(3)
    payloads = [rng.randbytes(rng.randint(1, 3000)) for _ in range(100)]
    payloads += [b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: " + b"a" * 70_000 + b"\r\n\r\n"] * 10
    payloads += [b"POST /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"] * 10
    with hub_errors() as tracebacks:
        run_all([functools.partial(attack, address, p, half_close=True, wait=20) for p in payloads], 50)
    assert not tracebacks, tracebacks[:3]
    assert _scrape(address)
    assert settle(fd_count, fds) <= fds
    assert settle(greenlet_count, greenlets) <= greenlets


def test_metrics_listener_drops_clients_that_never_finish_a_request(metrics_proxy):
    """A half-sent request, or none at all, is dropped like a slow proxy client."""
    bound = metrics_proxy.address("metrics")
    address = (bound.host, bound.port)
    stalled = [socket.create_connection(address, timeout=HANDSHAKE_TIMEOUT + SLACK) for _ in range(20)]
    try:
        for i, sock in enumerate(stalled):
            sock.sendall(b"GET /metrics HTTP/1.1\r\n"[: i % 10])
        for sock in stalled:
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
            except TimeoutError:
                pytest.fail("the metrics listener held a stalled connection past the handshake timeout")
    finally:
        for sock in stalled:
            sock.close()
    assert _scrape(address)
