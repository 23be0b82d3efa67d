"""``--max-conns`` / ``--max-conns-per-ip``: the N+1th is refused at once, the rest keep going."""

from __future__ import annotations

import socket

from tests.helpers import echo_through, ipv4_dest, metric, recv_exact, scrape_metrics, wait_for


def refused_at_once(addr: tuple[str, int], source: str = "127.0.0.1") -> bool:
    """Connect and greet; True if the server closes without answering."""
    with socket.socket() as sock:
        sock.settimeout(10)  # a queued (not refused) client would sit here until the timeout
        sock.bind((source, 0))
        sock.connect(addr)
        try:
            sock.sendall(b"\x05\x01\x00")
            return sock.recv(2) == b""
        except ConnectionResetError:
            return True


def try_tunnel(addr, echo, source="127.0.0.1"):
    """A SOCKS5 tunnel to ``echo`` (no auth), or None if the server closed on us."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(addr)
    sock.sendall(b"\x05\x01\x00\x05\x01\x00" + ipv4_dest(echo.host, echo.port))
    try:
        method = sock.recv(2)
        method += recv_exact(sock, 2 - len(method)) if method else b""
    except ConnectionResetError:
        method = b""
    if not method:
        sock.close()
        return None
    assert method == b"\x05\x00"
    assert recv_exact(sock, 10)[1] == 0
    return sock


def tunnel(addr, echo, source="127.0.0.1"):
    sock = try_tunnel(addr, echo, source)
    assert sock is not None, "refused"
    return sock


def test_max_conns_refuses_the_next_and_serves_the_rest(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], max_conns=2)
    addr = (running.address("socks5").host, running.address("socks5").port)
    first, second = tunnel(addr, echo_tcp), tunnel(addr, echo_tcp)
    assert refused_at_once(addr)
    assert echo_through(first, b"one") == b"one"
    assert echo_through(second, b"two") == b"two"
    samples = scrape_metrics(running.address("metrics").port)
    assert metric(samples, "gproxy_connections_refused_total", reason="max_conns") == 1
    first.close()
    # a slot frees once the server has seen the close
    third = wait_for(lambda: try_tunnel(addr, echo_tcp), what="a free slot")
    assert echo_through(third, b"three") == b"three"
    second.close()
    third.close()


def test_max_conns_per_ip(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], max_conns_per_ip=1)
    addr = (running.address("socks5").host, running.address("socks5").port)
    mine = tunnel(addr, echo_tcp)
    assert refused_at_once(addr)
    theirs = tunnel(addr, echo_tcp, source="127.0.0.2")  # another address is not limited by mine
    assert echo_through(theirs, b"b") == b"b"
    assert echo_through(mine, b"a") == b"a"
    mine.close()
    theirs.close()
