"""``--metrics``: /metrics counters match the traffic a test sent."""

from __future__ import annotations

import socket

from tests.helpers import echo_through, ipv4_dest, metric, recv_all, scrape_metrics, socks5_connect, wait_for

AUTH = (b"u", b"p")


def test_counters_match_traffic(proxy, echo_tcp, closed_port):
    running = proxy(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], user=["u:p"])
    socks_addr = (running.address("socks5").host, running.address("socks5").port)
    metrics_port = running.address("metrics").port

    sizes = [100, 2000, 70000]
    for size in sizes:
        sock, reply = socks5_connect(socks_addr, ipv4_dest(echo_tcp.host, echo_tcp.port), auth=AUTH)
        assert reply[1] == 0
        assert echo_through(sock, b"x" * size) == b"x" * size
        sock.close()
    held, reply = socks5_connect(socks_addr, ipv4_dest(echo_tcp.host, echo_tcp.port), auth=AUTH)
    assert reply[1] == 0
    # one dial failure (refused), one bad password, one handshake failure
    sock, reply = socks5_connect(socks_addr, ipv4_dest("127.0.0.1", closed_port), auth=AUTH)
    assert reply[1] == 5
    sock.close()
    with socket.create_connection(socks_addr, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x02\x01\x01u\x05wrong")
        assert recv_all(sock) == b"\x05\x02\x01\x01"
    with socket.create_connection(socks_addr, timeout=10) as sock:
        sock.sendall(b"\x07junk")
        assert recv_all(sock) == b""

    def finished():
        samples = scrape_metrics(metrics_port)
        return samples if metric(samples, "gproxy_sessions_total") >= 6 else None

    samples = wait_for(finished, what="six finished sessions")
    assert metric(samples, "gproxy_connections_accepted_total", listener="socks5") == 7
    assert metric(samples, "gproxy_connections_active", listener="socks5") == 1  # the held tunnel
    assert metric(samples, "gproxy_sessions_total", outcome="ok", proto="socks5") == 3
    assert metric(samples, "gproxy_bytes_up_total", listener="socks5") == sum(sizes)
    assert metric(samples, "gproxy_bytes_down_total", listener="socks5") == sum(sizes)
    assert metric(samples, "gproxy_dial_failures_total", reply="connection_refused") == 1
    assert metric(samples, "gproxy_auth_failures_total", reason="auth_failed") == 1
    assert metric(samples, "gproxy_handshake_failures_total", reason="bad_version") == 1

    assert echo_through(held, b"still here") == b"still here"
    held.close()
    wait_for(lambda: metric(scrape_metrics(metrics_port), "gproxy_connections_active") == 0, what="active to drop")


def test_only_metrics_path_is_served(proxy):
    running = proxy(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"])
    port = running.address("metrics").port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 404")
    samples = scrape_metrics(port)
    assert ("gproxy_worker_restarts_total", frozenset()) in samples


def test_udp_datagrams_are_counted(proxy, echo_udp):
    running = proxy(udp_forward=[f"127.0.0.1:0={echo_udp.host}:{echo_udp.port}"], metrics=["127.0.0.1:0"])
    relay = running.address("udp-forward")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for n in range(3):
            client.sendto(b"d%d" % n, (relay.host, relay.port))
            assert client.recvfrom(100)[0] == b"d%d" % n
    samples = scrape_metrics(running.address("metrics").port)
    assert metric(samples, "gproxy_udp_datagrams_total", listener="udp-forward", direction="up") == 3
    assert metric(samples, "gproxy_udp_datagrams_total", listener="udp-forward", direction="down") == 3
