"""PrometheusMetrics: each label set's child is looked up once (labels() costs about a
microsecond, and sessions and datagrams come by the thousand), and the counts stay right."""

from __future__ import annotations

from prometheus_client import generate_latest

from gproxy.core.addr import Address
from gproxy.core.errors import Outcome
from gproxy.core.session import Session
from gproxy.services.metrics import PrometheusMetrics


def test_label_children_are_made_once_and_count_every_session(monkeypatch):
    metrics = PrometheusMetrics()
    calls = []
    for metric in (metrics.accepted, metrics.active, metrics.sessions, metrics.bytes_up, metrics.bytes_down):
        real, name = metric.labels, metric._name
        monkeypatch.setattr(
            metric, "labels", lambda *values, _real=real, _name=name: calls.append((_name, values)) or _real(*values)
        )
    for outcome in (Outcome.OK, Outcome.OK, Outcome.OK, Outcome.RESET):
        session = Session(Address("127.0.0.1", 5), "socks5 127.0.0.1:1080", proto="socks5", up=10, down=20)
        session.outcome = outcome
        metrics.session_opened(session.listener)
        metrics.session_closed(session)
    assert len(calls) == len(set(calls)) == 6  # accepted, active, 2 x sessions, bytes up, bytes down
    text = generate_latest(metrics.registry).decode()
    assert 'gproxy_sessions_total{listener="socks5 127.0.0.1:1080",outcome="ok",proto="socks5"} 3.0' in text
    assert 'gproxy_sessions_total{listener="socks5 127.0.0.1:1080",outcome="reset",proto="socks5"} 1.0' in text
    assert 'gproxy_bytes_up_total{listener="socks5 127.0.0.1:1080",proto="socks5"} 40.0' in text
    assert 'gproxy_connections_active{listener="socks5 127.0.0.1:1080"} 0.0' in text
