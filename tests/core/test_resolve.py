"""gproxy.core.resolve against DNS servers run inside the test (UDP, TCP, DoT, DoH on loopback).

The servers answer from a dict and count the queries they get, so caching, coalescing and
fallback are checked by what reached the wire; cache expiry uses an injected clock.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import gevent
import h11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gevent.server import StreamServer

from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address
from gproxy.core.dial import DirectDialer, resolve
from gproxy.core.errors import ConfigError, Denied, DialError
from gproxy.core.resolve import DnsResolver
from gproxy.core.resolver_url import ResolverServer, parse_resolver_url
from tests.helpers import recv_exact

SOA = "ns.test. admin.test. 1 7200 3600 1209600 {minimum}"


class FakeDns:
    """A DNS server on 127.0.0.1 (UDP and TCP on one port; optionally DoT or DoH) answering from ``records``.

    ``records[(name, type)] = ([values], ttl)``; a name with no record of any type is NXDOMAIN,
    a known name without the asked type is NODATA; both carry an SOA with ``soa_minimum``.
    ``queries`` counts (name, type) and ``transports`` counts udp/tcp/tls/https.
    """

    def __init__(self, tls_context: ssl.SSLContext | None = None, doh: bool = False) -> None:
        self.records: dict[tuple[str, str], tuple[list[str], int]] = {}
        self.servfail: set[str] = set()
        self.drop_types: set[str] = set()
        self.truncate_udp = False
        self.soa_minimum = 30
        self.delay = 0.0
        self.delay_types: dict[str, float] = {}  # extra delay of the answers of one type
        self.queries: Counter[tuple[str, str]] = Counter()
        self.transports: Counter[str] = Counter()
        self.http_status = 200
        self.http_body: bytes | None = None  # replaces the DNS answer in the HTTP response
        self.http_requests: list[tuple[bytes, bytes, dict[bytes, bytes]]] = []
        self._greenlets: list[gevent.Greenlet] = []
        self.udp: socket.socket | None = None
        self.tls_context = tls_context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if tls_context is not None:
            self.stream = StreamServer(("127.0.0.1", 0), self._serve_doh if doh else self._serve_tls)
            self.stream.start()
            return
        for _ in range(10):  # UDP and TCP on the same port: retry if TCP's is taken
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.bind(udp.getsockname())
                listener.listen(64)
            except OSError:
                listener.close()
                udp.close()
                continue
            self.stream = StreamServer(listener, self._serve_tcp)
            self.stream.start()
            self.udp = udp
            self._greenlets.append(gevent.spawn(self._serve_udp))
            return
        raise RuntimeError("no port free for both UDP and TCP")

    @property
    def port(self) -> int:
        return int(self.stream.server_port)

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        query = dns.message.from_wire(wire)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries[(name, rdtype)] += 1
        self.transports[transport] += 1
        if self.delay or rdtype in self.delay_types:
            gevent.sleep(self.delay + self.delay_types.get(rdtype, 0.0))
        if rdtype in self.drop_types:
            return None
        response = dns.message.make_response(query)
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif transport == "udp" and self.truncate_udp:
            response.flags |= dns.flags.TC
        else:
            self._fill(response, name, rdtype)
        wire_out: bytes = response.to_wire()
        return wire_out

    def _fill(self, response: dns.message.Message, name: str, rdtype: str) -> None:
        for _ in range(8):
            if (name, "CNAME") in self.records:
                (target,), ttl = self.records[(name, "CNAME")]
                response.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "CNAME", target))
                name = target.rstrip(".")
                continue
            if (name, rdtype) in self.records:
                values, ttl = self.records[(name, rdtype)]
                response.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", rdtype, *values))
                return
            break
        if not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = SOA.format(minimum=self.soa_minimum)
        response.authority.append(dns.rrset.from_text("test.", 3600, "IN", "SOA", soa))

    def _serve_udp(self) -> None:
        assert self.udp is not None
        while True:
            wire, peer = self.udp.recvfrom(65535)
            gevent.spawn(self._answer_udp, wire, peer)

    def _answer_udp(self, wire: bytes, peer: tuple[str, int]) -> None:
        reply = self.answer(wire, "udp")
        if reply is not None and self.udp is not None:
            self.udp.sendto(reply, peer)

    def _serve_framed(self, sock: socket.socket, transport: str) -> None:
        (length,) = struct.unpack("!H", recv_exact(sock, 2))
        reply = self.answer(recv_exact(sock, length), transport)
        if reply is not None:
            sock.sendall(struct.pack("!H", len(reply)) + reply)

    def _serve_tcp(self, sock: socket.socket, _peer: object) -> None:
        self._serve_framed(sock, "tcp")

    def _serve_tls(self, sock: socket.socket, _peer: object) -> None:
        try:
            with self.tls_context.wrap_socket(sock, server_side=True) as tls:
                self._serve_framed(tls, "tls")
        except (OSError, EOFError):  # the client refused our certificate, or left
            pass

    def _serve_doh(self, sock: socket.socket, _peer: object) -> None:
        try:
            with self.tls_context.wrap_socket(sock, server_side=True) as tls:
                self._serve_http(tls)
        except OSError:  # the client refused our certificate
            pass

    def _serve_http(self, sock: socket.socket) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        for _ in range(100):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Request):
                self.http_requests.append((event.method, event.target, dict(event.headers)))
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                break
        reply = self.answer(body, "https") or b""
        if self.http_body is not None:
            reply = self.http_body
        headers = [("Content-Type", "application/dns-message"), ("Content-Length", str(len(reply)))]
        sock.sendall(
            conn.send(h11.Response(status_code=self.http_status, headers=headers))
            + conn.send(h11.Data(data=reply))
            + conn.send(h11.EndOfMessage())
        )

    def close(self) -> None:
        self.stream.stop(timeout=1)
        gevent.killall(self._greenlets)
        if self.udp is not None:
            self.udp.close()

    def __enter__(self) -> FakeDns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def dns_server() -> Iterator[FakeDns]:
    with FakeDns() as server:
        server.records[("svc.test", "A")] = (["192.0.2.1", "192.0.2.2"], 300)
        server.records[("svc.test", "AAAA")] = (["2001:db8::1"], 300)
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_resolver(tmp_path: Path, clock: FakeClock) -> Iterator[Callable[..., DnsResolver]]:
    """``make_resolver(url, ..., **options)``: an empty hosts file and the fake clock unless told otherwise."""
    hosts = tmp_path / "hosts"
    hosts.write_text("")
    made: list[DnsResolver] = []

    def factory(*urls: str, **options: Any) -> DnsResolver:
        options.setdefault("hosts_path", str(hosts))
        options.setdefault("clock", clock)
        options.setdefault("per_server_timeout", 1.0)
        resolver = DnsResolver([parse_resolver_url(url) for url in urls], **options)
        made.append(resolver)
        return resolver

    yield factory
    for resolver in made:
        resolver.close()


def udp_url(server: FakeDns) -> str:
    return f"127.0.0.1:{server.port}"


# URLs


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("1.1.1.1", ResolverServer("udp", "1.1.1.1", 53)),
        ("1.1.1.1:5353", ResolverServer("udp", "1.1.1.1", 5353)),
        ("2606:4700::1111", ResolverServer("udp", "2606:4700::1111", 53)),
        ("[2606:4700::1111]:5353", ResolverServer("udp", "2606:4700::1111", 5353)),
        ("udp://9.9.9.9", ResolverServer("udp", "9.9.9.9", 53)),
        ("tcp://[::1]:5353", ResolverServer("tcp", "::1", 5353)),
        ("tls://dns.example", ResolverServer("tls", "dns.example", 853)),
        ("tls://1.1.1.1:8853", ResolverServer("tls", "1.1.1.1", 8853)),
        ("https://dns.example/dns-query", ResolverServer("https", "dns.example", 443, "/dns-query")),
        ("https://dns.example:8443/q?ct", ResolverServer("https", "dns.example", 8443, "/q?ct")),
        ("https://[2001:db8::53]", ResolverServer("https", "2001:db8::53", 443, "/dns-query")),
    ],
)
def test_resolver_urls(url: str, expected: ResolverServer) -> None:
    assert parse_resolver_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "",
        "dns.example",  # plain DNS needs an IP
        "udp://dns.example",
        "foo://1.1.1.1",
        "1.1.1.1:0",
        "1.1.1.1:99999",
        "1.1.1.1:abc",
        "tcp://1.1.1.1/path",
        "tls://user:pw@dns.example",
        "tls://dns.example/path",
        "tls://",
        "https://bad_host!/dns-query",
        "https://dns.example/#frag",
    ],
)
def test_bad_resolver_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_resolver_url(url)
    message = str(caught.value)
    assert message.startswith(f"--resolver {url!r}: ")
    assert "\n" not in message


# lookups and the cache


def test_both_families_asked_at_once_and_interleaved(dns_server: FakeDns, make_resolver: Any) -> None:
    resolver = make_resolver(udp_url(dns_server))
    resolved = resolver("svc.test", 443)  # dnspython shuffles an RRset's records on the wire
    assert resolved[0] == (socket.AF_INET6, ("2001:db8::1", 443, 0, 0))
    assert sorted(resolved[1:]) == [(socket.AF_INET, ("192.0.2.1", 443)), (socket.AF_INET, ("192.0.2.2", 443))]
    assert dns_server.queries == {("svc.test", "A"): 1, ("svc.test", "AAAA"): 1}


def test_second_lookup_is_served_from_the_cache(dns_server: FakeDns, make_resolver: Any) -> None:
    resolver = make_resolver(udp_url(dns_server))
    first = resolver("svc.test", 80)
    assert resolver("SVC.test.", 80) == first  # names are case-insensitive, the final dot optional
    assert dns_server.queries == {("svc.test", "A"): 1, ("svc.test", "AAAA"): 1}


@pytest.mark.parametrize(
    ("name", "ttl", "kept"),
    [("short.test", 300, 300), ("long.test", 86400, 3600)],
    ids=["expires_with_the_ttl", "ttl_capped_at_one_hour"],
)
def test_cache_keeps_an_answer_for_its_ttl(
    dns_server: FakeDns, make_resolver: Any, clock: FakeClock, name: str, ttl: int, kept: int
) -> None:
    dns_server.records[(name, "A")] = (["192.0.2.9"], ttl)
    resolver = make_resolver(udp_url(dns_server))
    resolver(name, 80)
    clock.now += kept - 1
    resolver(name, 80)
    assert dns_server.queries[(name, "A")] == 1
    clock.now += 2
    resolver(name, 80)
    assert dns_server.queries[(name, "A")] == 2


def test_cname_chain_is_followed(dns_server: FakeDns, make_resolver: Any) -> None:
    dns_server.records[("alias.test", "CNAME")] = (["svc.test."], 300)
    resolver = make_resolver(udp_url(dns_server))
    assert sorted(sockaddr[0] for _, sockaddr in resolver("alias.test", 80)) == [
        "192.0.2.1",
        "192.0.2.2",
        "2001:db8::1",
    ]


def test_one_family_only(dns_server: FakeDns, make_resolver: Any) -> None:
    dns_server.records[("v4only.test", "A")] = (["192.0.2.7"], 300)
    resolver = make_resolver(udp_url(dns_server))
    assert resolver("v4only.test", 80) == [(socket.AF_INET, ("192.0.2.7", 80))]


@pytest.mark.parametrize(("soa_minimum", "cached_for"), [(30, 30), (600, 60)])
def test_nxdomain_is_cached_for_the_soa_minimum_at_most_60s(
    dns_server: FakeDns, make_resolver: Any, clock: FakeClock, soa_minimum: int, cached_for: int
) -> None:
    dns_server.soa_minimum = soa_minimum
    resolver = make_resolver(udp_url(dns_server))
    with pytest.raises(socket.gaierror) as caught:
        resolver("nowhere.test", 80)
    assert caught.value.errno == socket.EAI_NONAME
    clock.now += cached_for - 1
    with pytest.raises(socket.gaierror):
        resolver("nowhere.test", 80)
    assert dns_server.queries[("nowhere.test", "A")] == 1
    clock.now += 2
    with pytest.raises(socket.gaierror):
        resolver("nowhere.test", 80)
    assert dns_server.queries[("nowhere.test", "A")] == 2


def test_servfail_is_not_cached_and_answers_host_unreachable(dns_server: FakeDns, make_resolver: Any) -> None:
    dns_server.servfail.add("broken.test")
    resolver = make_resolver(udp_url(dns_server))
    for _ in range(2):
        with pytest.raises(DialError) as caught:
            resolve(Address("broken.test", 80), resolver)
        assert caught.value.reply == ReplyCode.HOST_UNREACHABLE
        assert "SERVFAIL" in str(caught.value)
    assert dns_server.queries[("broken.test", "A")] == 2


def test_lru_keeps_at_most_cache_size_names(dns_server: FakeDns, make_resolver: Any) -> None:
    for name in ("a.test", "b.test", "c.test"):
        dns_server.records[(name, "A")] = (["192.0.2.3"], 300)
    resolver = make_resolver(udp_url(dns_server), cache_size=2)
    resolver("a.test", 80)
    resolver("b.test", 80)
    resolver("a.test", 80)  # a is now the most recently used
    resolver("c.test", 80)  # evicts b
    resolver("a.test", 80)
    resolver("b.test", 80)
    assert dns_server.queries[("a.test", "A")] == 1
    assert dns_server.queries[("b.test", "A")] == 2


def test_truncated_udp_answer_is_asked_again_over_tcp(dns_server: FakeDns, make_resolver: Any) -> None:
    dns_server.truncate_udp = True
    resolver = make_resolver(udp_url(dns_server))
    assert len(resolver("svc.test", 80)) == 3
    assert dns_server.transports == {"udp": 2, "tcp": 2}


def test_tcp_resolver(dns_server: FakeDns, make_resolver: Any) -> None:
    resolver = make_resolver(f"tcp://127.0.0.1:{dns_server.port}")
    assert len(resolver("svc.test", 80)) == 3
    assert dns_server.transports == {"tcp": 2}


def test_concurrent_lookups_share_one_query(dns_server: FakeDns, make_resolver: Any) -> None:
    dns_server.delay = 0.1
    resolver = make_resolver(udp_url(dns_server))
    lookups = [gevent.spawn(resolver, "svc.test", 443) for _ in range(10)]
    gevent.joinall(lookups, timeout=10, raise_error=True)
    assert all(len(lookup.value) == 3 for lookup in lookups)
    assert dns_server.queries == {("svc.test", "A"): 1, ("svc.test", "AAAA"): 1}


def test_hosts_file_is_read_first(dns_server: FakeDns, make_resolver: Any, tmp_path: Path) -> None:
    hosts = tmp_path / "myhosts"
    hosts.write_text("# comment\n10.9.8.7  svc.test other.test  # trailing\nfe80::1%eth0 svc.test\n::1 svc.test\n")
    resolver = make_resolver(udp_url(dns_server), hosts_path=str(hosts))
    assert resolver("svc.test", 80) == [(socket.AF_INET6, ("::1", 80, 0, 0)), (socket.AF_INET, ("10.9.8.7", 80))]
    assert resolver("OTHER.test", 80) == [(socket.AF_INET, ("10.9.8.7", 80))]
    assert not dns_server.queries


def test_literal_ip_needs_no_query(dns_server: FakeDns, make_resolver: Any) -> None:
    resolver = make_resolver(udp_url(dns_server))
    assert resolver("2001:db8::5", 80) == [(socket.AF_INET6, ("2001:db8::5", 80, 0, 0))]
    assert not dns_server.queries


# fallback and deadlines


def test_dead_first_server_falls_back_to_the_second(dns_server: FakeDns, make_resolver: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # takes queries, never answers
        silent.bind(("127.0.0.1", 0))
        resolver = make_resolver(f"127.0.0.1:{silent.getsockname()[1]}", udp_url(dns_server), per_server_timeout=0.3)
        started = time.monotonic()
        assert len(resolver("svc.test", 80)) == 3
        took = time.monotonic() - started
    assert 0.25 < took < 5
    assert dns_server.queries == {("svc.test", "A"): 1, ("svc.test", "AAAA"): 1}


def test_refusing_first_server_falls_back_to_the_second(
    dns_server: FakeDns, make_resolver: Any, closed_port: int
) -> None:
    resolver = make_resolver(f"tcp://127.0.0.1:{closed_port}", udp_url(dns_server))
    assert len(resolver("svc.test", 80)) == 3


def test_servfail_from_first_server_asks_the_second(dns_server: FakeDns, make_resolver: Any) -> None:
    with FakeDns() as failing:
        failing.servfail.add("svc.test")
        resolver = make_resolver(udp_url(failing), udp_url(dns_server))
        assert len(resolver("svc.test", 80)) == 3


def test_whole_lookup_stays_within_the_callers_deadline(make_resolver: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = make_resolver(f"127.0.0.1:{silent.getsockname()[1]}", per_server_timeout=2.0, timeout=0.4)
        started = time.monotonic()
        with pytest.raises(DialError) as caught:
            resolve(Address("svc.test", 80), resolver)
        took = time.monotonic() - started
    assert caught.value.reply == ReplyCode.HOST_UNREACHABLE
    assert 0.3 < took < 1.9


def test_all_servers_timing_out_is_a_resolution_failure(make_resolver: Any) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        resolver = make_resolver(f"127.0.0.1:{silent.getsockname()[1]}", per_server_timeout=0.2)
        with pytest.raises(socket.gaierror) as caught:
            resolver("svc.test", 80)
    assert "timed out" in str(caught.value)


def test_a_answer_does_not_wait_for_a_dropped_aaaa(dns_server: FakeDns, make_resolver: Any) -> None:
    dns_server.drop_types.add("AAAA")
    resolver = make_resolver(udp_url(dns_server), per_server_timeout=2.0)
    started = time.monotonic()
    assert sorted(resolver("svc.test", 80)) == [
        (socket.AF_INET, ("192.0.2.1", 80)),
        (socket.AF_INET, ("192.0.2.2", 80)),
    ]
    assert time.monotonic() - started < 1.5


@pytest.fixture
def dual_stack_name(dns_server: FakeDns) -> Iterator[tuple[socket.socket, int]]:
    """``dual.test`` with AAAA ::1 and A 127.0.0.1; a listener on 127.0.0.1 at the port
    returned and none on ::1 (connections there are refused)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    dns_server.records[("dual.test", "AAAA")] = (["::1"], 300)
    dns_server.records[("dual.test", "A")] = (["127.0.0.1"], 300)
    with listener:
        yield listener, listener.getsockname()[1]


