"""Soak: mixed traffic over every listener kind for a bounded time.

GPROXY_SOAK_SECONDS sets the length (default 5 s locally, 60 s when CI is
set; ``tox -e soak`` runs 600 s). Every payload is checked by sha256 on the
way back, some clients are abusive on purpose, and at the end gproxy's fds
are back to baseline, its RSS has not run away, nothing unexpected is on
its stderr, and every good session's access-log line says ``outcome=ok``.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
import pytest
import requests

from gproxy.core.addr import Address
from tests.helpers import (
    EchoServer,
    UdpEchoServer,
    WsgiOrigin,
    parse_socks5_udp_datagram,
    read_socks5_bound,
    recv_exact,
    socks5_udp_datagram,
)
from tests.robustness.live import (
    PASSWORD,
    USER,
    DrainedGproxy,
    attack,
    fd_count,
    garbage,
    http_handshake,
    rss_kib,
    tcp_states,
    without_known_gaps,
)

SECONDS = float(os.environ.get("GPROXY_SOAK_SECONDS", "60" if os.environ.get("CI") else "5"))
WORKERS = 12
#: also how long --udp-forward mappings live after their last datagram
IDLE = 3
#: what gproxy may grow by over a soak (allocator arenas, caches), not per session;
#: bench/leak_rounds.py tells warm-up from a per-session leak, round by round
RSS_SLACK_KIB = 64 * 1024

pytestmark = [pytest.mark.soak, pytest.mark.timeout(SECONDS + 180)]


@dataclass
class Tally:
    sessions: Counter[str] = field(default_factory=Counter)
    bytes_verified: int = 0
    datagrams_verified: int = 0
    good_ports: set[int] = field(default_factory=set)
    abusive_ports: set[int] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)


def _pump(sock: socket.socket, payload: bytes, rng: random.Random) -> bytes:
    """Send ``payload`` in random pieces while reading the echo; half-close; sha256 of what came back."""

    def send() -> None:
        view = memoryview(payload)
        while view:
            n = rng.randint(1, 256 * 1024)
            sock.sendall(view[:n])
            view = view[n:]
        sock.shutdown(socket.SHUT_WR)

    sender = gevent.spawn(send)
    digest = hashlib.sha256()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        digest.update(chunk)
    sender.get(timeout=30)
    return digest.digest()


def _socks5_open(address: tuple[str, int], command: int, dest: Address, pipelined: bool) -> socket.socket:
    from gproxy.codec import socks5

    sock = socket.create_connection(address, timeout=30)
    hello = socks5.encode_greeting([2])
    auth = socks5.encode_auth(USER, PASSWORD)
    request = socks5.encode_request(command, dest)
    if pipelined:
        sock.sendall(hello + auth + request)
        assert recv_exact(sock, 4) == b"\x05\x02\x01\x00"
    else:
        sock.sendall(hello)
        assert recv_exact(sock, 2) == b"\x05\x02"
        sock.sendall(auth)
        assert recv_exact(sock, 2) == b"\x01\x00"
        sock.sendall(request)
    return sock


def socks5_connect(ctx: SoakContext, rng: random.Random, kind: str = "socks5") -> int:
    payload = rng.randbytes(rng.choice([1, 100, 10_000, 300_000, 2_000_000]))
    sock = _socks5_open(ctx.addr(kind), 1, ctx.echo, rng.random() < 0.5)
    try:
        read_socks5_bound(sock)
        ctx.tally.good_ports.add(sock.getsockname()[1])
        assert _pump(sock, payload, rng) == hashlib.sha256(payload).digest(), "socks5 payload corrupted"
    finally:
        sock.close()
    return len(payload)


def socks5_udp(ctx: SoakContext, rng: random.Random) -> int:
    control = _socks5_open(ctx.addr("socks5"), 3, Address("0.0.0.0", 0), rng.random() < 0.5)
    try:
        relay = read_socks5_bound(control)
        ctx.tally.good_ports.add(control.getsockname()[1])
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind(("127.0.0.1", 0))
        try:
            return _udp_exchange(client, relay, ctx, rng, wrap=True)
        finally:
            client.close()
    finally:
        control.close()


def http_connect(ctx: SoakContext, rng: random.Random, kind: str = "http") -> int:
    payload = rng.randbytes(rng.choice([1, 10_000, 1_000_000]))
    sock = socket.create_connection(ctx.addr(kind), timeout=30)
    try:
        sock.sendall(http_handshake(ctx.echo))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(1)  # byte by byte: nothing after the head may be consumed here
            assert chunk, f"EOF in the CONNECT response: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200"), head
        ctx.tally.good_ports.add(sock.getsockname()[1])
        assert _pump(sock, payload, rng) == hashlib.sha256(payload).digest(), "CONNECT payload corrupted"
    finally:
        sock.close()
    return len(payload)


def http_forward(ctx: SoakContext, rng: random.Random) -> int:
    """Absolute-URI POSTs on one kept-alive connection; the origin echoes each body."""
    host, port = ctx.addr("http")
    proxies = {"http": f"http://{USER.decode()}:{PASSWORD.decode()}@{host}:{port}"}
    total = 0
    with requests.Session() as session:
        for _ in range(rng.randint(1, 5)):
            body = rng.randbytes(rng.choice([0, 100, 50_000, 500_000]))
            response = session.post(f"http://127.0.0.1:{ctx.origin_port}/echo", data=body, proxies=proxies, timeout=30)
            assert response.status_code == 200, response.status_code
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(body).digest(), "body corrupted"
            total += len(body)
    return total


def mixed_socks5(ctx: SoakContext, rng: random.Random) -> int:
    return socks5_connect(ctx, rng, "mixed")


def mixed_http(ctx: SoakContext, rng: random.Random) -> int:
    return http_connect(ctx, rng, "mixed")


def forward_tcp(ctx: SoakContext, rng: random.Random) -> int:
    payload = rng.randbytes(rng.choice([1, 5_000, 500_000]))
    sock = socket.create_connection(ctx.addr("forward"), timeout=30)
    try:
        ctx.tally.good_ports.add(sock.getsockname()[1])
        assert _pump(sock, payload, rng) == hashlib.sha256(payload).digest(), "forward payload corrupted"
    finally:
        sock.close()
    return len(payload)


def udp_forward(ctx: SoakContext, rng: random.Random) -> int:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    try:
        return _udp_exchange(client, ctx.addr("udp-forward"), ctx, rng, wrap=False)
    finally:
        client.close()


def _udp_exchange(
    client: socket.socket, relay: tuple[str, int], ctx: SoakContext, rng: random.Random, wrap: bool
) -> int:
    """Datagrams one at a time, each resent until its echo comes back (UDP may drop)."""
    client.settimeout(0.5)
    total = 0
    for _ in range(rng.randint(1, 20)):
        payload = rng.randbytes(rng.choice([1, 512, 1400, 8000, 65000]))
        datagram = socks5_udp_datagram("127.0.0.1", ctx.udp_echo.port, payload) if wrap else payload
        for _attempt in range(10):
            client.sendto(datagram, relay)
            try:
                reply = client.recvfrom(65535)[0]
            except TimeoutError:
                continue
            if wrap:
                source, reply = parse_socks5_udp_datagram(reply)
                assert source == ("127.0.0.1", ctx.udp_echo.port), source
            assert hashlib.sha256(reply).digest() == hashlib.sha256(payload).digest(), "datagram corrupted"
            break
        else:
            raise AssertionError("a datagram was never echoed in 10 tries")
        total += len(payload)
        ctx.tally.datagrams_verified += 1
    return total


def abusive(ctx: SoakContext, rng: random.Random) -> int:
    """Garbage on a random TCP listener: must end, with whatever error, without harm."""
    from tests.robustness.live import PROBES

    probes = [p for p in PROBES if p.kind in ctx.addresses and not p.fixed_target]
    probe = rng.choice(probes)
    _, data = next(iter(garbage(probe, ctx.echo, 1, seed=rng.randrange(1 << 30))))
    result = attack(ctx.addr(probe.kind), data, half_close=rng.random() < 0.5, wait=30)
    ctx.tally.abusive_ports.add(result.port)
    assert result.ended != "hung", "an abusive client was never dropped"
    return 0


Scenario = Callable[["SoakContext", random.Random], int]


@dataclass(frozen=True)
class SoakListener:
    """A listener kind in the soak: its flags (given the echo servers) and traffic."""

    kind: str
    args: Callable[[SoakContext], list[str]]
    scenarios: tuple[tuple[Scenario, int], ...]  # (scenario, weight)


SOAK_LISTENERS: tuple[SoakListener, ...] = (
    SoakListener(
        "socks5",
        lambda c: ["--socks", "127.0.0.1:0", "--user", f"{USER.decode()}:{PASSWORD.decode()}"],
        ((socks5_connect, 6), (socks5_udp, 2), (abusive, 1)),
    ),
    SoakListener("http", lambda c: ["--http", "127.0.0.1:0"], ((http_connect, 2), (http_forward, 2))),
    SoakListener("mixed", lambda c: ["--mixed", "127.0.0.1:0"], ((mixed_socks5, 1), (mixed_http, 1))),
    SoakListener("forward", lambda c: ["--forward", f"127.0.0.1:0=127.0.0.1:{c.echo.port}"], ((forward_tcp, 2),)),
    SoakListener(
        "udp-forward", lambda c: ["--udp-forward", f"127.0.0.1:0=127.0.0.1:{c.udp_echo.port}"], ((udp_forward, 2),)
    ),
)


@dataclass
class SoakContext:
    echo: Address
    udp_echo: Address
    tally: Tally
    origin_port: int = 0
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)

    def addr(self, kind: str) -> tuple[str, int]:
        return self.addresses[kind]


def _available() -> list[SoakListener]:
    from gproxy.server.proxy import HANDLERS, SERVICES

    return [listener for listener in SOAK_LISTENERS if listener.kind in HANDLERS or listener.kind in SERVICES]


def test_soak(tmp_path):
    listeners = _available()
    access_log = tmp_path / "access.log"
    tally = Tally()
    with EchoServer() as echo, UdpEchoServer() as udp_echo, WsgiOrigin() as origin:
        ctx = SoakContext(Address("127.0.0.1", echo.port), Address("127.0.0.1", udp_echo.port), tally, origin.port)
        args = [arg for listener in listeners for arg in listener.args(ctx)]
        args += ["--access-log", str(access_log), "--handshake-timeout", "2", "--idle-timeout", str(IDLE)]
        with DrainedGproxy(*args, listeners=len(listeners)) as gproxy:
            pid = gproxy.proc.pid
            for kind, bound in gproxy.listening.items():
                ctx.addresses[kind] = bound[0]
            scenarios = [(s, w) for listener in listeners for s, w in listener.scenarios]
            weights = [w for _, w in scenarios]

            def worker(seed: int, until: float) -> None:
                rng = random.Random(seed)
                while time.monotonic() < until:
                    scenario = rng.choices([s for s, _ in scenarios], weights)[0]
                    try:
                        tally.bytes_verified += scenario(ctx, rng)
                        tally.sessions[scenario.__name__] += 1
                    except (AssertionError, OSError, EOFError) as exc:
                        tally.failures.append(f"{scenario.__name__}: {exc!r}")

            fds_before = fd_count(pid)
            # warm up (first sessions allocate buffers), then take the RSS baseline
            gevent.joinall([gevent.spawn(worker, 1000 + i, time.monotonic() + 1) for i in range(WORKERS)])
            rss_before = rss_kib(pid)
            rss_halfway: list[int] = []  # growth that stops by half-time is warm-up, not per session
            gevent.spawn_later(SECONDS / 2, lambda: rss_halfway.append(rss_kib(pid)))
            started = time.monotonic()
            gevent.joinall([gevent.spawn(worker, i, started + SECONDS) for i in range(WORKERS)], raise_error=True)
            elapsed = time.monotonic() - started
            deadline = time.monotonic() + IDLE * 3 + 15
            while fd_count(pid) > fds_before and time.monotonic() < deadline:
                gevent.sleep(0.2)
            fds_after, rss_after = fd_count(pid), rss_kib(pid)
            states = tcp_states(pid)
            code, stderr = gproxy.stop_and_read()
    outcomes: Counter[str] = Counter()
    bad_good = []
    for line in access_log.read_text().splitlines():
        fields = dict(pair.split("=", 1) for pair in line.split() if "=" in pair)
        outcomes[fields.get("outcome", "?")] += 1
        port = int(fields.get("client", ":0").rsplit(":", 1)[1])
        # ports are reused over a long run: one an abusive client also had is ambiguous
        if port in tally.good_ports - tally.abusive_ports and fields.get("outcome") != "ok":
            bad_good.append(line)
    print(
        f"\nsoak {elapsed:.0f}s over {sorted(ctx.addresses)}: sessions {dict(tally.sessions)}"
        f" = {sum(tally.sessions.values())}; bytes verified {tally.bytes_verified}"
        f" ({tally.datagrams_verified} datagrams); gproxy fds {fds_before} -> {fds_after};"
        f" RSS {rss_before} -> {rss_halfway[0] if rss_halfway else '?'} (half-time) -> {rss_after} KiB;"
        f" TCP states {states}; access-log outcomes {dict(outcomes)}"
    )
    assert not tally.failures, tally.failures[:10]
    assert code == 0
    assert fds_after <= fds_before
    assert states.get("CLOSE_WAIT", 0) == 0, states
    assert rss_after - rss_before < RSS_SLACK_KIB
    unexpected = [
        line
        for line in without_known_gaps(stderr).splitlines()
        if line.strip()
        and not line.startswith(("gproxy: listening ", "gproxy: draining ", "gproxy: stopped"))
        and "INFO" not in line
    ]
    assert not unexpected, "\n".join(unexpected[:60])
    assert not bad_good, bad_good[:10]
    assert sum(tally.sessions.values()) > WORKERS
