"""Prometheus metrics: a Metrics observer and the ``/metrics`` listener.

Counting happens once per session (when it opens and when it ends), never
per relayed chunk (but each UDP datagram is, through a cached child counter).
With ``--workers N`` the workers use prometheus-client's multiprocess mode: each process writes its values to files in
``PROMETHEUS_MULTIPROC_DIR`` (the supervisor makes a private one), and
``/metrics``, served by whichever worker the kernel hands the scrape to,
adds them up across all workers, dead ones included, so counters never go
backwards when a worker is replaced.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from gproxy.core.config import ListenerSpec
from gproxy.core.context import Metrics
from gproxy.core.errors import (
    AuthFailed,
    ClientClosed,
    ClientProtocolError,
    Denied,
    DialError,
    GproxyError,
    HandshakeTimeout,
    Outcome,
)
from gproxy.core.log import logger
from gproxy.core.session import Session
from gproxy.services.web import GatedServer, bounded_handler

if TYPE_CHECKING:
    from gproxy.server.proxy import Proxy

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess() -> bool:
    """Whether this process writes to (and reads from) a shared metrics directory."""
    return bool(os.environ.get(MULTIPROC_ENV))


def worker_restarts(registry: CollectorRegistry | None) -> Counter:
    """Incremented by the --workers supervisor (in multiprocess mode, its own file)."""
    return Counter("gproxy_worker_restarts", "workers restarted by the supervisor", registry=registry)


class PrometheusMetrics(Metrics):
    """Counts sessions into its own registry (so several Proxies can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry

        def counter(name: str, doc: str, labels: Iterable[str] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=reg)

        self.accepted = counter("gproxy_connections_accepted", "client connections accepted", ["listener"])
        self.refused = counter(
            "gproxy_connections_refused", "clients closed at once (rules, limits, out of fds)", ["listener", "reason"]
        )
        self.active = Gauge(
            "gproxy_connections_active",
            "client connections open now",
            ["listener"],
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.worker_active = Gauge(
            "gproxy_worker_connections_active",
            "client connections open now in each worker (pid label with --workers)",
            registry=reg,
            multiprocess_mode="liveall",
        )
        self.sessions = counter("gproxy_sessions", "finished sessions by outcome", ["listener", "proto", "outcome"])
        self.bytes_up = counter("gproxy_bytes_up", "payload bytes from clients", ["listener", "proto"])
        self.bytes_down = counter("gproxy_bytes_down", "payload bytes to clients", ["listener", "proto"])
        self.handshake_failures = counter(
            "gproxy_handshake_failures", "clients that failed the handshake", ["proto", "reason"]
        )
        self.auth_failures = counter("gproxy_auth_failures", "failed authentications", ["proto", "reason"])
        self.auth_challenges = counter(
            "gproxy_auth_challenges", "requests without credentials answered with a challenge (407)", ["proto"]
        )
        self.denied = counter("gproxy_denied", "requests refused by destination rules", ["proto"])
        self.dial_failures = counter("gproxy_dial_failures", "outbound connects that failed, by reply", ["reply"])
        self.udp_datagrams = counter("gproxy_udp_datagrams", "UDP datagrams relayed", ["listener", "direction"])
        self.udp_drops = counter("gproxy_udp_dropped", "UDP datagrams dropped", ["listener", "direction", "reason"])
        #: (metric, label values) -> its child: labels() costs about 1 us, paid per session and datagram
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        self.upstream_up = Gauge(
            "gproxy_upstream_up",
            "1 while an upstream answers, 0 after it failed itself",
            ["upstream"],
            registry=reg,
            multiprocess_mode="livemostrecent",
        )
        self.upstream_dials = counter(
            "gproxy_upstream_dials", "dials through an upstream: ok, failed, refused", ["upstream", "result"]
        )
        self.worker_restarts = worker_restarts(reg)

    # -- Metrics ------------------------------------------------------------------

    def _child(self, metric: Counter | Gauge, *values: str) -> Any:
        """``metric.labels(*values)``, looked up once per label set (label values come
        from the config and fixed vocabularies: a bounded set)."""
        key = (metric, values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    def session_opened(self, listener: str) -> None:
        self._child(self.accepted, listener).inc()
        self._child(self.active, listener).inc()
        self.worker_active.inc()

    def session_closed(self, session: Session) -> None:
        listener, proto = session.listener, session.proto
        self._child(self.active, listener).dec()
        self.worker_active.dec()
        self._child(self.sessions, listener, proto, session.outcome).inc()
        if session.up:
            self._child(self.bytes_up, listener, proto).inc(session.up)
        if session.down:
            self._child(self.bytes_down, listener, proto).inc(session.down)

    def session_failed(self, session: Session, exc: BaseException) -> None:
        reason = exc.reason if isinstance(exc, GproxyError) else Outcome.ERROR
        if isinstance(exc, AuthFailed):
            self._child(self.auth_failures, session.proto, reason).inc()
        elif isinstance(exc, DialError):
            self._child(self.dial_failures, exc.reply.name.lower()).inc()
        elif isinstance(exc, Denied):
            self._child(self.denied, session.proto).inc()
        elif isinstance(exc, ClientProtocolError | HandshakeTimeout | ClientClosed):
            self._child(self.handshake_failures, session.proto, reason).inc()

    def auth_challenged(self, proto: str) -> None:
        self._child(self.auth_challenges, proto).inc()

    def connection_refused(self, listener: str, reason: Outcome) -> None:
        self._child(self.refused, listener, reason).inc()

    def udp_datagram(self, listener: str, direction: str, dropped: str | None = None) -> None:
        if dropped is None:
            self._child(self.udp_datagrams, listener, direction).inc()
        else:
            self._child(self.udp_drops, listener, direction, dropped).inc()

    def upstream_state(self, upstream: str, up: bool) -> None:
        self._child(self.upstream_up, upstream).set(1 if up else 0)

    def upstream_dial(self, upstream: str, result: str) -> None:
        self._child(self.upstream_dials, upstream, result).inc()

    # -- exposition -----------------------------------------------------------------

    def exposition(self) -> bytes:
        """The text format: this registry, or every process's files in multiprocess mode."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))


class MetricsService:
    """``GET /metrics`` over HTTP/1.1 (gevent's pywsgi), on a listener bound by the Proxy."""

    def __init__(
        self, metrics: PrometheusMetrics, sock: socket.socket, timeout: float = 10.0, proxy: Proxy | None = None
    ) -> None:
        self.metrics = metrics
        self.server = GatedServer(sock, self._app, log=None, error_log=logger, handler_class=bounded_handler(timeout))
        self.server.proxy = proxy

    @classmethod
    def build(cls, proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> MetricsService:
        if not isinstance(proxy.metrics, PrometheusMetrics):
            from gproxy.core.errors import ConfigError

            raise ConfigError(f"--metrics {spec}: this Proxy was given a Metrics that is not PrometheusMetrics")
        return cls(proxy.metrics, sock, proxy.config.handshake_timeout, proxy)

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD")])
            return [b""]
        body = self.metrics.exposition()
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body]

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(timeout=1)
