"""--proxy-protocol: the header's client address drives --allow, limits and the access log."""

import contextlib
import socket
import time

import pytest

from gproxy.codec.proxy_protocol import encode_v1, encode_v2
from gproxy.core.addr import Address
from tests.helpers import access_lines, metric, recv_all, recv_exact, scrape_metrics

GREETING = b"\x05\x01\x00"
ENCODERS = {"v1": encode_v1, "v2": encode_v2}


def connect_request(echo) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton(echo.host) + echo.port.to_bytes(2, "big")


def open_tunnel(address: Address, header: bytes, echo, *, split: bool = False) -> socket.socket:
    """Header, greeting and CONNECT pipelined (or byte by byte); returns the open tunnel."""
    sock = socket.create_connection((address.host, address.port), timeout=5)
    data = header + GREETING + connect_request(echo)
    if split:
        for i in range(len(data)):
            sock.sendall(data[i : i + 1])
    else:
        sock.sendall(data)
    assert recv_exact(sock, 2) == b"\x05\x00"
    assert recv_exact(sock, 10)[:2] == b"\x05\x00"
    return sock


def assert_closed_without_reply(address: Address, data: bytes, *, eof: bool = False) -> None:
    """EOF, or a reset when gproxy closed with the client's bytes unread: no reply either way."""
    with socket.create_connection((address.host, address.port), timeout=5) as sock:
        sock.sendall(data)
        if eof:
            sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            assert recv_all(sock) == b""


def lines_once(path, want: int) -> list[str]:
    """The access log's lines, once it has at least ``want`` of them (bounded poll)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = access_lines(path)
        if len(lines) >= want:
            return lines
        time.sleep(0.02)
    raise AssertionError(f"access log has {len(lines)} lines, wanted {want}")


#: --proxy-protocol exposes even a loopback listener: tests name their clients and local destinations
ANYONE = ["0.0.0.0/0", "::/0"]


def pp_socks(proxy, allow: list[str], **settings):
    """A loopback SOCKS listener that reads PROXY headers, for clients in ``allow`` to loopback destinations."""
    return proxy(socks=["127.0.0.1:0"], proxy_protocol=True, allow_dest=["127.0.0.0/8"], allow=allow, **settings)


@pytest.fixture
def pp_proxy(proxy, tmp_path):
    """A SOCKS listener behind a (pretend) load balancer, allowing only 10.0.0.0/8."""
    log = tmp_path / "access.log"
    return pp_socks(proxy, ["10.0.0.0/8"], access_log=str(log)).address("socks5"), log


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_address_is_allowed(pp_proxy, echo_tcp, version):
    address, log = pp_proxy
    header = ENCODERS[version](Address("10.1.2.3", 40000), Address("203.0.113.5", 1080))
    sock = open_tunnel(address, header, echo_tcp)
    sock.sendall(b"through")
    assert recv_exact(sock, 7) == b"through"
    sock.close()
    (line,) = lines_once(log, 1)
    assert "client=10.1.2.3:40000 " in line
    assert line.endswith("outcome=ok")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_header_address_is_denied(pp_proxy, echo_tcp, version):
    """The socket's peer (127.0.0.1) does not matter: the carried address is refused."""
    address, _ = pp_proxy
    header = ENCODERS[version](Address("192.0.2.9", 40000), Address("203.0.113.5", 1080))
    assert_closed_without_reply(address, header + GREETING)
    assert echo_tcp.connections == 0


def test_ipv6_client_in_header(proxy, echo_tcp):
    running = pp_socks(proxy, ["2001:db8::/32"])
    header = encode_v2(Address("2001:db8::5", 1), Address("2001:db8::1", 1080))
    open_tunnel(running.address("socks5"), header, echo_tcp).close()
    outsider = encode_v2(Address("2001:db9::5", 1), Address("2001:db8::1", 1080))
    assert_closed_without_reply(running.address("socks5"), outsider + GREETING)


def test_header_split_byte_by_byte(pp_proxy, echo_tcp):
    address, _ = pp_proxy
    for encode in ENCODERS.values():
        header = encode(Address("10.9.9.9", 1234), Address("10.0.0.1", 1080))
        open_tunnel(address, header, echo_tcp, split=True).close()


@pytest.mark.parametrize(
    "data",
    [
        GREETING + b"\x01\x02",  # a SOCKS client that skipped the load balancer
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n",  # bare LF
        b"PROXY " + b"9" * 200,  # no end within 107 bytes
        b"",  # connects and closes
    ],
)
def test_missing_or_bad_header_is_closed(pp_proxy, data):
    address, log = pp_proxy
    assert_closed_without_reply(address, data, eof=not data)
    (line,) = lines_once(log, 1)
    assert "client=127.0.0.1:" in line
    assert line.endswith("outcome=proxy_protocol")


