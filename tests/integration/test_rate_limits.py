"""``--rate``: each user (or client IP) held to RATE each way over all of their tunnels and
datagrams, per-user ``rate`` overriding it (0: no limit), through SOCKS5, HTTP CONNECT and
an HTTPS listener; applied to new tunnels after a reload.

Times are checked against the rate with wide margins. At RATE with a fresh one-second
burst, N bytes take at least (N - RATE) / RATE seconds.
"""

from __future__ import annotations

import base64
import socket
import ssl
import struct
import time
from dataclasses import replace

import gevent
import pytest
from gevent.server import StreamServer

from gproxy.core.config import Config
from gproxy.server.proxy import Proxy
from tests.helpers import (
    WsgiOrigin,
    ipv4_dest,
    make_cert,
    metric,
    recv_exact,
    scrape_metrics,
    socks5_connect,
    socks5_handshake,
    socks5_udp_datagram,
)

RATE = 512 * 1024
MIB = 1 << 20
BLOCK = b"b" * 65536


class Bulk:
    """A TCP server: ``D`` + size sends that many bytes and closes; ``U`` + size reads
    that many and answers ``ok``."""

    def __init__(self) -> None:
        self.server = StreamServer(("127.0.0.1", 0), self._handle)
        self.server.start()
        self.port = int(self.server.address[1])

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        sock.settimeout(30)
        kind, size = struct.unpack("!cQ", recv_exact(sock, 9))
        if kind == b"D":
            while size:
                chunk = BLOCK[: min(size, len(BLOCK))]
                sock.sendall(chunk)
                size -= len(chunk)
        else:
            while size:
                data = sock.recv(min(size, 1 << 18))
                if not data:
                    return
                size -= len(data)
            sock.sendall(b"ok")
        sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.server.stop(timeout=1)


@pytest.fixture
def bulk():
    server = Bulk()
    yield server
    server.close()


@pytest.fixture
def start():
    """``start(settings, users_tables)`` -> a started Proxy; stopped after the test."""
    started = []

    def factory(settings, users=None):
        settings = {"handshake-timeout": 5.0, "connect-timeout": 5.0, **settings}
        running = Proxy(Config.from_settings(settings, {"users": users} if users else None)).start()
        started.append(running)
        return running

    yield factory
    for running in started:
        running.stop(0)


def download(sock, size):
    """Ask the Bulk server for ``size`` bytes; returns (bytes received, seconds)."""
    started = time.monotonic()
    with sock:
        sock.settimeout(30)
        sock.sendall(struct.pack("!cQ", b"D", size))
        got = 0
        while chunk := sock.recv(1 << 18):
            got += len(chunk)
    return got, time.monotonic() - started


def upload(sock, size):
    """Send ``size`` bytes to the Bulk server in big writes; returns (bytes acknowledged, seconds)."""
    started = time.monotonic()
    with sock:
        sock.settimeout(30)
        sock.sendall(struct.pack("!cQ", b"U", size))
        left = size
        while left:
            chunk = BLOCK[: min(left, len(BLOCK))]
            sock.sendall(chunk)
            left -= len(chunk)
        answer = sock.recv(2)
    return (size if answer == b"ok" else 0), time.monotonic() - started


def socks(running, bulk, user=None, source="127.0.0.1"):
    address = running.address("socks5")
    if source != "127.0.0.1":
        sock = socket.socket()
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect((address.host, address.port))
        sock.sendall(b"\x05\x01\x00\x05\x01\x00" + ipv4_dest("127.0.0.1", bulk.port))
        assert recv_exact(sock, 2) == b"\x05\x00"
        assert recv_exact(sock, 10)[1] == 0
        return sock
    auth = None if user is None else (user.encode(), b"pw-" + user.encode())
    sock, reply = socks5_connect((address.host, address.port), ipv4_dest("127.0.0.1", bulk.port), auth=auth)
    assert reply[1] == 0
    return sock


