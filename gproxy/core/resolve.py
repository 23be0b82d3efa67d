"""gproxy's own DNS client (``--resolver``): plain DNS, DNS over TLS (RFC 7858) and over HTTPS (RFC 8484).

``DnsResolver`` is a drop-in ``dial.Resolver``: /etc/hosts first, then A and AAAA at once from the
servers in order, a TTL-bounded LRU cache, and one shared query per name and type in flight.
dnspython builds and parses the messages; the socket I/O is gevent's, done here, every read bounded.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import gevent
import h11
from gevent import socket as gsocket
from gevent.event import AsyncResult

from gproxy.core.addr import format_hostport
from gproxy.core.dial import Resolved
from gproxy.core.errors import ConfigError
from gproxy.core.happy_eyeballs import interleave
from gproxy.core.resolver_url import ResolverServer, Transport, bare_ip, is_ip
from gproxy.core.tls_client import client_context, tls_connect

if TYPE_CHECKING:
    import ssl

MAX_POSITIVE_TTL = 3600.0
MAX_NEGATIVE_TTL = 60.0
#: EDNS payload size asked over UDP (the DNS flag day 2020 value: no IP fragmentation)
UDP_PAYLOAD = 1232
#: how long an A answer waits for its AAAA sibling (RFC 8305 "Resolution Delay")
RESOLUTION_DELAY = 0.05
MAX_MESSAGE = 65535
_MAX_CNAME_HOPS = 16
_MAX_STRAY_DATAGRAMS = 16
_MAX_HTTP_RECVS = 1024
_HOSTS_RECHECK = 1.0
_QUERY_TYPES = (dns.rdatatype.AAAA, dns.rdatatype.A)


def _pairs(ips: Iterable[str], port: int) -> Resolved:
    """(family, sockaddr) pairs for ``ips`` on ``port``."""
    return [(socket.AF_INET6, (ip, port, 0, 0)) if ":" in ip else (socket.AF_INET, (ip, port)) for ip in ips]


class HostsFile:
    """/etc/hosts as name -> addresses, read again when its mtime changes (checked at most once a second)."""

    def __init__(self, path: str = "/etc/hosts", clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._checked = float("-inf")
        self._mtime: float | None = None
        self._names: dict[str, list[str]] = {}

    def lookup(self, name: str) -> list[str] | None:
        """The addresses listed for ``name`` (lowercase, no trailing dot), or None when it is not listed."""
        now = self._clock()
        if now - self._checked >= _HOSTS_RECHECK:
            self._checked = now
            self._reload()
        return self._names.get(name)

    def _reload(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime
        except OSError:
            self._mtime, self._names = None, {}
            return
        if mtime == self._mtime:
            return
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                self._names = parse_hosts(file.read(1 << 20))
        except OSError:
            self._names = {}
        self._mtime = mtime


def parse_hosts(text: str) -> dict[str, list[str]]:
    """hosts(5) lines -> {name: [address, ...]} in file order; bad lines and scoped addresses are skipped."""
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or "%" in fields[0] or not is_ip(fields[0]):
            continue
        address = bare_ip(fields[0])
        for name in fields[1:]:
            listed = names.setdefault(name.rstrip(".").lower(), [])
            if address not in listed:
                listed.append(address)
    return names


class ServerFailed(Exception):
    """One server gave no usable answer (timeout, SERVFAIL, REFUSED, a TLS or HTTP failure...)."""


@dataclass(frozen=True)
class Answer:
    """What the servers said for one name and type: addresses, or none (NXDOMAIN/NODATA), and for how long."""

    addresses: tuple[str, ...]
    ttl: float


def interpret(response: dns.message.Message, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Answer:
    """The addresses in ``response``, following CNAMEs; ServerFailed for SERVFAIL, REFUSED and the like."""
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Answer((), _negative_ttl(response))
    if rcode != dns.rcode.NOERROR:
        raise ServerFailed(f"answered {dns.rcode.to_text(rcode)}")
    name, ttl = qname, MAX_POSITIVE_TTL
    for _ in range(_MAX_CNAME_HOPS):
        rrset = response.get_rrset(response.answer, name, dns.rdataclass.IN, rdtype)
        if rrset is not None and len(rrset) > 0:
            return Answer(tuple(rdata.address for rdata in rrset), min(ttl, float(rrset.ttl)))
        cname = response.get_rrset(response.answer, name, dns.rdataclass.IN, dns.rdatatype.CNAME)
        if cname is None or len(cname) == 0:
            break
        ttl = min(ttl, float(cname.ttl))
        name = next(iter(cname)).target
    return Answer((), _negative_ttl(response))


def _negative_ttl(response: dns.message.Message) -> float:
    """RFC 2308: min(SOA TTL, SOA MINIMUM) from the authority section, at most 60 s; 0 (no caching) without SOA."""
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            soa = next(iter(rrset))
            return min(float(rrset.ttl), float(soa.minimum), MAX_NEGATIVE_TTL)
    return 0.0


@dataclass
class _Cached:
    answer: Answer
    expires: float


class DnsResolver:
    """A ``dial.Resolver`` that asks ``servers`` itself; call it as ``resolver(host, port)``.

    ``timeout`` bounds a whole lookup made through ``__call__`` (gproxy's --connect-timeout);
    ``resolve(host, port, deadline)`` takes the caller's own deadline (``time.monotonic()`` based).
    Raises ``socket.gaierror``, as the system resolver does, when a name does not resolve or no
    server answers in time (the dialer answers it with SOCKS5 0x04).
    """

    def __init__(
        self,
        servers: Sequence[ResolverServer],
        *,
        ca_files: Iterable[str] = (),
        per_server_timeout: float = 2.0,
        cache_size: int = 10000,
        timeout: float = 10.0,
        hosts_path: str = "/etc/hosts",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not servers:
            raise ConfigError("--resolver: at least one resolver is needed")
        self.servers = tuple(servers)
        self.per_server_timeout = per_server_timeout
        self.cache_size = cache_size
        self.timeout = timeout
        self.hosts = HostsFile(hosts_path, clock)
        self._clock = clock
        self._cache: OrderedDict[str, dict[dns.rdatatype.RdataType, _Cached]] = OrderedDict()
        self._inflight: dict[tuple[str, dns.rdatatype.RdataType], tuple[gevent.Greenlet, AsyncResult]] = {}
        transports = {server.transport for server in self.servers}
        self._contexts: dict[Transport, ssl.SSLContext] = {
            transport: client_context(tuple(ca_files), alpn="http/1.1" if transport == "https" else None)
            for transport in transports & {"tls", "https"}
        }

    def __call__(self, host: str, port: int) -> Resolved:
        return self.resolve(host, port, time.monotonic() + self.timeout)

    def resolve(self, host: str, port: int, deadline: float) -> Resolved:
        """(family, sockaddr) pairs, IPv6 and IPv4 interleaved, IPv6 first (RFC 8305)."""
        return interleave(_pairs(self.lookup(host, deadline)[0], port))

    def resolve_racing(self, host: str, port: int, deadline: float) -> tuple[Resolved, AsyncResult | None]:
        """As resolve(), but a positive AAAA answer that comes before the A answer is returned
        at once, with the A answer still coming (an AsyncResult of its pairs): RFC 8305
        section 3, connecting over IPv6 starts without waiting for a slow A query."""
        ips, a_query = self.lookup(host, deadline, quick_ipv6=True)
        addrs = _pairs(ips, port)
        if a_query is None:
            return interleave(addrs), None
        later: AsyncResult = AsyncResult()

        def arrived(result: AsyncResult) -> None:
            if result.successful():
                later.set(_pairs(result.value.addresses, port))
            else:
                later.set_exception(socket.gaierror(socket.EAI_AGAIN, f"{host}: {result.exception}"))

        a_query.rawlink(arrived)
        return addrs, later

    def lookup(self, host: str, deadline: float, *, quick_ipv6: bool = False) -> tuple[list[str], AsyncResult | None]:
        """The addresses of ``host``: IPv6 ones first, then IPv4, each in the server's order;
        and None, or with ``quick_ipv6`` when a positive AAAA answer came before the A answer,
        the AAAA addresses at once and the A query still running (an AsyncResult of an Answer)."""
        if is_ip(host):
            return [bare_ip(host)], None
        name = host.rstrip(".").lower()
        if not name:
            raise socket.gaierror(socket.EAI_NONAME, "empty name")
        listed = self.hosts.lookup(name)
        if listed is not None:
            return sorted(listed, key=lambda ip: ":" not in ip), None
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError) as exc:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: not a valid name ({exc})") from None
        answers: dict[dns.rdatatype.RdataType, Answer] = {}
        failures: dict[dns.rdatatype.RdataType, BaseException] = {}
        pending: dict[dns.rdatatype.RdataType, AsyncResult] = {}
        for rdtype in _QUERY_TYPES:
            cached = self._cached(name, rdtype)
            if cached is not None:
                answers[rdtype] = cached
            else:
                pending[rdtype] = self._shared_query(name, qname, rdtype)
        while pending:
            if quick_ipv6 and dns.rdatatype.AAAA in answers and answers[dns.rdatatype.AAAA].addresses:
                return list(answers[dns.rdatatype.AAAA].addresses), pending[dns.rdatatype.A]  # no wait for A
            remaining = deadline - time.monotonic()
            if dns.rdatatype.A in answers and answers[dns.rdatatype.A].addresses:
                remaining = min(remaining, RESOLUTION_DELAY)  # A is in; AAAA gets a short grace only
            if remaining <= 0:
                break
            done = gevent.wait(list(pending.values()), timeout=remaining, count=1)
            if not done:
                break
            for rdtype, result in list(pending.items()):
                if result.ready():
                    del pending[rdtype]
                    if result.successful():
                        answers[rdtype] = result.get()
                    else:
                        failures[rdtype] = result.exception
        addresses = [ip for rdtype in _QUERY_TYPES if rdtype in answers for ip in answers[rdtype].addresses]
        if addresses:
            return addresses, None
        if failures:
            raise socket.gaierror(socket.EAI_AGAIN, f"{host}: {next(iter(failures.values()))}")
        if pending:
            raise socket.gaierror(socket.EAI_AGAIN, f"{host}: resolving timed out")
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: name does not resolve")

    def close(self) -> None:
        """Stop the queries still in flight (their callers get a failure)."""
        for greenlet, _ in list(self._inflight.values()):
            greenlet.kill(block=False)

    # cache

    def _cached(self, name: str, rdtype: dns.rdatatype.RdataType) -> Answer | None:
        entry = self._cache.get(name)
        if entry is None:
            return None
        cached = entry.get(rdtype)
        if cached is None:
            return None
        if cached.expires <= self._clock():
            del entry[rdtype]
            if not entry:
                del self._cache[name]
            return None
        self._cache.move_to_end(name)
        return cached.answer

    def _store(self, name: str, rdtype: dns.rdatatype.RdataType, answer: Answer) -> None:
        if answer.ttl <= 0 or self.cache_size <= 0:
            return
        self._cache.setdefault(name, {})[rdtype] = _Cached(answer, self._clock() + answer.ttl)
        self._cache.move_to_end(name)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    # queries

    def _shared_query(self, name: str, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> AsyncResult:
        """The running query for (name, rdtype), or a new one in its own greenlet (it outlives an impatient caller)."""
        key = (name, rdtype)
        running = self._inflight.get(key)
        if running is not None:
            return running[1]
        result: AsyncResult = AsyncResult()
        greenlet = gevent.Greenlet(self._run_query, key, qname, result)
        self._inflight[key] = (greenlet, result)
        greenlet.start()
        return result

    def _run_query(self, key: tuple[str, dns.rdatatype.RdataType], qname: dns.name.Name, result: AsyncResult) -> None:
        try:
            answer = self.query(qname, key[1])
        except Exception as exc:  # noqa: BLE001 (handed to the waiting callers, never printed by gevent)
            result.set_exception(exc)
        except gevent.GreenletExit:
            result.set_exception(ServerFailed("resolver closed"))
        else:
            self._store(key[0], key[1], answer)
            result.set(answer)
        finally:
            self._inflight.pop(key, None)

    def query(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> Answer:
        """Ask the servers in order, each for at most ``per_server_timeout``; ServerFailed when none answers."""
        failures = []
        for server in self.servers:
            query = dns.message.make_query(qname, rdtype, use_edns=0, payload=UDP_PAYLOAD)
            timed_out = ServerFailed("timed out")
            try:
                with gevent.Timeout(self.per_server_timeout, timed_out):
                    return interpret(self._exchange(server, query), qname, rdtype)
            except (ServerFailed, OSError, ValueError, dns.exception.DNSException, h11.ProtocolError) as exc:
                failures.append(f"{server}: {exc or type(exc).__name__}")
        raise ServerFailed("no resolver answered (" + "; ".join(failures) + ")")

    def _exchange(self, server: ResolverServer, query: dns.message.Message) -> dns.message.Message:
        if server.transport == "udp":
            response = exchange_udp(server.host, server.port, query)
            if response is not None:
                return response
            return exchange_stream(_connect(server), query)  # truncated: again over TCP
        if server.transport == "tcp":
            return exchange_stream(_connect(server), query)
        tls = tls_connect(_connect(server), self._contexts[server.transport], server.host)
        if server.transport == "tls":
            return exchange_stream(tls, query)
        return exchange_https(tls, server, query)


def _connect(server: ResolverServer) -> socket.socket:
    """A TCP connection to the server (a name is looked up with the system resolver: the bootstrap)."""
    sock: socket.socket = gsocket.create_connection((server.host, server.port))
    return sock


def exchange_udp(host: str, port: int, query: dns.message.Message) -> dns.message.Message | None:
    """One query over UDP: the matching answer (same id and question), or None when it is truncated."""
    sock = gsocket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.connect((host, port))  # only datagrams from the server get through
        sock.send(query.to_wire())
        for _ in range(_MAX_STRAY_DATAGRAMS):
            data = sock.recv(MAX_MESSAGE)
            if len(data) >= 12 and data[:2] == query.id.to_bytes(2, "big") and data[2] & 0x02:
                return None  # TC: the full answer needs TCP
            try:
                response = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            if query.is_response(response):
                return response
        raise ServerFailed("no matching answer over UDP")
    finally:
        sock.close()


def exchange_stream(sock: socket.socket, query: dns.message.Message) -> dns.message.Message:
    """One query over TCP or TLS: 2-byte length framing (RFC 1035 4.2.2); closes ``sock``."""
    try:
        wire = query.to_wire()
        sock.sendall(struct.pack("!H", len(wire)) + wire)
        (length,) = struct.unpack("!H", _recv_exact(sock, 2))
        response = dns.message.from_wire(_recv_exact(sock, length))
    finally:
        sock.close()
    if not query.is_response(response):
        raise ServerFailed("the answer does not match the question")
    return response


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(size - len(chunks))
        if not chunk:
            raise ServerFailed("connection closed mid-answer")
        chunks += chunk
    return bytes(chunks)


def exchange_https(tls: socket.socket, server: ResolverServer, query: dns.message.Message) -> dns.message.Message:
    """One RFC 8484 POST over HTTP/1.1 (h11); the body is read up to 64 KiB; closes ``tls``."""
    wire = query.to_wire()
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=16384)
    authority = format_hostport(server.host, server.port).removesuffix(":443")
    request = h11.Request(
        method="POST",
        target=server.path,
        headers=[
            ("Host", authority),
            ("Content-Type", "application/dns-message"),
            ("Accept", "application/dns-message"),
            ("Content-Length", str(len(wire))),
            ("Connection", "close"),
        ],
    )
    try:
        tls.sendall(conn.send(request) + conn.send(h11.Data(data=wire)) + conn.send(h11.EndOfMessage()))
        status, content_type, body = 0, b"", bytearray()
        for _ in range(_MAX_HTTP_RECVS):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(tls.recv(16384))
            elif isinstance(event, h11.Response):
                status = event.status_code
                content_type = dict(event.headers).get(b"content-type", b"")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_MESSAGE:
                    raise ServerFailed("answer larger than 64 KiB")
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        else:
            raise ServerFailed("answer too slow in coming")
    finally:
        tls.close()
    if status != 200:
        raise ServerFailed(f"HTTP status {status}")
    if content_type.split(b";", 1)[0].strip().lower() != b"application/dns-message":
        raise ServerFailed(f"content type {content_type.decode('latin-1')!r}, not application/dns-message")
    response = dns.message.from_wire(bytes(body))
    if not query.is_response(response):
        raise ServerFailed("the answer does not match the question")
    return response
