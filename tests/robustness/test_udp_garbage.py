"""Malformed datagrams on a SOCKS5 UDP association and a --udp-forward
listener are dropped one at a time: the association keeps relaying, and
nothing leaks once it ends. Fuzzed destinations never leave loopback."""

from __future__ import annotations

import ipaddress
import random
import socket

import gevent

from gproxy.codec import socks5
from gproxy.core.errors import ClientProtocolError
from tests.helpers import UdpEchoServer, parse_socks5_udp_datagram, socks5_handshake, socks5_udp_datagram
from tests.robustness.live import fd_count, greenlet_count, sandbox_proxy, settle, steady

COUNT = 3000


def _loopback_only(datagram: bytes) -> bytes:
    """Point any datagram that parses at a loopback address (never the internet)."""
    try:
        header, _ = socks5.parse_udp_header(datagram)
    except ClientProtocolError:
        return datagram
    try:
        ip = ipaddress.ip_address(header.address.host)
    except ValueError:
        return datagram  # a name: the sandbox resolver knows none but echo.test
    if ip.is_loopback:
        return datagram
    return socks5_udp_datagram("127.0.0.1", header.address.port, b"fuzz")


def garbage_datagrams(echo_port: int, count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    valid = [
        socks5_udp_datagram("127.0.0.1", echo_port, b"ping"),
        socks5_udp_datagram("echo.test", echo_port, b"ping"),
        socks5_udp_datagram("::1", echo_port, b"ping"),
    ]
    out = []
    for i in range(count):
        base = bytearray(rng.choice(valid))
        kind = i % 5
        if kind == 0:
            data = rng.randbytes(rng.randint(0, 300))
        elif kind == 1:
            data = bytes(base[: rng.randint(0, len(base) - 1)])
        elif kind == 2:
            base[rng.randrange(len(base))] = rng.randrange(256)
            data = bytes(base)
        elif kind == 3:
            base[2] = rng.randint(1, 255)  # a fragment
            data = bytes(base)
        else:
            data = b"\0\0\0\x03" + bytes([rng.randrange(256)]) + rng.randbytes(rng.randint(0, 260))
        out.append(_loopback_only(data))
    return out


def _still_alive(client: socket.socket, relay: tuple[str, int], echo_port: int) -> bool:
    client.settimeout(0.5)
    for _ in range(20):
        client.sendto(socks5_udp_datagram("127.0.0.1", echo_port, b"still alive"), relay)
        try:
            for _ in range(COUNT):
                source, payload = parse_socks5_udp_datagram(client.recvfrom(65535)[0])
                if payload == b"still alive":
                    return source == ("127.0.0.1", echo_port)
        except TimeoutError:
            continue
    return False


def test_udp_association_survives_garbage_datagrams():
    with UdpEchoServer() as echo:
        running = sandbox_proxy(socks=["127.0.0.1:0"])
        try:
            bound = running.address("socks5")
            fds, greenlets = steady(fd_count), steady(greenlet_count)
            for round_ in range(2):
                control = socket.create_connection((bound.host, bound.port), timeout=10)
                relay = socks5_handshake(control, 3, "0.0.0.0", 0)
                client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                client.bind(("127.0.0.1", 0))
                client.settimeout(5)
                for n, datagram in enumerate(garbage_datagrams(echo.port, COUNT, seed=round_)):
                    client.sendto(datagram, relay)
                    if n % 200 == 0:
                        gevent.sleep(0)  # let the relay drain its socket buffer
                # the association still relays: a valid datagram is answered (UDP may
                # drop it while the relay's buffer is full: retry; skip echoed garbage)
                assert _still_alive(client, relay, echo.port)
                control.close()
                client.close()
            assert settle(fd_count, fds) <= fds
            assert settle(greenlet_count, greenlets) <= greenlets
        finally:
            running.stop(0)


def test_udp_forward_many_clients_then_idle_expiry():
    """Datagrams from hundreds of client ports: one mapping each, all expire,
    and fds come back (each mapping holds a socket)."""
    with UdpEchoServer() as echo:
        running = sandbox_proxy(udp_forward=[f"127.0.0.1:0=127.0.0.1:{echo.port}"], idle_timeout=0.5)
        try:
            bound = running.address("udp-forward")
            fds = steady(fd_count)
            for batch in range(3):  # batches of 100 stay within the listener's socket buffer
                clients = []
                for i in range(100):
                    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    sock.bind(("127.0.0.1", 0))
                    sock.settimeout(0.5)
                    sock.sendto(b"hello %d" % i, (bound.host, bound.port))
                    clients.append(sock)
                for i, sock in enumerate(clients):
                    for _ in range(10):  # UDP may still drop: clients resend
                        try:
                            assert sock.recvfrom(65535)[0] == b"hello %d" % i
                            break
                        except TimeoutError:
                            sock.sendto(b"hello %d" % i, (bound.host, bound.port))
                    else:
                        raise AssertionError(f"client {batch}/{i} got no answer")
                    sock.close()
            assert settle(fd_count, fds) <= fds
        finally:
            running.stop(0)
