"""Slow and abusive clients: slowloris handshakes, clients that never read,
and hundreds of connections that never finish their handshake."""

from __future__ import annotations

import dataclasses
import os
import socket
import time
from pathlib import Path

import gevent
import pytest

from gproxy.core.addr import Address
from tests.helpers import EchoServer, GproxyProcess
from tests.robustness.live import (
    PROBES,
    Destination,
    fd_count,
    good_session,
    greenlet_count,
    rss_kib,
    settle,
    steady,
)

HANDSHAKE_TIMEOUT = 2.0
SLACK = 8.0


def _handshake_probe(probe):  # type: ignore[no-untyped-def]
    if probe.fixed_target:
        pytest.skip(f"{probe.kind} has no handshake")


def trickle(address: tuple[str, int], payload: bytes, interval: float, delay: float = 0.0) -> tuple[float | None, int]:
    """Send ``payload`` one byte per ``interval`` after ``delay``, watching for the
    server's close after each byte; returns (seconds until closed or None, bytes sent)."""
    sock = socket.create_connection(address, timeout=30)
    started = time.monotonic()
    sent = 0
    try:
        gevent.sleep(delay)
        for byte in payload:
            sock.sendall(bytes([byte]))
            sent += 1
            gevent.sleep(interval)
            sock.setblocking(False)
            try:
                while True:
                    data = sock.recv(4096)
                    if not data:
                        return time.monotonic() - started, sent
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    except OSError:
        return time.monotonic() - started, sent
    finally:
        sock.close()
    return None, sent


def test_one_byte_at_a_time_is_dropped_at_the_handshake_timeout(probe, sandbox, echo_tcp):
    """A valid handshake sent one byte at a time, slowly enough to take twice the
    timeout: the server drops it before it is complete."""
    _handshake_probe(probe)
    running = sandbox(probe, handshake_timeout=HANDSHAKE_TIMEOUT)
    bound = running.address(probe.kind)
    payload = probe.handshake(Address("127.0.0.1", echo_tcp.port))
    interval = HANDSHAKE_TIMEOUT * 2 / len(payload)  # the whole handshake would take 2 x the timeout
    closed_after, sent = trickle((bound.host, bound.port), payload, interval)
    assert closed_after is not None, "the trickled handshake was never dropped"
    assert sent < len(payload)


def test_late_first_byte_does_not_restart_the_handshake_clock(probe, sandbox, echo_tcp):
    """The handshake timeout bounds the whole handshake: a client that sends its
    first byte just before the deadline and trickles the rest is dropped at the
    deadline, not given a fresh timeout after that first byte."""
    _handshake_probe(probe)
    running = sandbox(probe, handshake_timeout=HANDSHAKE_TIMEOUT)
    bound = running.address(probe.kind)
    payload = probe.handshake(Address("127.0.0.1", echo_tcp.port))
    closed_after, sent = trickle((bound.host, bound.port), payload, HANDSHAKE_TIMEOUT / 8, HANDSHAKE_TIMEOUT * 0.75)
    assert closed_after is not None, "the trickled handshake was never dropped"
    # dropped near 1 x HANDSHAKE_TIMEOUT; a clock restarted by the first byte drops it near 1.75 x
    assert closed_after < HANDSHAKE_TIMEOUT * 1.4, (closed_after, sent)


def test_hundreds_of_unfinished_handshakes_do_not_exhaust_the_server(probe, sandbox, echo_tcp):
    """300 clients connect and send part of a handshake, or nothing: good clients
    are served meanwhile, all 300 are dropped at the timeout, nothing leaks."""
    _handshake_probe(probe)
    dest = Address("127.0.0.1", echo_tcp.port)
    running = sandbox(probe, handshake_timeout=HANDSHAKE_TIMEOUT)
    bound = running.address(probe.kind)
    address = (bound.host, bound.port)
    good_session(address, probe, dest, b"warm-up")
    fds, greenlets = steady(fd_count), steady(greenlet_count)
    payload = probe.handshake(dest)
    stalled = []
    for i in range(300):
        sock = socket.create_connection(address, timeout=30)
        sock.sendall(payload[: i % (len(payload) - 1)])
        stalled.append(sock)
    for i in range(10):
        good_session(address, probe, dest, os.urandom(100 + i))
    for sock in stalled:
        sock.settimeout(HANDSHAKE_TIMEOUT + SLACK)
        try:
            while sock.recv(4096):
                pass  # an error reply, then EOF
        except ConnectionResetError:
            pass
        sock.close()
    assert settle(fd_count, fds) <= fds
    assert settle(greenlet_count, greenlets) <= greenlets


