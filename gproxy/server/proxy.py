"""Proxy: binds every listener, serves them, drains and reloads.

``Proxy(config).start()`` is what the CLI runs and what programs embed.
Everything is bound before anything serves, so a bad address fails fast.
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.pool import Group
from gevent.server import StreamServer

if TYPE_CHECKING:
    import ssl  # imported lazily (gproxy.server.tls): gevent patches it at start

from gproxy.core._gevent import raw_socket
from gproxy.core.access import ClientRules, Users, read_users_file
from gproxy.core.addr import Address, IPAddress, format_hostport, from_sockaddr, parse_ip
from gproxy.core.config import PROXY_KINDS, TLS_KINDS, Config, ListenerSpec
from gproxy.core.context import Context, Metrics
from gproxy.core.dial import DirectDialer, Resolver, system_resolve
from gproxy.core.errors import ClientClosed, ConfigError, Denied, GproxyError, HandshakeTimeout
from gproxy.core.log import AccessLog, announce, logger
from gproxy.core.rules import DestinationPolicy, RuleSet
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.upstream import upstream_dialer
from gproxy.frontends.forward import serve_forward
from gproxy.frontends.http import serve_http
from gproxy.frontends.mixed import serve_mixed
from gproxy.frontends.socks5 import serve_socks
from gproxy.frontends.udp import UdpForwarder
from gproxy.server.acceptor import Acceptor
from gproxy.server.proxy_header import read_proxy_header
from gproxy.server.tls import accept as tls_accept
from gproxy.server.tls import server_context
from gproxy.server.tunnels import Tunnels

Handler = Callable[[Conn, Context, Session], None]


class Service(Protocol):
    """A listener that is not a per-connection TCP front end (UDP relay, metrics)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


#: listener kind -> the front end that serves each TCP connection
HANDLERS: dict[str, Handler] = {
    "socks5": serve_socks,
    "http": serve_http,
    "https": serve_http,
    "mixed": serve_mixed,
    "socks5-tls": serve_socks,
    "forward": serve_forward,
}


