"""--socks-tls and --https: TLS listeners, a bounded handshake, certificate errors."""

from __future__ import annotations

import contextlib
import socket
import ssl

import gevent
import pytest

from tests.helpers import (
    BannerServer,
    ipv4_dest,
    make_cert,
    metric,
    read_socks5_reply,
    recv_all,
    recv_exact,
    run_gproxy,
    scrape_metrics,
    wait_for,
)


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


def tls_client(cert_file: str, address: tuple[str, int]) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=cert_file)
    raw = socket.create_connection(address, timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost", suppress_ragged_eofs=False)


def socks5_over(sock: socket.socket, dest: bytes, auth: tuple[bytes, bytes]) -> bytes:
    user, password = auth
    sock.sendall(b"\x05\x01\x02")
    assert recv_exact(sock, 2) == b"\x05\x02"
    sock.sendall(bytes([1, len(user)]) + user + bytes([len(password)]) + password)
    assert recv_exact(sock, 2) == b"\x01\x00"
    sock.sendall(b"\x05\x01\x00" + dest)
    return read_socks5_reply(sock)


@pytest.fixture
def tls_proxy(proxy, cert):
    running = proxy(socks_tls=["127.0.0.1:0"], user=["u:p"], cert=cert[0], key=cert[1], handshake_timeout=1)
    address = running.address("socks5-tls")
    return address.host, address.port


def test_socks5_over_tls_round_trip(tls_proxy, cert, echo_tcp):
    client = tls_client(cert[0], tls_proxy)
    reply = socks5_over(client, ipv4_dest("127.0.0.1", echo_tcp.port), (b"u", b"p"))
    assert reply[1] == 0x00
    payload = bytes(range(256)) * 1024
    sender = gevent.spawn(client.sendall, payload)
    assert recv_exact(client, len(payload)) == payload
    sender.get(timeout=10)
    client.close()


def test_origin_closing_ends_the_tls_tunnel_cleanly(tls_proxy, cert):
    """No TLS half-close: when the destination closes, the client sees the end of the stream."""

    with BannerServer(b"220 hello\r\n") as server:
        with tls_client(cert[0], tls_proxy) as client:
            assert socks5_over(client, ipv4_dest("127.0.0.1", server.port), (b"u", b"p"))[1] == 0x00
            try:
                data = recv_all(client)
            except ssl.SSLError:  # an EOF without close_notify would show up here
                pytest.fail("no close_notify")
        assert data == b"220 hello\r\n"


def test_plain_socks_on_a_tls_port_is_dropped(tls_proxy):
    sock = socket.create_connection(tls_proxy, timeout=10)
    sock.sendall(b"\x05\x01\x00")
    assert recv_all(sock)[:1] != b"\x05"  # a TLS alert or nothing, never a SOCKS answer
    sock.close()


def test_a_failed_tls_handshake_counts_as_a_handshake_failure(proxy, cert):
    running = proxy(https=["127.0.0.1:0"], cert=cert[0], key=cert[1], metrics=["127.0.0.1:0"])
    address = running.address("https")
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")  # plain HTTP
        with contextlib.suppress(ConnectionResetError):
            recv_all(sock)

    def ended():
        samples = scrape_metrics(running.address("metrics").port)
        return samples if metric(samples, "gproxy_sessions_total", outcome="tls_failed") else None

    samples = wait_for(ended, what="the failed session")
    assert metric(samples, "gproxy_handshake_failures_total", reason="tls_failed") == 1


def test_silent_client_does_not_block_the_accept_loop(tls_proxy, cert, echo_tcp):
    silent = socket.create_connection(tls_proxy, timeout=10)  # never starts TLS
    client = tls_client(cert[0], tls_proxy)  # is still served meanwhile
    assert socks5_over(client, ipv4_dest("127.0.0.1", echo_tcp.port), (b"u", b"p"))[1] == 0x00
    client.close()
    assert silent.recv(1) == b""  # dropped after --handshake-timeout
    silent.close()


@pytest.mark.parametrize("which", ["cert", "key"])
def test_missing_certificate_files_exit_2(tmp_path, cert, which):
    files = {"cert": cert[0], "key": cert[1], which: str(tmp_path / "nope.pem")}
    result = run_gproxy("--socks-tls", "0", "--user", "u:p", "--cert", files["cert"], "--key", files["key"])
    assert result.returncode == 2
    assert "nope.pem" in result.stderr and "Traceback" not in result.stderr


def test_tls_listener_needs_cert_and_key():
    result = run_gproxy("--socks-tls", "0", "--user", "u:p")
    assert result.returncode == 2 and "--cert" in result.stderr