def kernel_buffering() -> int:
    """The most one relayed connection's bytes can sit in kernel buffers, from the sysctls."""
    rmem = int(Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2])
    wmem = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    return rmem + 2 * wmem + 4 * 2**20  # + the relay's pipe or chunk, and slack


def _count_bytes(counter: list[int]):  # type: ignore[no-untyped-def]
    def behave(sock: socket.socket) -> None:
        chunk = b"x" * 65536
        sock.settimeout(60)
        while True:
            sock.sendall(chunk)
            counter[0] += len(chunk)

    return behave


def test_client_that_never_reads_is_throttled_by_backpressure():
    """20 clients ask a fast destination for data and never read: the relay
    stops reading from the destination once the client's socket is full, so
    what the destination gets to send stays bounded, and the proxy's RSS too."""
    sent = [0]
    with (
        Destination(_count_bytes(sent)) as dest,
        GproxyProcess("--socks", "127.0.0.1:0", "--idle-timeout", "60", "-q") as gproxy,
    ):
        pid = gproxy.proc.pid
        port = gproxy.port("socks5")
        with EchoServer() as echo:  # warm the relay's buffers first
            no_auth = dataclasses.replace(PROBES[0], auth=False)
            good_session(("127.0.0.1", port), no_auth, Address("127.0.0.1", echo.port), b"x" * 100_000)
        rss_before = rss_kib(pid)
        clients = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(b"\x05\x01\x00\x05\x01\x00" + b"\x01\x7f\x00\x00\x01" + dest.address.port.to_bytes(2, "big"))
            clients.append(sock)
        # wait until the destination cannot send any more (bounded)
        last, deadline = -1, time.monotonic() + 30
        while sent[0] != last and time.monotonic() < deadline:
            last = sent[0]
            gevent.sleep(0.5)
        assert sent[0] == last, "the destination never stopped sending: no backpressure"
        rss_after = rss_kib(pid)
        print(
            f"never-reading clients: destination sent {sent[0] / 2**20:.1f} MiB in all;",
            f"proxy RSS {rss_before} -> {rss_after} KiB",
        )
        # per client: what the kernel may buffer (the proxy's receive buffer, both send
        # buffers, a splice pipe); never the stream. The proxy itself holds next to nothing.
        assert sent[0] < 20 * kernel_buffering()
        assert rss_after - rss_before < 64 * 1024
        for sock in clients:
            sock.close()


def test_a_client_trickling_past_the_deadline_is_closed_soon_after_it(probe, sandbox, echo_tcp):
    """A client that goes on sending a byte every 0.1 s after the handshake timeout
    (ignoring the server's FIN) is closed within the polite drain's half second, not
    kept for as many drain reads as it can feed (16 x 0.5 s)."""
    _handshake_probe(probe)
    running = sandbox(probe, handshake_timeout=HANDSHAKE_TIMEOUT)
    bound = running.address(probe.kind)
    payload = probe.handshake(Address("127.0.0.1", echo_tcp.port))[:-1]  # never complete
    sock = socket.create_connection((bound.host, bound.port), timeout=30)
    started = time.monotonic()
    try:
        sock.sendall(payload[:1])
        gevent.sleep(HANDSHAKE_TIMEOUT - 0.3)
        with pytest.raises(OSError):  # the server's RST, once it has closed
            for byte in (payload[1:] + bytes(200))[:200]:
                sock.sendall(bytes([byte]))
                gevent.sleep(0.1)
        closed_after = time.monotonic() - started
    finally:
        sock.close()
    assert closed_after < HANDSHAKE_TIMEOUT + 1.5, closed_after
