"""One --mixed port: SOCKS5, SOCKS4/4a and HTTP told apart by the first byte."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import requests
import socks

from tests.helpers import GproxyProcess, RecordingOrigin, recv_all, recv_exact


@pytest.fixture
def origin():
    with RecordingOrigin() as server:
        yield server


def test_every_protocol_on_one_mixed_port(proxy, origin, echo_tcp):
    address = proxy(mixed=["127.0.0.1:0"]).address("mixed")
    for kind in (socks.SOCKS5, socks.SOCKS4):
        client = socks.socksocket()
        client.set_proxy(kind, address.host, address.port)
        client.settimeout(10)
        client.connect(("127.0.0.1", echo_tcp.port))
        client.sendall(b"ping")
        assert recv_exact(client, 4) == b"ping"
        client.close()
    proxies = {"http": f"http://{address.host}:{address.port}"}
    assert requests.get(origin.url("/via-http"), proxies=proxies, timeout=10).content == b"hello from origin"
    assert origin.requests[-1]["path"] == "/via-http"


def test_mixed_with_users_asks_each_protocol_for_them(proxy, origin):
    address = proxy(mixed=["127.0.0.1:0"], user=["u:p"]).address("mixed")
    url = origin.url()
    assert requests.get(url, proxies={"http": f"http://{address.host}:{address.port}"}, timeout=10).status_code == 407
    ok = requests.get(url, proxies={"http": f"http://u:p@{address.host}:{address.port}"}, timeout=10)
    assert ok.content == b"hello from origin"
    socks5h = requests.get(url, proxies={"http": f"socks5h://u:p@{address.host}:{address.port}"}, timeout=10)
    assert socks5h.content == b"hello from origin"
    sock = socket.create_connection((address.host, address.port), timeout=10)
    with sock:
        sock.sendall(b"\x04\x01" + origin.port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + b"u\0")
        assert recv_all(sock) == b"\x00\x5b" + b"\0" * 6  # SOCKS4 has no password: refused


def test_junk_first_byte_gets_an_http_400(proxy):
    address = proxy(mixed=["127.0.0.1:0"]).address("mixed")
    sock = socket.create_connection((address.host, address.port), timeout=10)
    with sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize("listener", ["mixed", "http"])
def test_a_tls_client_hello_gets_its_400_at_once(proxy, listener):
    """A ClientHello has no line end: it is refused on its first byte, not after the
    --handshake-timeout (60 s here) a request line would get."""
    address = proxy(**{listener: ["127.0.0.1:0"]}, handshake_timeout=60).address(listener)
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)))
        assert recv_all(sock).startswith(b"HTTP/1.1 400 ")  # within the socket's 10 s timeout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_cli_mixed_port_with_curl(origin):
    with GproxyProcess("--mixed", "0") as gproxy:
        port = gproxy.port("mixed")
        for args in (
            ["--socks5-hostname", f"127.0.0.1:{port}"],
            ["-x", f"socks4a://127.0.0.1:{port}"],
            ["-x", f"http://127.0.0.1:{port}"],
            ["-p", "-x", f"http://127.0.0.1:{port}"],
        ):
            result = subprocess.run(
                ["curl", "-sS", "--max-time", "10", *args, origin.url("/", "localhost")],
                capture_output=True,
                timeout=20,
            )
            assert result.returncode == 0, (args, result.stderr)
            assert result.stdout == b"hello from origin"
        assert gproxy.stop() == 0
