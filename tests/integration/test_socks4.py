"""SOCKS4 and SOCKS4a end to end: curl, PySocks and raw bytes on the --socks port."""

from __future__ import annotations

import shutil
import socket

import pytest
import socks

from tests.helpers import RecordingOrigin, curl, pysocks_echo, recv_all, recv_exact

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def socks_addr(proxy):
    address = proxy(socks=["127.0.0.1:0"]).address("socks5")
    return address.host, address.port


@pytest.fixture
def origin():
    with RecordingOrigin() as server:
        yield server


def request4(port: int, ip: str, userid: bytes = b"") -> bytes:
    return b"\x04\x01" + port.to_bytes(2, "big") + socket.inet_aton(ip) + userid + b"\0"


def request4a(port: int, name: str, userid: bytes = b"") -> bytes:
    return b"\x04\x01" + port.to_bytes(2, "big") + b"\0\0\0\x01" + userid + b"\0" + name.encode() + b"\0"


def ask(address, raw: bytes) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(raw)
    return sock, recv_exact(sock, 8)


@needs_curl
@pytest.mark.parametrize("scheme", ["socks4", "socks4a"])
def test_curl(socks_addr, origin, scheme):
    result = curl("-x", f"{scheme}://{socks_addr[0]}:{socks_addr[1]}", origin.url("/", "localhost"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"


@needs_curl
def test_curl_socks4_flag(socks_addr, origin):
    result = curl("--socks4", f"{socks_addr[0]}:{socks_addr[1]}", origin.url())
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"


@pytest.mark.parametrize("rdns", [False, True], ids=["socks4", "socks4a"])
def test_pysocks(socks_addr, echo_tcp, rdns):
    dest = ("localhost" if rdns else "127.0.0.1", echo_tcp.port)
    pysocks_echo(socks.SOCKS4, socks_addr, dest, b"four", rdns=rdns, username="someone")


def test_granted_reply_carries_the_bound_address_and_early_bytes_are_relayed(socks_addr, echo_tcp):
    sock, reply = ask(socks_addr, request4a(echo_tcp.port, "localhost", b"user") + b"early")
    with sock:
        assert reply[:2] == b"\x00\x5a"
        assert socket.inet_ntoa(reply[4:8]) == "127.0.0.1" and int.from_bytes(reply[2:4], "big") != 0
        assert recv_exact(sock, 5) == b"early"


def test_request_split_byte_by_byte(socks_addr, echo_tcp):
    import gevent

    sock = socket.create_connection(socks_addr, timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with sock:
        for byte in request4a(echo_tcp.port, "localhost", b"id"):
            sock.sendall(bytes([byte]))
            gevent.sleep(0.001)
        assert recv_exact(sock, 8)[:2] == b"\x00\x5a"


def rejected(address, raw: bytes) -> bool:
    sock, reply = ask(address, raw)
    with sock:
        closed = recv_all(sock) == b""
    return reply == b"\x00\x5b" + b"\0" * 6 and closed


def test_failures_are_0x5b_and_close(socks_addr, closed_port):
    assert rejected(socks_addr, request4(closed_port, "127.0.0.1"))  # refused
    assert rejected(socks_addr, request4(0, "127.0.0.1"))  # port 0
    assert rejected(socks_addr, request4(socks_addr[1], "127.0.0.1"))  # itself
    assert rejected(socks_addr, b"\x04\x09" + request4(80, "127.0.0.1")[2:])  # unknown command
    assert rejected(socks_addr, b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300)  # USERID over the cap
    assert rejected(socks_addr, b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00")  # empty 4a hostname


def test_name_that_does_not_resolve_is_0x5b():
    from gproxy import Config, Proxy

    def no_such_name(host, port):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    running = Proxy(Config.build(socks=["127.0.0.1:0"]), resolver=no_such_name).start()
    try:
        address = running.address("socks5")
        assert rejected((address.host, address.port), request4a(80, "nowhere.test"))
    finally:
        running.stop(0)


def test_refused_when_users_are_configured(proxy, echo_tcp):
    address = proxy(socks=["127.0.0.1:0"], user=["u:p"]).address("socks5")
    assert rejected((address.host, address.port), request4(echo_tcp.port, "127.0.0.1", b"u"))
    assert echo_tcp.connections == 0


# -- BIND ---------------------------------------------------------------------------


def bind_request(ip: str, port: int = 0) -> bytes:
    return b"\x04\x02" + request4(port, ip)[2:]


def test_bind_announces_both_addresses_and_relays(socks_addr):
    sock, first = ask(socks_addr, bind_request("127.0.0.1"))
    with sock:
        assert first[:2] == b"\x00\x5a"
        listen = (socket.inet_ntoa(first[4:8]), int.from_bytes(first[2:4], "big"))
        assert listen[0] == "127.0.0.1" and listen[1] != 0
        # a peer from another address than DSTIP is turned away; the right one is taken
        stranger = socket.socket()
        stranger.bind(("127.0.0.2", 0))
        stranger.settimeout(10)
        stranger.connect(listen)
        assert recv_all(stranger) == b""
        stranger.close()
        peer = socket.create_connection(listen, timeout=10)
        with peer:
            second = recv_exact(sock, 8)
            assert second[:2] == b"\x00\x5a"
            assert (socket.inet_ntoa(second[4:8]), int.from_bytes(second[2:4], "big")) == peer.getsockname()
            peer.sendall(b"from peer")
            assert recv_exact(sock, 9) == b"from peer"
            sock.sendall(b"to peer")
            assert recv_exact(peer, 7) == b"to peer"


def test_bind_with_nobody_connecting_is_0x5b(proxy):
    address = proxy(socks=["127.0.0.1:0"], connect_timeout=0.3).address("socks5")
    sock, first = ask((address.host, address.port), bind_request("127.0.0.1"))
    with sock:
        assert first[:2] == b"\x00\x5a"
        assert recv_all(sock) == b"\x00\x5b" + b"\0" * 6
