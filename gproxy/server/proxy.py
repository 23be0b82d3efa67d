"""Proxy: binds every listener, serves them, drains and reloads.

``Proxy(config).start()`` is what the CLI runs and what programs embed.
Everything is bound before anything serves, so a bad address fails fast.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore
from gevent.server import StreamServer

if TYPE_CHECKING:
    import ssl  # imported lazily (gproxy.server.tls): gevent patches it at start

from gproxy.core._gevent import raw_socket
from gproxy.core.access import ClientRules, Users, read_users_file
from gproxy.core.addr import Address, IPAddress, format_hostport, from_sockaddr, parse_ip
from gproxy.core.auth_service import AuthService, parse_auth_url
from gproxy.core.config import PROXY_KINDS, TLS_KINDS, Config, ListenerSpec
from gproxy.core.context import Context, Metrics
from gproxy.core.dial import DirectDialer, Prepare, Resolver, system_resolve
from gproxy.core.errors import (
    ClientClosed,
    ClientProtocolError,
    ConfigError,
    Denied,
    GproxyError,
    HandshakeTimeout,
    Outcome,
    outcome_of,
)
from gproxy.core.limits import RateLimits
from gproxy.core.log import AccessLog, announce, logger
from gproxy.core.origin_pool import OriginPool
from gproxy.core.outbound import Outbound, parse_outgoing
from gproxy.core.passwords import Secret
from gproxy.core.resolve import DnsResolver
from gproxy.core.resolver_url import parse_resolver_url
from gproxy.core.rules import DestinationPolicy, RuleSet
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tls_client import client_context
from gproxy.core.upstream import upstream_dialer
from gproxy.core.upstream_group import Router, UpstreamGroup, dialled_via
from gproxy.frontends.forward import serve_forward
from gproxy.frontends.http import serve_http
from gproxy.frontends.mixed import serve_mixed
from gproxy.frontends.shadowsocks import serve_ss
from gproxy.frontends.socks5 import serve_socks
from gproxy.frontends.transparent import serve_redirect, serve_tproxy
from gproxy.frontends.udp import UdpForwarder
from gproxy.server.acceptor import Acceptor
from gproxy.server.proxy_header import read_proxy_header
from gproxy.server.session_greenlets import SessionGreenlets
from gproxy.server.tls import accept as tls_accept
from gproxy.server.tls import server_context
from gproxy.server.tunnels import Tunnels
from gproxy.services.shadowsocks_udp import ShadowsocksUdp
from gproxy.services.tproxy_udp import TproxyUdp

Handler = Callable[[Conn, Context, Session], None]


#: what a connection is counted under: its --max-conns-per-ip keys, and whether it counts in --max-conns
Counted = tuple[list[str], bool]


class Admitted(NamedTuple):
    """A connection admit_client() let in."""

    client: Address
    accepted: float  # time.monotonic() at accept
    counted: Counted


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
    "redirect": serve_redirect,
    "tproxy": serve_tproxy,
    "ss": serve_ss,
}


def _admin_service(proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> Service:
    from gproxy.services.admin import AdminService

    return AdminService.build(proxy, spec, sock)


def _metrics_service(proxy: Proxy, spec: ListenerSpec, sock: socket.socket) -> Service:
    from gproxy.services.metrics import MetricsService  # prometheus-client only when asked for

    return MetricsService.build(proxy, spec, sock)


#: listener kind -> builds a Service from the proxy, its spec and its bound socket
SERVICES: dict[str, Callable[[Proxy, ListenerSpec, socket.socket], Service]] = {
    "udp-forward": UdpForwarder,
    "ss-udp": ShadowsocksUdp,
    "tproxy-udp": TproxyUdp,
    "metrics": _metrics_service,
    "admin": _admin_service,
}
#: listener kinds bound as UDP sockets
DATAGRAM_KINDS = frozenset({"udp-forward", "ss-udp", "tproxy-udp"})
#: listener kind -> the UDP kind bound on the same port number after it (announced with it, not apart)
SAME_PORT_UDP = {"ss": "ss-udp", "tproxy": "tproxy-udp"}

LISTEN_BACKLOG = 1024
#: Linux hands accepted sockets the listener's TCP_NODELAY: no setsockopt per client
NODELAY_INHERITED = sys.platform.startswith("linux")


class AdminClosed(gevent.GreenletExit):  # type: ignore[misc]
    """Raised in a session's greenlet to end it from --admin (DELETE /sessions/ID)."""