def _metrics_service(proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> Service:
    from gproxy.services.metrics import MetricsService  # prometheus-client only when asked for

    return MetricsService.build(proxy, spec, sock)


#: listener kind -> builds a Service from the proxy, its spec and its bound socket
SERVICES: dict[str, Callable[[Proxy, ListenerSpec, socket.socket], Service]] = {
    "udp-forward": UdpForwarder,
    "metrics": _metrics_service,
}
#: listener kinds bound as UDP sockets
DATAGRAM_KINDS = frozenset({"udp-forward"})

LISTEN_BACKLOG = 1024
#: Linux hands accepted sockets the listener's TCP_NODELAY: no setsockopt per client
NODELAY_INHERITED = sys.platform.startswith("linux")


class Proxy:
    """A running set of listeners built from one Config."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        resolver: Resolver = system_resolve,
        reuse_port: bool = False,
        announce: bool = True,
    ) -> None:
        self.config = config
        if metrics is None and any(spec.kind == "metrics" for spec in config.listeners):
            from gproxy.services.metrics import PrometheusMetrics  # prometheus-client only when asked for

            metrics = PrometheusMetrics()
        self.metrics = metrics or Metrics()
        self.reuse_port = reuse_port  # --workers: every worker binds the same ports
        self.announce = announce  # the supervisor prints the "listening" lines instead
        self._contexts: dict[int, Context] = {}  # listener index -> Context for new clients
        self.resolver = resolver
        self.users = Users()
        self.clients = ClientRules(config.allow, config.deny)
        self.access_log: AccessLog | None = None
        self._sockets: list[tuple[ListenerSpec, socket.socket]] = []
        self._servers: list[StreamServer] = []
        self._services: list[Service] = []
        self._sessions = Group()  # unbounded (no Pool semaphore): --max-conns refuses instead of queueing
        self._active = 0
        self._active_by_ip: dict[str, int] = {}
        #: the tunnels that went on without their session's greenlet
        self.tunnels = Tunnels(self._session_ended)
        self._stopped = Event()
        self._tls: ssl.SSLContext | None = None
        self._load_users()

    # -- life cycle -------------------------------------------------------------

    def bind(self) -> None:
        """Bind every listener; raises ConfigError naming the one that fails."""
        if self._sockets:
            return
        try:
            for spec in self.config.listeners:
                datagram = spec.kind in DATAGRAM_KINDS
                self._sockets.append((spec, bind_listener(spec, datagram=datagram, reuse_port=self.reuse_port)))
        except BaseException:
            for _, sock in self._sockets:
                sock.close()
            self._sockets.clear()
            raise

    def start(self) -> Proxy:
        """Bind (if not yet) and start serving; returns at once.

        Everything or nothing: every listener is built and started before any
        ``listening`` line; on any failure whatever was started is stopped and
        every bound socket closed before the error propagates.
        """
        self.bind()
        try:
            self._build_and_start()
        except BaseException:
            self._undo_start()
            raise
        if self.announce:
            for spec, sock in self._sockets:
                announce(spec.kind, self.address_of(sock))
        return self

    def _build_and_start(self) -> None:
        if self.config.access_log:
            try:
                self.access_log = AccessLog(self.config.access_log)
            except OSError as exc:
                raise ConfigError(f"--access-log {self.config.access_log}: {exc.strerror}") from None
        own = [(ip, port) for _, ip, port in self._bound_ips()]
        self._check_upstream(own)
        if any(spec.kind in TLS_KINDS for spec, _ in self._sockets):
            self._tls_context()  # bad --cert/--key fail before anything serves
        built: list[Service | StreamServer] = []
        for index, (spec, sock) in enumerate(self._sockets):
            if spec.kind in SERVICES:
                built.append(SERVICES[spec.kind](self, spec, sock))
            elif spec.kind in HANDLERS:
                self._contexts[index] = self.context(spec, own)
                built.append(
                    Acceptor(
                        sock,
                        self._handle_for(index, HANDLERS[spec.kind]),
                        spawn=self._sessions.spawn,
                        on_shed=lambda kind=spec.kind: self.metrics.connection_refused(kind, "out_of_fds"),
                    )
                )
            else:
                raise ConfigError(f"{spec.kind} listeners are not available in this version")
        for item in built:
            item.start()
            if isinstance(item, StreamServer):
                self._servers.append(item)
            else:
                self._services.append(item)

    def _undo_start(self) -> None:
        """A start that failed: stop what started, close every listener and the access log."""
        for server in self._servers:
            server.close()
        for service in self._services:
            service.stop()
        for _, sock in self._sockets:
            sock.close()
        self._servers.clear()
        self._services.clear()
        self._sockets.clear()
        self._contexts.clear()
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None

    def serve_forever(self) -> None:
        """Start, then block until stop() has finished."""
        if not (self._servers or self._services):
            self.start()
        self._stopped.wait()

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let sessions finish for ``drain_timeout``, then close them."""
        if self._stopped.is_set():
            return
        timeout = self.config.drain_timeout if drain_timeout is None else drain_timeout
        for server in self._servers:
            server.close()
        for service in self._services:
            service.stop()
        for _, sock in self._sockets:
            sock.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._sessions.join(timeout=timeout)
        self.tunnels.drain(None if deadline is None else max(deadline - time.monotonic(), 0))
        self.tunnels.kill("shutdown")  # the rest end now: logged from their own greenlets, sockets closed
        self._sessions.kill(block=True, timeout=1)
        if self.access_log is not None:
            self.access_log.close()
        self._stopped.set()

    def reload(self, config: Config | None = None) -> bool:
        """SIGHUP: re-read the users file, apply ``config``'s rules, reopen the access log.

        Users, client and destination rules, timeouts and limits apply to new
        clients; open sessions keep going untouched. Listeners, workers and the
        access-log path need a restart. On a bad users file, logs one error,
        keeps the old settings and returns False.
        """
        new = self.config if config is None else replace(config, listeners=self.config.listeners)
        old = self.config
        try:
            self.config = new
            self._load_users()
        except ConfigError as exc:
            self.config = old
            logger.error("reload failed, keeping the old settings: %s", exc)
            return False
        finally:
            if self.access_log is not None:
                self.access_log.reopen()
        self.clients = ClientRules(new.allow, new.deny)
        own = [(ip, port) for _, ip, port in self._bound_ips()]
        for index in self._contexts:
            self._contexts[index] = self.context(self._sockets[index][0], own)
        logger.info("reloaded")
        return True

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

    # -- addresses ----------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, Address]]:
        """(kind, bound address) for every listener, ports as actually bound."""
        return [(spec.kind, from_sockaddr(sock.getsockname())) for spec, sock in self._sockets]

    def address(self, kind: str = "socks5") -> Address:
        """The bound address of the first listener of ``kind``."""
        for listener_kind, address in self.addresses:
            if listener_kind == kind:
                return address
        raise KeyError(kind)

    @staticmethod
    def address_of(sock: socket.socket) -> str:
        host, port = sock.getsockname()[:2]
        return format_hostport(host, port)

    def _bound_ips(self) -> list[tuple[str, IPAddress, int]]:
        bound = []
        for spec, sock in self._sockets:
            host, port = sock.getsockname()[:2]
            ip = parse_ip(host)
            if ip is not None:
                bound.append((spec.kind, ip, port))
        return bound

    # -- serving --------------------------------------------------------------------

    def _load_users(self) -> None:
        pairs = list(self.config.users)
        if self.config.users_file:
            pairs += read_users_file(self.config.users_file)
        self.users.replace(pairs)

    def context(self, spec: ListenerSpec, own: list[tuple[IPAddress, int]] | None = None) -> Context:
        """The Context that front ends and services of listener ``spec`` use."""
        if own is None:
            own = [(ip, port) for _, ip, port in self._bound_ips()]
        # A forwarder's target is the operator's, not a client's: no to_localhost rule, no dest rules.
        proxying = spec.kind in PROXY_KINDS
        policy = DestinationPolicy(
            own,
            deny_local=not spec.is_loopback and proxying,
            rules=self.config.dest_rules if proxying else RuleSet(),
            users=self.config.user_rules,
        )
        upstream = self.config.upstream
        return Context(
            config=self.config,
            listener=spec,
            users=self.users,
            clients=self.clients,
            destinations=policy,
            dialer=(
                upstream_dialer(upstream, self.resolver)
                if upstream is not None
                else DirectDialer(self.resolver, check=policy.check_ip)
            ),
            metrics=self.metrics,
            resolver=self.resolver,
            tls=self._tls_context() if spec.kind in TLS_KINDS else None,
            tunnels=self.tunnels,
        )

    def _check_upstream(self, own: list[tuple[IPAddress, int]]) -> None:
        """Refuse an --upstream that is one of our own listeners (every connection would loop)."""
        upstream = self.config.upstream
        if upstream is None:
            return
        ip = upstream.address.ip
        try:
            if ip is not None:
                DestinationPolicy(own).check_ip(ip, upstream.port)
        except Denied:
            raise ConfigError(f"--upstream {upstream} is this gproxy's own listener: that would loop") from None
        logger.debug("outbound connections go through %s", upstream)

    def _tls_context(self) -> ssl.SSLContext:
        """One server context for every TLS listener; ConfigError for bad --cert/--key."""
        if self._tls is None:
            assert self.config.cert is not None and self.config.key is not None  # validate() checked
            self._tls = server_context(self.config.cert, self.config.key)
        return self._tls

    def _handle_for(self, index: int, handler: Handler) -> Callable[[socket.socket, tuple[object, ...]], None]:
        def handle(sock: socket.socket, peer: tuple[object, ...]) -> None:
            self._serve_client(sock, peer, self._contexts[index], handler)  # the latest, after a reload

        return handle

    def _proxied_client(self, sock: socket.socket, peer: Address, ctx: Context) -> Address | None:
        """--proxy-protocol: the client address from the load balancer's header; None: drop."""
        try:
            source, _ = read_proxy_header(sock, self.config.handshake_timeout)
        except (GproxyError, OSError) as exc:
            logger.debug("%s: proxy_protocol: %s", peer, exc)
            if self.access_log is not None:
                self.access_log.write(Session(peer, ctx.listener.kind, outcome="proxy_protocol").logfmt())
            return None
        return source or peer  # LOCAL / UNKNOWN: the balancer's own connection

    def _serve_client(self, sock: socket.socket, peer: tuple[object, ...], ctx: Context, handler: Handler) -> None:
        client = from_sockaddr(peer)
        accepted = None
        if self.config.proxy_protocol:
            # The header counts against --handshake-timeout: one clock from accept.
            accepted = time.monotonic()
            proxied = self._proxied_client(sock, client, ctx)
            if proxied is None:
                return
            client = proxied
        kind = ctx.listener.kind
        rules = self.clients  # no rules: no address parsing per connection
        if (rules.allow or rules.deny) and client.ip is not None and not rules.permits(client.ip):
            logger.debug("%s: client not allowed", client)
            self.metrics.connection_refused(kind, "client_denied")
            return
        limit, per_ip = self.config.max_conns, self.config.max_conns_per_ip
        refused = None
        if limit and self._active >= limit:
            refused = "max_conns"
        elif per_ip and self._active_by_ip.get(client.host, 0) >= per_ip:
            refused = "max_conns_per_ip"
        if refused:  # closed at once (by StreamServer when we return), never queued
            logger.debug("%s: refused, %s reached", client, refused.replace("_", "-"))
            self.metrics.connection_refused(kind, refused)
            return
        self._active += 1
        self._active_by_ip[client.host] = self._active_by_ip.get(client.host, 0) + 1
        session = Session(client, ctx.listener.kind)
        if accepted is not None:
            session.started = accepted
        self.metrics.session_opened(ctx.listener.kind)
        conn = Conn(sock)
        try:
            if not NODELAY_INHERITED:
                _nodelay(sock)
            if ctx.tls is not None:
                conn.sock = tls_accept(sock, ctx.tls, self.config.handshake_timeout)
            handler(conn, ctx, session)
        except (GproxyError, HandshakeTimeout) as exc:
            session.outcome = exc.reason
            self.metrics.session_failed(session, exc)
            logger.debug("%s: %s: %s", client, exc.reason, exc)
            if not isinstance(exc, ClientClosed):
                conn.close_politely()
        except OSError as exc:
            session.outcome = errno.errorcode.get(exc.errno or 0, "error").lower()
            logger.debug("%s: %s", client, exc)
        except gevent.GreenletExit:
            session.outcome = "shutdown"  # killed at the end of a drain
            raise
        finally:
            if session not in self.tunnels:  # a handed-over tunnel ends the session itself
                self._end_session(sock, session, conn)

    def _end_session(self, sock: socket.socket, session: Session, conn: Conn) -> None:
        """Close a TLS wrapper, then end the session; the client socket is closed by the caller."""
        if conn.sock is not sock:
            conn.sock.close()  # the TLS wrapper owns the descriptor now
        self._session_ended(session)

    def _session_ended(self, session: Session) -> None:
        """Counters, metrics and the access-log line (from a greenlet: they may yield)."""
        self._active -= 1
        host = session.client.host
        remaining = self._active_by_ip[host] - 1
        if remaining:
            self._active_by_ip[host] = remaining
        else:
            del self._active_by_ip[host]
        self.metrics.session_closed(session)
        if self.access_log is not None:
            self.access_log.write(session.logfmt())


def _nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on the kernel socket (gevent's setsockopt wrapper is Python)."""
    raw_socket(sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def bind_listener(
    spec: ListenerSpec, *, datagram: bool = False, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """A listening TCP (or bound UDP) socket for ``spec``; ConfigError if it cannot be bound.

    ``listen=False`` only binds: the supervisor holds ports that way for its workers.
    """
    kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
    try:
        infos = gsocket.getaddrinfo(spec.host, spec.port, 0, kind, 0, socket.AI_PASSIVE)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
    family, _, _, _, sockaddr = infos[0]
    sock: socket.socket = gsocket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        if listen and not datagram:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
    return sock


def spawn_stop(proxy: Proxy) -> None:
    """Drain from a signal handler without blocking the hub."""
    gevent.spawn(proxy.stop)
