"""Shared fixtures. The test process is monkey-patched first, as gproxy's
own server process is, so blocking stdlib clients cooperate with servers
running in the same hub."""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import EchoServer, ProxyFactory, UdpEchoServer, make_proxy  # noqa: E402


@pytest.fixture
def echo_tcp() -> Iterator[EchoServer]:
    """A TCP echo server on 127.0.0.1, port 0."""
    with EchoServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def echo_tcp6() -> Iterator[EchoServer]:
    """A TCP echo server on ::1, port 0."""
    with EchoServer("::1") as server:
        yield server


@pytest.fixture
def proxy() -> Iterator[ProxyFactory]:
    """``proxy(socks=["127.0.0.1:0"], user=["u:p"])`` -> a started Proxy; stopped after the test."""
    started = []

    def factory(**settings: object):  # type: ignore[no-untyped-def]
        running = make_proxy(**settings)
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop(0)


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (freshly closed)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


@pytest.fixture
def echo_udp() -> Iterator[UdpEchoServer]:
    """A UDP echo server on 127.0.0.1, port 0 (``.received`` lists what it got)."""
    with UdpEchoServer("127.0.0.1") as server:
        yield server


@pytest.fixture
def echo_udp6() -> Iterator[UdpEchoServer]:
    """A UDP echo server on ::1, port 0."""
    with UdpEchoServer("::1") as server:
        yield server


@pytest.fixture
def echo_udp_localhost() -> Iterator[UdpEchoServer]:
    """A UDP echo server on 127.0.0.1 and ::1, one port: reachable as ``localhost``."""
    with UdpEchoServer("localhost") as server:
        yield server
