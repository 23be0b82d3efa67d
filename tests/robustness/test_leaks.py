"""No per-session leak: once warmed up, equal rounds of sessions leave the proxy's
live-object count where it was (a leak of even one object per session shows as
hundreds). In-process, so gc sees the proxy's own objects; bench/leak_rounds.py
does the same against a gproxy process, with RSS."""

from __future__ import annotations

import gc
import socket

from tests.helpers import echo_through, ipv4_dest, recv_all, recv_exact, socks5_connect, wait_for

SESSIONS = 60  # per kind and round: SOCKS5 CONNECT, HTTP CONNECT, forward, refused SOCKS5
#: objects a run may gain that are not per session (a cache entry, a free-list); a leak of
#: one object per session gains at least 2 rounds x 4 kinds x SESSIONS = 480
SLACK = 120


def one_round(running, echo) -> None:
    socks = running.address("socks5")
    http = running.address("http")
    forward = running.address("forward")
    for i in range(SESSIONS):
        payload = b"%d" % i
        sock, _ = socks5_connect((socks.host, socks.port), ipv4_dest(echo.host, echo.port))
        with sock:
            assert echo_through(sock, payload) == payload
        with socket.create_connection((http.host, http.port), timeout=10) as sock:
            sock.sendall(b"CONNECT %s:%d HTTP/1.1\r\nHost: x\r\n\r\n" % (echo.host.encode(), echo.port))
            assert recv_exact(sock, 39) == b"HTTP/1.1 200 Connection established\r\n\r\n"
            assert echo_through(sock, payload) == payload
        with socket.create_connection((forward.host, forward.port), timeout=10) as sock:
            assert echo_through(sock, payload) == payload
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
        with socket.create_connection((socks.host, socks.port), timeout=10) as sock:
            sock.sendall(b"\x05\x01\x02")  # only user/password offered: refused with 05 FF
            assert recv_all(sock) == b"\x05\xff"
    wait_for(lambda: running._active == 0 and not running.tunnels and not running._sessions)


def live_objects() -> int:
    gc.collect()
    return len(gc.get_objects())


def test_rounds_of_sessions_leave_no_objects_behind(proxy, echo_tcp, tmp_path):
    running = proxy(
        socks=["127.0.0.1:0"],
        http=["127.0.0.1:0"],
        forward=[f"127.0.0.1:0={echo_tcp.host}:{echo_tcp.port}"],
        access_log=str(tmp_path / "access.log"),
    )
    one_round(running, echo_tcp)  # warm-up: imports, caches, buffers, free lists
    before = live_objects()
    one_round(running, echo_tcp)
    one_round(running, echo_tcp)
    after = live_objects()
    assert after - before < SLACK, (before, after)
    assert not running._active_by_ip