def test_missing_or_bad_headers_are_counted_as_their_access_lines_say(proxy, tmp_path):
    """Each connection dropped for its header is an accepted connection and a session ended
    ``proxy_protocol`` in the metrics too; they counted nothing while the access log had a line each."""
    log = tmp_path / "access.log"
    running = pp_socks(proxy, ANYONE, metrics=["127.0.0.1:0"], access_log=str(log), handshake_timeout=0.3)
    address = running.address("socks5")
    assert_closed_without_reply(address, GREETING + b"\x01\x02")  # a bad header
    assert_closed_without_reply(address, b"", eof=True)  # none at all
    assert_closed_without_reply(address, b"PROXY TCP4 ")  # never finished
    lines_once(log, 3)
    samples = scrape_metrics(running.address("metrics").port, before=b"PROXY UNKNOWN\r\n")
    assert metric(samples, "gproxy_connections_accepted_total") == 3  # the scrape is not one
    assert metric(samples, "gproxy_connections_active", listener="socks5") == 0
    assert metric(samples, "gproxy_sessions_total", listener="socks5", outcome="proxy_protocol") == 3
    assert metric(samples, "gproxy_handshake_failures_total", reason="proxy_protocol") == 3


def test_slow_header_is_dropped_at_the_handshake_timeout(proxy):
    running = pp_socks(proxy, ANYONE, handshake_timeout=0.3)
    address = running.address("socks5")
    with socket.create_connection((address.host, address.port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 ")  # and never the rest
        assert recv_all(sock) == b""


def test_slow_header_is_logged_with_the_time_it_took(proxy, tmp_path):
    """The access line of a connection dropped for its header counts from the accept, not the drop."""
    log = tmp_path / "access.log"
    running = pp_socks(proxy, ANYONE, handshake_timeout=0.5, access_log=str(log))
    address = running.address("socks5")
    with socket.create_connection((address.host, address.port), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 ")  # and never the rest
        assert recv_all(sock) == b""
    (line,) = lines_once(log, 1)
    assert line.endswith("outcome=proxy_protocol")
    assert float(line.split(" dur=")[1].split()[0]) >= 0.4


def test_local_command_keeps_the_peer_address(proxy, echo_tcp, tmp_path):
    """Health checks (v2 LOCAL, v1 UNKNOWN) are judged by the balancer's own address."""
    log = tmp_path / "access.log"
    running = pp_socks(proxy, ["127.0.0.1/32"], access_log=str(log))
    for header in (encode_v2(None, None), encode_v1(None, None)):
        open_tunnel(running.address("socks5"), header, echo_tcp).close()
    assert all("client=127.0.0.1:" in line for line in lines_once(log, 2))


def test_per_ip_limit_counts_the_carried_address(proxy, echo_tcp):
    running = pp_socks(proxy, ANYONE, max_conns_per_ip=1)
    address, lb = running.address("socks5"), Address("10.0.0.1", 1080)
    first = open_tunnel(address, encode_v1(Address("10.0.0.7", 1), lb), echo_tcp)
    assert_closed_without_reply(address, encode_v1(Address("10.0.0.7", 2), lb) + GREETING)
    other = open_tunnel(address, encode_v1(Address("10.0.0.8", 1), lb), echo_tcp)
    first.close()
    other.close()


def test_forward_listener_strips_the_header(proxy, echo_tcp, tmp_path):
    """Every TCP listener reads the header: the forward target never sees it."""
    log = tmp_path / "access.log"
    running = proxy(
        forward=[f"127.0.0.1:0={echo_tcp.host}:{echo_tcp.port}"],
        proxy_protocol=True,
        allow=["10.0.0.0/8"],
        access_log=str(log),
    )
    address = running.address("forward")
    with socket.create_connection((address.host, address.port), timeout=5) as sock:
        sock.sendall(encode_v1(Address("10.4.4.4", 999), Address("10.0.0.1", 80)) + b"payload")
        assert recv_exact(sock, 7) == b"payload"
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    assert "client=10.4.4.4:999 " in lines_once(log, 1)[0]
    assert_closed_without_reply(address, encode_v1(Address("192.0.2.1", 1), Address("10.0.0.1", 80)) + b"x")


def test_header_counts_against_the_handshake_timeout(proxy, echo_tcp):
    """One clock from accept: a header sent late, then a slow handshake, is dropped
    at the handshake timeout, not given a fresh timeout after the header."""
    timeout = 1.0
    running = pp_socks(proxy, ANYONE, handshake_timeout=timeout)
    address = running.address("socks5")
    header = encode_v1(Address("10.1.2.3", 40000), Address("127.0.0.1", address.port))
    sock = socket.create_connection((address.host, address.port), timeout=10)
    with sock:
        started = time.monotonic()
        time.sleep(timeout * 0.75)
        sock.sendall(header + b"\x05")  # the header, and the first byte of a greeting
        sock.settimeout(timeout * 3)
        closed = sock.recv(16) == b""
        elapsed = time.monotonic() - started
    assert closed
    # dropped near 1 x timeout; a clock restarted after the header drops it near 1.75 x
    assert elapsed < timeout * 1.4, elapsed