def connect_over(sock, bulk, user):
    """HTTP CONNECT on an open (plain or TLS) socket to the proxy."""
    credentials = base64.b64encode(f"{user}:pw-{user}".encode()).decode()
    sock.sendall(
        f"CONNECT 127.0.0.1:{bulk.port} HTTP/1.1\r\nHost: 127.0.0.1:{bulk.port}\r\n"
        f"Proxy-Authorization: Basic {credentials}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 4096:
        data = sock.recv(1)
        assert data, "the proxy closed before answering CONNECT"
        head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def in_parallel(*jobs):
    """Run (function, args...) jobs at once; their results, each (bytes, seconds)."""
    greenlets = [gevent.spawn(*job) for job in jobs]
    gevent.joinall(greenlets, timeout=40, raise_error=True)
    assert all(g.ready() for g in greenlets), "transfers did not finish in 40 s"
    return [g.value for g in greenlets]


def users_settings(*names, **extra):
    return {"socks": ["127.0.0.1:0"], "user": [f"{name}:pw-{name}" for name in names], "rate": "512k", **extra}


def test_socks5_each_direction_is_held_to_the_rate(start, bulk):
    running = start(users_settings("alice"))
    size = 2 * MIB  # a second's burst, then 3 s at the rate, each way
    (up, up_took), (down, down_took) = in_parallel(
        (upload, socks(running, bulk, "alice"), size), (download, socks(running, bulk, "alice"), size)
    )
    assert (up, down) == (size, size)
    assert 2.5 < up_took < 10, up_took
    assert 2.5 < down_took < 10, down_took


def test_http_connect_and_https_listener_are_held_to_the_rate(start, bulk, tmp_path):
    cert, key = make_cert(tmp_path)
    running = start(users_settings("alice", "bob", http=["127.0.0.1:0"], https=["127.0.0.1:0"], cert=cert, key=key))
    http, https = running.address("http"), running.address("https")
    plain = connect_over(socket.create_connection((http.host, http.port), timeout=10), bulk, "alice")
    context = ssl.create_default_context(cafile=cert)
    raw = socket.create_connection((https.host, https.port), timeout=10)
    tls = connect_over(context.wrap_socket(raw, server_hostname="localhost"), bulk, "bob")  # the greenlet engine
    size = 2 * MIB
    (got_plain, plain_took), (got_tls, tls_took) = in_parallel((download, plain, size), (download, tls, size))
    assert (got_plain, got_tls) == (size, size)
    assert 2.5 < plain_took < 10, plain_took
    assert 2.5 < tls_took < 10, tls_took


def test_one_users_tunnels_share_the_rate_and_other_users_have_their_own(start, bulk):
    users = {"zoe": {"rate": 0}, "carol": {"rate": "256k"}}
    running = start(users_settings("alice", "bob", "zoe", "carol"), users)
    results = in_parallel(
        (download, socks(running, bulk, "alice"), MIB),  # alice's two: 2 MiB at 512k, ~3 s together
        (download, socks(running, bulk, "alice"), MIB),
        (download, socks(running, bulk, "bob"), MIB),  # bob's own 512k: ~1 s
        (download, socks(running, bulk, "zoe"), 8 * MIB),  # rate = 0: no limit (15 s at 512k)
        (download, socks(running, bulk, "carol"), MIB),  # her own 256k: ~3 s (~1 s at 512k)
    )
    assert [got for got, _ in results] == [MIB, MIB, MIB, 8 * MIB, MIB]
    alice, bob, zoe, carol = max(results[0][1], results[1][1]), results[2][1], results[3][1], results[4][1]
    assert 2.5 < alice < 10, alice
    assert bob < 4, bob  # sharing alice's bucket would take ~5 s
    assert zoe < 5, zoe
    assert 2.5 < carol < 10, carol


def test_without_users_the_limit_is_per_client_ip(start, bulk):
    running = start({"socks": ["127.0.0.1:0"], "rate": RATE})  # a number works as well as "512k"
    results = in_parallel(
        (download, socks(running, bulk), MIB),
        (download, socks(running, bulk), MIB),
        (download, socks(running, bulk, source="127.0.0.2"), MIB),
    )
    assert [got for got, _ in results] == [MIB, MIB, MIB]
    assert 2.5 < max(results[0][1], results[1][1]) < 10, results
    assert results[2][1] < 4, results  # its own bucket: ~1 s


def test_a_reload_applies_the_new_rate_to_new_tunnels(start, bulk):
    running = start(users_settings("alice", rate="0"))
    got, took = download(socks(running, bulk, "alice"), 4 * MIB)
    assert got == 4 * MIB
    assert running.reload(replace(running.config, rate=2 * MIB))
    got, took = download(socks(running, bulk, "alice"), 4 * MIB)  # a second's burst, then 1 s at 2M
    assert got == 4 * MIB
    assert 0.7 < took < 8, took


def test_udp_datagrams_over_the_rate_are_dropped(start, echo_udp):
    running = start({"socks": ["127.0.0.1:0"], "metrics": ["127.0.0.1:0"], "rate": "64k"})
    address = running.address("socks5")
    control = socket.create_connection((address.host, address.port), timeout=5)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        relay = socks5_handshake(control, 3, "0.0.0.0", 0)
        udp.bind(("127.0.0.1", 0))
        payload = b"u" * 2000
        for number in range(100):  # 200 kB in 0.2 s: the burst (64 KiB) and 13 kB more let ~38 through
            udp.sendto(socks5_udp_datagram("127.0.0.1", echo_udp.port, payload), relay)
            if number % 10 == 9:
                gevent.sleep(0.02)  # no loss in the kernel's buffers before the relay reads
        udp.settimeout(1)
        echoed = 0
        for _ in range(100):
            try:
                udp.recvfrom(4096)
            except TimeoutError:
                break
            echoed += 1
        assert 20 <= echoed <= 60, echoed
        samples = scrape_metrics(running.address("metrics").port)
        dropped = metric(samples, "gproxy_udp_dropped_total", listener="socks5", direction="up", reason="rate")
        assert dropped + echoed >= 90  # (nearly) every datagram is either relayed or dropped for the rate
        assert dropped >= 40
    finally:
        udp.close()
        control.close()


def test_forwarded_http_requests_are_held_to_the_rate(start):
    """Absolute-URI requests move at the user's rate too, both ways (the buckets their tunnels use)."""
    size = 2 * MIB
    with WsgiOrigin(body=b"d" * size) as origin:
        running = start({"http": ["127.0.0.1:0"], "rate": "512k", "user": ["alice:pw"]})
        proxy_port = running.address("http").port
        auth = base64.b64encode(b"alice:pw").decode()
        # GET: 2 MiB down; POST: 2 MiB up, then echoed back (2 MiB down): at 512 KiB/s with a
        # one-second burst each way, at least 3 s and 6 s, with room for a loaded machine
        for method, body, bounds in (("GET", b"", (2.5, 10)), ("POST", b"u" * size, (5, 20))):
            with socket.create_connection(("127.0.0.1", proxy_port), timeout=30) as client:
                head = (
                    f"{method} http://127.0.0.1:{origin.port}/ HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n"
                    f"Proxy-Authorization: Basic {auth}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                )
                started = time.monotonic()
                client.sendall(head.encode() + body)
                received = 0
                while chunk := client.recv(65536):
                    received += len(chunk)
                took = time.monotonic() - started
            assert received > size
            assert bounds[0] < took < bounds[1], (method, took)