@dataclass(frozen=True)
class WorkerSlot:
    """Which --workers worker this Proxy is, and the private directory of the workers' admin sockets."""

    index: int
    admin_dir: str


class Proxy:
    """A running set of listeners built from one Config."""

    def __init__(
        self,
        config: Config,
        *,
        metrics: Metrics | None = None,
        resolver: Resolver | None = None,
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
        self._latest: dict[int, Context] = {}  # id(listener spec) -> its Context in _contexts
        #: names go to this; None given: --resolver's own DNS client (built at start) or the system's
        self.resolver: Resolver = resolver or system_resolve
        self._dns: DnsResolver | None = None
        self._own_resolver = resolver is None
        self.users = Users(required=config.has_auth)
        self.clients = ClientRules(config.allow, config.deny)
        self.access_log: AccessLog | None = None
        self._sockets: list[tuple[ListenerSpec, socket.socket]] = []
        self._addresses: list[tuple[str, Address]] = []  # kept after stop(): the ports it had
        self._servers: list[StreamServer] = []
        self._services: list[Service] = []
        self._sessions = SessionGreenlets()  # unbounded: --max-conns refuses instead of queueing
        self._active = 0
        self._active_by_ip: dict[str, int] = {}  # --max-conns-per-ip key -> open connections
        #: the tunnels that went on without their session's greenlet
        self.tunnels = Tunnels(self._session_ended)
        self.rates = RateLimits()  # kept across reloads: a changed rate gets fresh buckets
        #: every open session by id, with the greenlet that serves it (done once a tunnel is handed over)
        self.open: dict[str, tuple[Session, gevent.Greenlet[..., object] | None]] = {}
        self._session_ids = itertools.count(1)
        self.worker: WorkerSlot | None = None  # set by a --workers worker before start()
        self.draining = False
        self.between_requests: set[Any] = set()  # SessionOwner: kept-alive connections' greenlets, idle
        self._detached: dict[str, Callable[[Outcome], None]] = {}  # session id -> ends it (UDP mappings)
        self.origin_pool = OriginPool()  # idle connections to HTTP origins, closed on stop()
        self._drain_cut = Event()  # stop_now(): the drain ends at once
        self._stopped = Event()
        self._tls: ssl.SSLContext | None = None
        self.outbound = Outbound()  # what every outbound socket gets (--outgoing, --mark)
        self._prepare: Prepare | None = None
        self._reloading = Semaphore()  # one reload at a time: SIGHUPs apply in the order they came
        self._upstreams: UpstreamGroup | None = None  # shared by every listener: one health record
        self._upstreams_built_from: tuple[object, ...] | None = None
        self.users.replace(users_table(config), required=config.has_auth, cache_seconds=config.auth_cache)
        self._auth_service: tuple[tuple[object, ...], AuthService | None] = ((), None)
        self._set_user_policy(config)

    # -- life cycle -------------------------------------------------------------

    def bind(self) -> None:
        """Bind every listener; raises ConfigError naming the one that fails."""
        if self._sockets:
            return
        try:
            for spec in self.config.listeners:
                if spec.kind in SAME_PORT_UDP:
                    self._sockets += bind_same_port(spec, SAME_PORT_UDP[spec.kind], self.reuse_port)
                    continue
                datagram = spec.kind in DATAGRAM_KINDS
                sock = bind_listener(
                    spec, datagram=datagram, reuse_port=self.reuse_port, transparent=spec.kind == "tproxy"
                )
                self._sockets.append((spec, sock))
        except BaseException:
            for _, sock in self._sockets:
                sock.close()
            self._sockets.clear()
            raise
        self._addresses = [(spec.kind, from_sockaddr(sock.getsockname())) for spec, sock in self._sockets]

    def start(self) -> Proxy:
        """Bind (if not yet) and start serving; returns at once.

        Everything or nothing: every listener is built and started before any
        ``listening`` line; on any failure whatever was started is stopped and
        every bound socket closed before the error propagates. A stopped Proxy does not
        start again (RuntimeError): make a new one.
        """
        if self._stopped.is_set():
            raise RuntimeError("this Proxy was stopped; make a new Proxy to serve again")
        self.bind()
        try:
            self._build_and_start()
        except BaseException:
            self._undo_start()
            raise
        if self.announce:
            for spec, sock in self._sockets:
                if spec.kind not in SAME_PORT_UDP.values():  # UDP beside its TCP port: one line
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
        if self._own_resolver and self.config.resolver and self._dns is None:
            servers = [parse_resolver_url(url) for url in self.config.resolver]
            self._dns = DnsResolver(servers, ca_files=self.config.ca, timeout=self.config.connect_timeout)
            self.resolver = self._dns
        self.outbound = Outbound(*parse_outgoing(self.config.outgoing), mark=self.config.mark)
        self.outbound.check()  # an address this host lacks, or no CAP_NET_ADMIN for --mark: exit 2
        self._prepare = self.outbound.prepare()
        self._upstream_group()  # a bad --ca fails before anything serves
        if any(spec.kind in TLS_KINDS for spec, _ in self._sockets):
            self._tls_context()  # bad --cert/--key fail before anything serves
        built: list[Service | StreamServer] = []
        for index, (spec, sock) in enumerate(self._sockets):
            if spec.kind in SERVICES:
                built.append(SERVICES[spec.kind](self, spec, sock))
            elif spec.kind in HANDLERS:
                self._contexts[index] = self._latest[id(spec)] = self.context(spec, own)
                built.append(
                    Acceptor(
                        sock,
                        self._handle_for(index, HANDLERS[spec.kind]),
                        spawn=self._sessions.spawn,
                        on_shed=lambda kind=spec.kind: self.metrics.connection_refused(kind, Outcome.OUT_OF_FDS),
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
        self._addresses = []
        self._contexts.clear()
        self._latest.clear()
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
        self.draining = True
        for idle in list(self.between_requests):  # idle kept-alive connections end now
            self._sessions.interrupt(idle, ClientClosed, functools.partial(self.between_requests.__contains__, idle))
        last = [service for service in self._services if getattr(service, "stops_last", False)]  # --admin
        for server in self._servers:
            server.close()
        for service in self._services:
            if service not in last:
                service.stop()
        for spec, sock in self._sockets:
            if spec.kind != "admin":
                sock.close()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._drain(self._sessions.join, deadline)
        self._drain(lambda: self.tunnels.drain(None), deadline)
        self.tunnels.kill(Outcome.SHUTDOWN)  # the rest end now: logged from their own greenlets, sockets closed
        self._sessions.kill(block=True, timeout=1)
        for service in last:
            service.stop()
        for spec, sock in self._sockets:
            if spec.kind == "admin":
                sock.close()
        self.origin_pool.close()
        if self.access_log is not None:
            self.access_log.close()
        if self._dns is not None:
            self._dns.close()
        self._stopped.set()

    def stop_now(self) -> None:
        """A second stop signal: cut the drain short; stop() then ends every session at once."""
        self._drain_cut.set()

    def _new_session_id(self) -> str:
        """The next session's id: a number, after the worker's (``1-42``) with --workers."""
        prefix = "" if self.worker is None else f"{self.worker.index}-"
        return f"{prefix}{next(self._session_ids)}"

    def open_detached(self, session: Session, end: Callable[[Outcome], None]) -> None:
        """SessionSink: a session without a greenlet of its own (a UDP mapping) is open:
        listed in /sessions until close_detached(), ended by ``end`` (DELETE)."""
        session.id = self._new_session_id()
        self.open[session.id] = (session, None)
        self._detached[session.id] = end

    def close_detached(self, session: Session) -> None:
        """SessionSink: the detached ``session`` is over."""
        self.open.pop(session.id, None)
        self._detached.pop(session.id, None)

    def end_session(self, session_id: str, outcome: Outcome = Outcome.ADMIN_CLOSED) -> bool:
        """End one open session now (--admin's DELETE); False if there is none by that id."""
        entry = self.open.get(session_id)
        if entry is None:
            return False
        end = self._detached.get(session_id)
        if end is not None:
            end(outcome)
            return True
        session, greenlet = entry
        if not self.tunnels.abort(session, outcome) and greenlet is not None:
            # delivered only if that greenlet still serves this session (it is reused after)
            self._sessions.interrupt(greenlet, AdminClosed, lambda: self.open.get(session_id) is entry)
        return True

    @property
    def open_sessions(self) -> int:
        """Client sessions open right now (past the client rules and limits)."""
        return self._active

    def _drain(self, wait: Callable[[], object], deadline: float | None) -> None:
        """Block in ``wait`` until it returns, ``deadline`` passes or stop_now() is called."""
        waiter = gevent.spawn(wait)
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
        gevent.wait([waiter, self._drain_cut], timeout=remaining, count=1)
        waiter.kill()

    def reload(self, config: Config | None = None) -> bool:
        """SIGHUP: re-read the users file, apply ``config``'s rules, reopen the access log.

        Users, client and destination rules, timeouts and limits apply to new
        clients; open sessions keep going untouched. What only a restart applies
        (Config.needs_restart: listeners, workers, the access-log path, ...) keeps
        its running value, with one warning line. On a bad (or empty) users file,
        logs one error, keeps the old settings and returns False. The users file is read
        in gevent's threadpool: a big file does not freeze the open tunnels.
        """
        with self._reloading:
            # one warning per reload: here, or in the --workers supervisor (not once per worker)
            ignored = config is not None and self.config.workers == 1 and self.config.needs_restart(config)
            new = self.config if config is None else self.config.reloaded(config)
            # the error comes back as a value: raised in the pool, gevent would print a traceback
            table = gevent.get_hub().threadpool.apply(checked_users_table, (new,))
            if self.access_log is not None:
                self.access_log.reopen()
            if isinstance(table, ConfigError):
                logger.error("reload failed, keeping the old settings: %s", table)
                return False
            old, self.config = self.config, new
            try:
                self._check_upstream([(ip, port) for _, ip, port in self._bound_ips()])
                self._upstream_group()
                self._set_user_policy(new)  # a bad --ca fails here, before anything changed
            except Exception as exc:  # ConfigError, or a value our checks missed: nothing applied
                self.config = old
                if not isinstance(exc, ConfigError):
                    logger.debug("reload failed", exc_info=True)
                    exc = ConfigError(f"{type(exc).__name__}: {exc}")
                logger.error("reload failed, keeping the old settings: %s", exc)
                return False
            self.users.replace(table, required=new.has_auth, cache_seconds=new.auth_cache)
            self.clients = ClientRules(new.allow, new.deny)
            own = [(ip, port) for _, ip, port in self._bound_ips()]
            for index in self._contexts:
                spec = self._sockets[index][0]
                self._contexts[index] = self._latest[id(spec)] = self.context(spec, own)
        if ignored:
            warn_restart_only(ignored)
        logger.info("reloaded")
        return True

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop(0)

    # -- addresses ----------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, Address]]:
        """(kind, bound address) for every listener, ports as actually bound (still after stop())."""
        return list(self._addresses)

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

    def context(self, spec: ListenerSpec, own: list[tuple[IPAddress, int]] | None = None) -> Context:
        """The Context that front ends and services of listener ``spec`` use."""
        if own is None:
            own = [(ip, port) for _, ip, port in self._bound_ips()]
        # A forwarder's target is the operator's, not a client's: no to_localhost rule, no dest rules.
        proxying = spec.kind in PROXY_KINDS
        policy = DestinationPolicy(
            own,
            deny_local=self.config.exposes(spec) and proxying,
            rules=self.config.dest_rules if proxying else RuleSet(),
            users=self.users.rules,  # [users.NAME] tables and --auth-url answers
        )
        direct = DirectDialer(self.resolver, check=policy.check_ip, prepare=self._prepare)
        return Context(
            config=self.config,
            listener=spec,
            users=self.users,
            clients=self.clients,
            destinations=policy,
            dialer=Router(direct, self._upstream_group(), self.config.bypass),
            metrics=self.metrics,
            resolver=self.resolver,
            outbound=self.outbound,
            tls=self._tls_context() if spec.kind in TLS_KINDS else None,
            tunnels=self.tunnels,
            owner=self,
            rates=self.rates,
            origin_pool=self.origin_pool,
        )

    def _set_user_policy(self, config: Config) -> None:
        """Per-user settings, --max-conns-per-user and the --auth-url client (kept while its settings stay)."""
        built_from = (config.auth_url, config.ca)
        if built_from != self._auth_service[0]:
            service = None
            if config.auth_url is not None:
                url = parse_auth_url(config.auth_url)
                service = AuthService(url, client_context(config.ca) if url.tls else None)
            self._auth_service = (built_from, service)
        self.users.set_policy(config.user_settings, config.max_conns_per_user, self._auth_service[1])

    def _check_upstream(self, own: list[tuple[IPAddress, int]]) -> None:
        """Refuse an --upstream that is one of our own listeners (every connection would loop)."""
        for upstream in self.config.upstream:
            ip = upstream.address.ip
            try:
                if ip is not None:
                    DestinationPolicy(own).check_ip(ip, upstream.port)
            except Denied:
                raise ConfigError(f"--upstream {upstream} is this gproxy's own listener: that would loop") from None
            logger.debug("outbound connections go through %s", upstream)

    def _upstream_group(self) -> UpstreamGroup | None:
        """The --upstream group, built once (and again when a reload changes it); ConfigError for a bad --ca."""
        config = self.config
        settings = (config.upstream, config.upstream_strategy, config.upstream_cooldown, config.ca, self.outbound)
        if settings != self._upstreams_built_from:
            tls = client_context(config.ca) if config.ca or any(up.tls for up in config.upstream) else None
            dialers = [(str(up), upstream_dialer(up, self.resolver, tls, self._prepare)) for up in config.upstream]
            self._upstreams = (
                UpstreamGroup(dialers, config.upstream_strategy, config.upstream_cooldown, self.metrics)
                if dialers
                else None
            )
            self._upstreams_built_from = settings
        return self._upstreams

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

    def _proxied_client(self, sock: socket.socket, peer: Address, kind: str, accepted: float) -> Address | None:
        """--proxy-protocol: the client address from the load balancer's header; None: drop."""
        try:
            source, _ = read_proxy_header(sock, self.config.handshake_timeout)
        except (GproxyError, OSError) as exc:
            logger.debug("%s: proxy_protocol: %s", peer, exc)
            session = Session(peer, kind, outcome=Outcome.PROXY_PROTOCOL, started=accepted)
            if kind in HANDLERS:  # a client's session (not a scrape): counted as its access line says
                failure = ClientProtocolError(f"PROXY protocol: {exc}", reason=Outcome.PROXY_PROTOCOL)
                self.metrics.session_opened(kind)
                self.metrics.session_failed(session, failure)
                self.metrics.session_closed(session)
            if self.access_log is not None:
                self.access_log.write(session.logfmt())
            return None
        return source or peer  # LOCAL / UNKNOWN: the balancer's own connection

    def admit_client(
        self, sock: socket.socket, peer: tuple[object, ...], kind: str, *, in_total: bool = True
    ) -> Admitted | None:
        """Client rules, limits and the PROXY header for a new connection on a ``kind`` listener:
        the client's address, when it was accepted, and what it is counted under until
        release_client(admitted.counted); None: drop it.

        ``in_total=False`` (metrics scrapes): not held to, nor counted in, --max-conns, so
        monitoring still works when the proxy is full; the per-ip limit still applies.
        """
        client = from_sockaddr(peer)
        accepted = time.monotonic()  # the PROXY header counts against --handshake-timeout: one clock
        # Counted from accept, before any PROXY header: --max-conns, and the per-ip limit for
        # the TCP peer while its header is awaited, so that phase cannot pile up past them.
        # Once the header is read, the connection counts under the address it carries.
        keys = [self._limit_key(client)]
        if not self._admit(keys[0], kind, client, new=in_total):
            return None
        admitted = False
        try:
            if self.config.proxy_protocol:
                proxied = self._proxied_client(sock, client, kind, accepted)
                if proxied is None:
                    return None
                client = proxied
                key = self._limit_key(client)
                if key != keys[0]:
                    if not self._admit(key, kind, client, new=False):
                        return None
                    self._release([keys[0]], in_total=False)
                    keys[0] = key
            rules = self.clients  # no rules: no address parsing per connection
            if (rules.allow or rules.deny) and client.ip is not None and not rules.permits(client.ip):
                logger.debug("%s: client not allowed", client)
                self.metrics.connection_refused(kind, Outcome.CLIENT_DENIED)
                return None
            admitted = True
        finally:
            if not admitted:
                self._release(keys, in_total=in_total)
        return Admitted(client, accepted, (keys, in_total))

    def release_client(self, counted: Counted) -> None:
        """The connection admit_client() counted (``Admitted.counted``) is over."""
        keys, in_total = counted
        self._release(keys, in_total=in_total)

    def _serve_client(self, sock: socket.socket, peer: tuple[object, ...], ctx: Context, handler: Handler) -> None:
        admitted = self.admit_client(sock, peer, ctx.listener.kind)
        if admitted is None:
            return
        client, accepted, counted = admitted
        session = Session(client, ctx.listener.kind)
        session.started = accepted
        session.id = self._new_session_id()
        self.open[session.id] = (session, gevent.getcurrent())
        session.admission = counted  # released when the session ends (a tunnel's, without its socket)
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
            session.outcome = outcome_of(exc)
            logger.debug("%s: %s", client, exc)
        except AdminClosed:
            session.outcome = Outcome.ADMIN_CLOSED
        except gevent.GreenletExit:
            session.outcome = Outcome.SHUTDOWN  # killed at the end of a drain
            raise
        finally:
            session.via = dialled_via.get()
            dialled_via.set(None)
            if session not in self.tunnels:  # a handed-over tunnel ends the session itself
                self._end_session(sock, session, conn)
            elif session.id in self.open:  # its greenlet is done: hold no reference to it (memory)
                self.open[session.id] = (session, None)

    def _limit_key(self, client: Address) -> str:
        """What --max-conns-per-ip counts: the IPv4 address, or the IPv6 client's network
        (--ipv6-prefix, a /64 by default: one host owns a whole /64)."""
        ip = client.ip
        if ip is None or ip.version == 4:
            return client.host
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{self.config.ipv6_prefix}", strict=False))

    def _admit(self, key: str, kind: str, client: Address, *, new: bool) -> bool:
        """Count one more connection for ``key`` (and, if ``new``, in --max-conns' total); False: refused."""
        limit, per_ip = self.config.max_conns, self.config.max_conns_per_ip
        refused: Outcome | None = None
        if new and limit and self._active >= limit:
            refused = Outcome.MAX_CONNS
        elif per_ip and self._active_by_ip.get(key, 0) >= per_ip:
            refused = Outcome.MAX_CONNS_PER_IP
        if refused:  # closed at once (by StreamServer when we return), never queued
            logger.debug("%s: refused, %s reached", client, refused.replace("_", "-"))
            self.metrics.connection_refused(kind, refused)
            return False
        if new:
            self._active += 1
        self._active_by_ip[key] = self._active_by_ip.get(key, 0) + 1
        return True

    def _release(self, keys: list[str], *, in_total: bool = True) -> None:
        """Undo _admit for a connection counted under ``keys`` (and in the total)."""
        if in_total:
            self._active -= 1
        for key in keys:
            remaining = self._active_by_ip[key] - 1
            if remaining:
                self._active_by_ip[key] = remaining
            else:
                del self._active_by_ip[key]

    def _end_session(self, sock: socket.socket, session: Session, conn: Conn) -> None:
        """Close a TLS wrapper, then end the session; the client socket is closed by the caller."""
        if conn.sock is not sock:
            conn.sock.close()  # the TLS wrapper owns the descriptor now
        self._session_ended(session)

    def _session_ended(self, session: Session) -> None:
        """Counters, metrics and the access-log line (from a greenlet: they may yield)."""
        if session.admission is not None:
            counted, session.admission = session.admission, None
            self.release_client(counted)
        self.open.pop(session.id, None)
        if session.user_slot is not None:
            session.user_slot.release()
        self.metrics.session_closed(session)
        if self.access_log is not None and not session.quiet:
            self.access_log.write(session.logfmt())

    def latest(self, ctx: Context) -> Context:
        """SessionOwner: the context a new client of ``ctx``'s listener would get now."""
        return self._latest.get(id(ctx.listener), ctx)

    def log_request(self, session: Session) -> None:
        """SessionOwner: the access-log line of one request on a kept-alive HTTP connection."""
        session.via = dialled_via.get()
        dialled_via.set(None)
        if self.access_log is not None:
            self.access_log.write(session.logfmt())


def users_table(config: Config) -> dict[bytes, Secret]:
    """The users of ``--user`` and ``--users-file``; ConfigError for a bad or empty file."""
    pairs = list(config.users)
    if config.users_file:
        pairs += read_users_file(config.users_file)
    return Users.table(pairs)


def warn_restart_only(changed: list[str]) -> None:
    """One line for the settings a reload left as they were (``Config.needs_restart``)."""
    logger.warning("reload: %s changed, which only a restart applies; running with the old value", ", ".join(changed))


def checked_users_table(config: Config) -> dict[bytes, Secret] | ConfigError:
    """The users table of a reloaded ``config``, or why it cannot apply. ``config`` is checked
    whole again: its listeners are the ones still bound, not the file's (a file that moved a
    listener to loopback and dropped its users must not open the one on 0.0.0.0)."""
    try:
        config.validate()
        return users_table(config)
    except ConfigError as exc:
        return exc
    except Exception as exc:  # a value our checks missed must not end a running server
        logger.debug("reload check failed", exc_info=True)
        return ConfigError(f"{type(exc).__name__}: {exc}")


def _nodelay(sock: socket.socket) -> None:
    """TCP_NODELAY on the kernel socket (gevent's setsockopt wrapper is Python)."""
    raw_socket(sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def bind_listener(
    spec: ListenerSpec,
    *,
    datagram: bool = False,
    reuse_port: bool = False,
    listen: bool = True,
    transparent: bool = False,
) -> socket.socket:
    """A listening TCP (or bound UDP) socket for ``spec``; ConfigError if it cannot be bound.

    ``listen=False`` only binds: the supervisor holds ports that way for its workers.
    ``transparent`` (TPROXY) sets IP_TRANSPARENT, which needs CAP_NET_ADMIN.
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
        if transparent:
            set_transparent(sock, spec)
        sock.bind(sockaddr)
        if listen and not datagram:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
            sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {spec}: {exc.strerror or exc}") from None
    return sock


#: linux/in.h and linux/in6.h
IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75


def set_transparent(sock: socket.socket, spec: ListenerSpec) -> None:
    """IP_TRANSPARENT (TPROXY): ConfigError with one line when the capability is missing."""
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_TRANSPARENT, 1)
    except PermissionError:
        raise ConfigError(
            f"--{spec.kind} {spec}: IP_TRANSPARENT needs CAP_NET_ADMIN (run as root or grant it)"
        ) from None


def bind_same_port(
    spec: ListenerSpec, udp_kind: str, reuse_port: bool = False, tries: int = 32
) -> list[tuple[ListenerSpec, socket.socket]]:
    """TCP first (port 0 picks the number), then UDP on the same number; with port 0, a number
    whose UDP side is taken is given up and another one picked. ``tproxy`` sockets are transparent."""
    transparent = spec.kind == "tproxy"
    for attempt in range(tries if spec.port == 0 else 1):
        tcp = bind_listener(spec, reuse_port=reuse_port, transparent=transparent)
        udp_spec = replace(spec, kind=udp_kind, port=int(tcp.getsockname()[1]))
        try:
            udp = bind_listener(udp_spec, datagram=True, reuse_port=reuse_port, transparent=transparent)
            return [(spec, tcp), (udp_spec, udp)]
        except ConfigError:
            tcp.close()
            if attempt == tries - 1 or spec.port != 0:
                raise
    raise AssertionError("unreachable")