def test_a_quick_aaaa_answer_is_raced_without_waiting_for_the_a_answer(dns_server: FakeDns, make_resolver: Any) -> None:
    # RFC 8305 section 3: AAAA in first, connecting starts at once (the A query is lost here)
    dns_server.drop_types.add("A")
    dns_server.records[("v6.test", "AAAA")] = (["::1"], 300)
    dns_server.records[("v6.test", "A")] = (["127.0.0.1"], 300)
    with socket.socket(socket.AF_INET6) as listener:
        listener.bind(("::1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        dialer = DirectDialer(make_resolver(udp_url(dns_server), per_server_timeout=10.0))
        started = time.monotonic()
        with dialer.dial(Address("v6.test", port), timeout=20) as sock:
            assert sock.getpeername()[:2] == ("::1", port)
        assert time.monotonic() - started < 5.0  # not after the lost A query's 10 s


def test_a_late_a_answer_joins_the_race_when_ipv6_is_refused(
    dns_server: FakeDns, make_resolver: Any, dual_stack_name: tuple[socket.socket, int]
) -> None:
    dns_server.delay_types["A"] = 0.3
    _, port = dual_stack_name
    dialer = DirectDialer(make_resolver(udp_url(dns_server)))
    with dialer.dial(Address("dual.test", port), timeout=5) as sock:
        assert sock.getpeername() == ("127.0.0.1", port)


def test_ipv6_refused_and_no_a_answer_reports_the_refusal(
    dns_server: FakeDns, make_resolver: Any, dual_stack_name: tuple[socket.socket, int]
) -> None:
    dns_server.drop_types.add("A")
    _, port = dual_stack_name
    dialer = DirectDialer(make_resolver(udp_url(dns_server), per_server_timeout=0.3))
    with pytest.raises(DialError) as caught:
        dialer.dial(Address("dual.test", port), timeout=5)
    assert caught.value.reply == ReplyCode.CONNECTION_REFUSED


@pytest.mark.parametrize(
    "refusal",
    [Denied("IPv4 destinations are not allowed"), RuntimeError("a checker bug")],
    ids=["denied", "check-fails"],  # a failing check must not leave the race waiting (timeout 20 s)
)
def test_a_late_a_answer_is_checked_like_the_others(
    dns_server: FakeDns, make_resolver: Any, dual_stack_name: tuple[socket.socket, int], refusal: Exception
) -> None:
    dns_server.delay_types["A"] = 0.2
    _, port = dual_stack_name

    def only_ipv6(ip: Any, _port: int) -> None:
        if ip.version == 4:
            raise refusal

    dialer = DirectDialer(make_resolver(udp_url(dns_server)), check=only_ipv6)
    with pytest.raises(DialError) as caught:  # 127.0.0.1 would answer: it was left out
        dialer.dial(Address("dual.test", port), timeout=20)
    assert caught.value.reply == ReplyCode.CONNECTION_REFUSED  # ::1's answer, as when A comes first


def test_direct_dialer_connects_through_the_resolver(echo_tcp: Any, make_resolver: Any) -> None:
    with FakeDns() as server:
        server.records[("echo.test", "A")] = (["127.0.0.1"], 300)
        dialer = DirectDialer(make_resolver(udp_url(server)))
        with dialer.dial(Address("echo.test", echo_tcp.port), timeout=5) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"


# DNS over TLS and over HTTPS


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CA file, and server contexts whose certificates it signed: one for 127.0.0.1, one for another name."""
    folder = tmp_path_factory.mktemp("ca")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("gproxy test CA"))
        .issuer_name(_name("gproxy test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def server_context(label: str, san: x509.GeneralName) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(label))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_file, key_file = folder / f"{label}.pem", folder / f"{label}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context

    return {
        "ca_file": str(ca_file),
        "right": server_context("right", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        "wrong": server_context("wrong", x509.DNSName("other.test")),
    }


def _secure_server(context: ssl.SSLContext, doh: bool) -> FakeDns:
    server = FakeDns(tls_context=context, doh=doh)
    server.records[("svc.test", "A")] = (["192.0.2.1"], 300)
    server.records[("svc.test", "AAAA")] = (["2001:db8::1"], 300)
    return server


def _url(server: FakeDns, doh: bool) -> str:
    return f"https://127.0.0.1:{server.port}/dns-query" if doh else f"tls://127.0.0.1:{server.port}"


@pytest.mark.parametrize("doh", [False, True], ids=["dot", "doh"])
def test_encrypted_resolver_trusting_the_test_ca(test_ca: dict[str, Any], make_resolver: Any, doh: bool) -> None:
    with _secure_server(test_ca["right"], doh) as server:
        resolver = make_resolver(_url(server, doh), ca_files=[test_ca["ca_file"]])
        assert resolver("svc.test", 853) == [
            (socket.AF_INET6, ("2001:db8::1", 853, 0, 0)),
            (socket.AF_INET, ("192.0.2.1", 853)),
        ]
        assert server.transports == {"https" if doh else "tls": 2}
        for method, target, headers in server.http_requests:
            assert (method, target) == (b"POST", b"/dns-query")
            assert headers[b"content-type"] == headers[b"accept"] == b"application/dns-message"
            assert headers[b"host"] == f"127.0.0.1:{server.port}".encode()


@pytest.mark.parametrize("doh", [False, True], ids=["dot", "doh"])
def test_encrypted_resolver_rejects_a_certificate_for_another_name(
    test_ca: dict[str, Any], make_resolver: Any, doh: bool
) -> None:
    with _secure_server(test_ca["wrong"], doh) as server:
        resolver = make_resolver(_url(server, doh), ca_files=[test_ca["ca_file"]])
        with pytest.raises(socket.gaierror) as caught:
            resolver("svc.test", 853)
        assert "certificate" in str(caught.value).lower()
        assert not server.queries


@pytest.mark.parametrize("doh", [False, True], ids=["dot", "doh"])
def test_encrypted_resolver_does_not_trust_an_unknown_ca(
    test_ca: dict[str, Any], make_resolver: Any, doh: bool
) -> None:
    with _secure_server(test_ca["right"], doh) as server:
        resolver = make_resolver(_url(server, doh))
        with pytest.raises(socket.gaierror) as caught:
            resolver("svc.test", 853)
        assert "certificate verify failed" in str(caught.value)
        assert not server.queries


def test_unreadable_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(ConfigError) as caught:
        DnsResolver([parse_resolver_url("tls://127.0.0.1")], ca_files=[str(missing)])
    assert str(caught.value).startswith(f"--ca {missing}: ")


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [(503, None, "HTTP status 503"), (200, b"x" * 70000, "larger than 64 KiB")],
    ids=["status", "oversized"],
)
def test_doh_failure_falls_back_to_the_next_server(
    test_ca: dict[str, Any], make_resolver: Any, dns_server: FakeDns, status: int, body: bytes | None, error: str
) -> None:
    with _secure_server(test_ca["right"], doh=True) as server:
        server.http_status, server.http_body = status, body
        resolver = make_resolver(_url(server, True), ca_files=[test_ca["ca_file"]])
        with pytest.raises(socket.gaierror) as caught:
            resolver("svc.test", 443)
        assert error in str(caught.value)
        fallback = make_resolver(_url(server, True), udp_url(dns_server), ca_files=[test_ca["ca_file"]])
        assert len(fallback("svc.test", 443)) == 3
