"""Proxy.start() starts everything or nothing: no ``listening`` line and no open port
after a start that fails; a Metrics given through the API with a metrics listener."""

from __future__ import annotations

import socket

import pytest

from gproxy import Config, Proxy
from gproxy.core.context import Metrics
from gproxy.core.errors import ConfigError
from gproxy.server import acceptor


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_plain_metrics_with_a_metrics_listener_fails_before_anything_listens(capsys):
    proxy = Proxy(Config.build(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"]), metrics=Metrics())
    proxy.bind()
    socks_port = proxy.address("socks5").port
    with pytest.raises(ConfigError, match="not PrometheusMetrics"):
        proxy.start()  # was: "metrics listeners are not available in this version"
    assert "listening" not in capsys.readouterr().err
    assert refused(socks_port)


def test_a_start_that_fails_on_its_second_listener_leaves_the_first_port_closed(monkeypatch, capsys):
    proxy = Proxy(Config.build(socks=["127.0.0.1:0"], http=["127.0.0.1:0"]))
    proxy.bind()
    first = proxy.address("socks5").port
    real_start = acceptor.Acceptor.start
    calls = []

    def second_fails(self):
        calls.append(self)
        if len(calls) == 2:
            raise OSError("no more")
        real_start(self)

    monkeypatch.setattr(acceptor.Acceptor, "start", second_fails)
    with pytest.raises(OSError, match="no more"):
        proxy.start()
    assert len(calls) == 2
    assert "listening" not in capsys.readouterr().err
    assert refused(first)


def test_a_prometheus_metrics_listener_still_starts(capsys):
    with Proxy(Config.build(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"])) as proxy:
        err = capsys.readouterr().err
        assert err.count("gproxy: listening") == 2
        assert not refused(proxy.address("metrics").port)


def test_a_stopped_proxy_still_tells_its_ports_and_does_not_start_again():
    """address() and addresses after stop() were OSError (EBADF, from the closed sockets), and
    so was start() again."""
    with Proxy(Config.build(socks=["127.0.0.1:0"], admin=["127.0.0.1:0"]), announce=False) as proxy:
        bound = proxy.addresses
        port = proxy.address("socks5").port
    assert proxy.addresses == bound
    assert proxy.address("socks5").port == port
    assert refused(port)
    with pytest.raises(RuntimeError, match="was stopped; make a new Proxy"):
        proxy.start()
    assert refused(port)
