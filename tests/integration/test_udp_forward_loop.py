"""``--udp-forward`` toward gproxy's own UDP listener (a datagram storm) is refused: at start
for a literal target (exit 2), per resolved address for a name. And a datagram the kernel
will not take (EAGAIN) is counted as dropped, never as relayed."""

from __future__ import annotations

import socket

import gevent
import pytest

from gproxy import Config, Proxy
from gproxy.core.context import Metrics
from gproxy.core.errors import ConfigError
from tests.helpers import GproxyProcess, wait_for


class RecordingMetrics(Metrics):
    def __init__(self) -> None:
        self.datagrams: list[tuple[str, str, str | None]] = []

    def udp_datagram(self, listener: str, direction: str, dropped: str | None = None) -> None:
        self.datagrams.append((listener, direction, dropped))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


@pytest.mark.parametrize(
    "listen_host, target_host",
    [("127.0.0.1", "127.0.0.1"), ("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "::ffff:127.0.0.1")],
)
def test_literal_target_on_our_own_listener_is_exit_2(listen_host, target_host):
    port = free_udp_port()
    target = f"[{target_host}]" if ":" in target_host else target_host
    with GproxyProcess("--udp-forward", f"{listen_host}:{port}={target}:{port}", wait=False) as gproxy:
        assert gproxy.proc.wait(15) == 2
        assert gproxy.proc.stderr is not None
        lines = gproxy.proc.stderr.read().decode().splitlines()
    assert len(lines) == 1 and "loop" in lines[0] and lines[0].startswith("gproxy: "), lines


def test_target_on_another_of_our_udp_listeners_is_refused_too(echo_udp):
    first, second = free_udp_port(), free_udp_port()
    config = Config.build(
        udp_forward=[f"127.0.0.1:{first}=127.0.0.1:{second}", f"127.0.0.1:{second}=127.0.0.1:{echo_udp.port}"]
    )
    proxy = Proxy(config, announce=False)
    try:
        with pytest.raises(ConfigError, match="would loop"):
            proxy.start()
    finally:
        proxy.stop(0)


def start_forwarder(resolved: list[str], metrics: Metrics | None = None) -> tuple[Proxy, tuple[str, int]]:
    """A forwarder on 127.0.0.1:PORT toward ``loop.test:PORT``, which resolves to ``resolved``."""
    port = free_udp_port()

    def resolver(host: str, target_port: int) -> list[tuple[int, tuple[object, ...]]]:
        assert host == "loop.test"
        return [(socket.AF_INET, (ip, target_port)) for ip in resolved]

    config = Config.build(udp_forward=[f"127.0.0.1:{port}=loop.test:{port}"])
    proxy = Proxy(config, resolver=resolver, metrics=metrics, announce=False).start()
    return proxy, ("127.0.0.1", port)


def test_a_name_resolving_to_our_own_listener_opens_no_mapping():
    metrics = RecordingMetrics()
    proxy, address = start_forwarder(["127.0.0.1"], metrics)
    (service,) = proxy._services
    sock = client_socket()
    try:
        for _ in range(3):
            sock.sendto(b"storm?", address)
        gevent.sleep(0.5)  # before the fix, mappings multiplied here
        assert service.mappings == {}
        assert ("udp-forward", "up", None) not in metrics.datagrams
    finally:
        sock.close()
        proxy.stop(0)


def test_own_addresses_among_the_resolved_ones_are_skipped(echo_udp):
    # The name's first address is our listener, the second one another host's port: use that one.
    port = free_udp_port()
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.2", port))
    echo.settimeout(5)
    config = Config.build(udp_forward=[f"127.0.0.1:{port}=loop.test:{port}"])

    def resolver(host: str, target_port: int) -> list[tuple[int, tuple[object, ...]]]:
        return [(socket.AF_INET, ("127.0.0.1", target_port)), (socket.AF_INET, ("127.0.0.2", target_port))]

    proxy = Proxy(config, resolver=resolver, announce=False).start()
    sock = client_socket()
    try:
        sock.sendto(b"hello", ("127.0.0.1", port))
        data, source = echo.recvfrom(100)
        assert data == b"hello"
        echo.sendto(b"back", source)
        assert sock.recvfrom(100) == (b"back", ("127.0.0.1", port))
    finally:
        sock.close()
        echo.close()
        proxy.stop(0)


class WouldBlock:
    """A connected UDP socket whose send buffer is full."""

    def send(self, data: object) -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")


def test_a_datagram_the_kernel_does_not_take_is_dropped_not_counted(echo_udp):
    metrics = RecordingMetrics()
    config = Config.build(udp_forward=[f"127.0.0.1:0=127.0.0.1:{echo_udp.port}"])
    proxy = Proxy(config, metrics=metrics, announce=False).start()
    bound = proxy.address("udp-forward")
    address = (bound.host, bound.port)
    (service,) = proxy._services
    sock = client_socket()
    try:
        sock.sendto(b"first", address)
        assert sock.recvfrom(100)[0] == b"first"
        (mapping,) = service.mappings.values()
        real, mapping.raw = mapping.raw, WouldBlock()
        for _ in range(3):
            sock.sendto(b"blocked", address)
        wait_for(lambda: metrics.datagrams.count(("udp-forward", "up", "send_failed")) == 3, timeout=5)
        assert mapping.session.up == len(b"first")
        mapping.raw = real  # the loop lives on
        sock.sendto(b"again", address)
        assert sock.recvfrom(100)[0] == b"again"
        assert mapping.session.up == len(b"firstagain")
    finally:
        sock.close()
        proxy.stop(0)
