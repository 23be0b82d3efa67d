"""Destination names end to end: a denied name stays denied in every spelling the resolver
folds to it (SOCKS5, SOCKS4a, UDP datagrams, BIND), and a malformed name is answered
"host unreachable" without a traceback on gproxy's stderr."""

from __future__ import annotations

import socket
import struct

import pytest

from tests.helpers import (
    GproxyProcess,
    read_socks5_bound,
    read_socks5_reply,
    recv_all,
    recv_exact,
    socks5_udp_datagram,
)

BIND, UDP_ASSOCIATE = 2, 3
#: "localhost" as clients may spell it: full-width, U+017F (folds to s), Unicode full stops, upper case
SPELLINGS = ["ｌｏｃａｌｈｏｓｔ", "LOCALHOſT", "localhost\u3002", "localhost\uff0e", "localhost\uff61", "LocalHost"]
BAD_NAMES = ["a" * 64 + ".example", "a..example", ".example", "x.\u00ad.example"]


def domain(name: str, port: int) -> bytes:
    """ATYP 3, LEN, the name's UTF-8 bytes, PORT."""
    raw = name.encode()
    return bytes((3, len(raw))) + raw + struct.pack("!H", port)


def socks5_request(address: tuple[str, int], command: int, dest: bytes) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(address, timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert recv_exact(sock, 2) == b"\x05\x00"
    sock.sendall(bytes((5, command, 0)) + dest)
    return sock, read_socks5_reply(sock)


@pytest.fixture
def denying_proxy(proxy):
    """A loopback SOCKS listener (loopback destinations open) that denies the name localhost."""

    def start(**settings):
        address = proxy(socks=["127.0.0.1:0"], deny_dest=["localhost"], **settings).address("socks5")
        return address.host, address.port

    return start


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_socks5_connect_to_a_denied_name_in_any_spelling_is_refused(denying_proxy, echo_tcp, spelling):
    address = denying_proxy()
    sock, reply = socks5_request(address, 1, domain(spelling, echo_tcp.port))
    sock.close()
    assert reply[1] == 0x02
    sock, reply = socks5_request(address, 1, domain("127.0.0.1", echo_tcp.port))  # the rule is the name's only
    sock.close()
    assert reply[1] == 0x00


@pytest.mark.parametrize("spelling", ["LOCALHOST", "localhost."])
def test_socks4a_connect_to_a_denied_name_is_refused(denying_proxy, echo_tcp, spelling):
    with socket.create_connection(denying_proxy(), timeout=5) as sock:
        port = struct.pack("!H", echo_tcp.port)
        sock.sendall(b"\x04\x01" + port + b"\x00\x00\x00\x01\x00" + spelling.encode() + b"\x00")
        assert recv_exact(sock, 8)[1] == 0x5B


def test_udp_datagram_to_a_denied_name_in_any_spelling_is_dropped(denying_proxy, echo_udp_localhost):
    echo_udp = echo_udp_localhost  # on 127.0.0.1 and ::1: "localhost" reaches it in either family
    control, reply = socks5_request(denying_proxy(), UDP_ASSOCIATE, domain("0.0.0.0", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert reply[1] == 0x00
        relay = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        for spelling in SPELLINGS:
            header = b"\x00\x00\x00" + domain(spelling, echo_udp.port)
            udp.sendto(header + b"denied", relay)
        udp.sendto(socks5_udp_datagram("127.0.0.1", echo_udp.port, b"allowed"), relay)
        datagram, _ = udp.recvfrom(1000)
        assert datagram.endswith(b"allowed")
        assert echo_udp.received == [b"allowed"]  # handled in order: the denied ones were dropped before it
    finally:
        udp.close()
        control.close()


@pytest.mark.parametrize("spelling", ["localhost", "ＬＯＣＡＬＨＯＳＴ"])
def test_bind_port_0_applies_the_name_rules_to_the_peer(denying_proxy, spelling):
    control, reply = socks5_request(denying_proxy(connect_timeout=1), BIND, domain(spelling, 0))
    try:
        assert reply[1] == 0x00
        bound = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        with socket.create_connection(bound, timeout=5) as peer:  # from 127.0.0.1: localhost, denied
            assert recv_all(peer) == b""
        with pytest.raises(ConnectionError) as failure:
            read_socks5_bound(control)
        assert failure.value.args[0] == 0x06  # no acceptable peer before the timeout
    finally:
        control.close()


def test_bind_port_0_to_an_allowed_name_still_accepts_its_peer(proxy):
    address = proxy(socks=["127.0.0.1:0"], deny_dest=["other.example"]).address("socks5")
    control, reply = socks5_request((address.host, address.port), BIND, domain("LOCALHOST", 0))
    try:
        bound = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
        with socket.create_connection(bound, timeout=5) as peer:
            assert read_socks5_bound(control) == peer.getsockname()
    finally:
        control.close()


def test_bad_names_get_host_unreachable_and_no_traceback(echo_tcp):
    """A subprocess gproxy at the default log level: every bad name is answered, stderr stays clean."""
    with GproxyProcess("--socks", "127.0.0.1:0", "--http", "127.0.0.1:0", listeners=2) as gproxy:
        socks_address = ("127.0.0.1", gproxy.port("socks5"))
        for name in BAD_NAMES:
            sock, reply = socks5_request(socks_address, 1, domain(name, echo_tcp.port))
            sock.close()
            assert reply[1] == 0x04, name
            with socket.create_connection(("127.0.0.1", gproxy.port("http")), timeout=5) as sock:
                target = f"{name}:{echo_tcp.port}".encode("ascii", "replace")
                sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
                status = recv_all(sock).split(b"\r\n", 1)[0]
            assert status.split()[1] in (b"400", b"502"), (name, status)
        sock, reply = socks5_request(socks_address, 1, domain("localhost", echo_tcp.port))  # still serving
        sock.close()
        assert reply[1] == 0x00
        gproxy.proc.terminate()
        assert gproxy.proc.stderr is not None
        stderr = "".join(gproxy.stderr_lines) + gproxy.proc.stderr.read().decode()
        assert gproxy.proc.wait(15) == 0
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
