"""Chains with the HTTP front end (SOCKS5 -> HTTP -> origin, HTTP -> SOCKS5 -> origin), SOCKS4
upstreams, per-user rules over HTTP, and the HTTP proxy over TLS (curl -x https://)."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl

import pytest
import requests

from gproxy import Config, Proxy
from tests.helpers import WsgiOrigin, curl, ipv4_dest, make_cert, name_dest, recv_exact, socks5_connect

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture
def origin():
    with WsgiOrigin() as server:
        yield server


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


def hostport(running, kind):
    address = running.address(kind)
    return f"{address.host}:{address.port}"


def connect_reply_code(front, dest: bytes) -> int:
    """The reply code of a SOCKS5 CONNECT to ``dest`` (ATYP ADDR PORT) through ``front``'s SOCKS5 listener."""
    address = front.address("socks5")
    sock, reply = socks5_connect((address.host, address.port), dest)
    sock.close()
    return reply[1]


@pytest.fixture
def socks_to_http(proxy):
    """front SOCKS5 (a:1) -> HTTP gproxy (b:2) -> origin."""
    http_hop = proxy(http=["127.0.0.1:0"], user=["b:2"])
    return proxy(socks=["127.0.0.1:0"], user=["a:1"], upstream=f"http://b:2@{hostport(http_hop, 'http')}")


@pytest.fixture
def http_to_socks(proxy):
    """front HTTP (a:1) -> SOCKS5 gproxy (b:2) -> origin."""
    socks_hop = proxy(socks=["127.0.0.1:0"], user=["b:2"])
    return proxy(http=["127.0.0.1:0"], user=["a:1"], upstream=f"socks5://b:2@{hostport(socks_hop, 'socks5')}")


@needs_curl
def test_socks5_to_http_chain_with_curl(socks_to_http, origin):
    result = curl(
        "--socks5-hostname",
        hostport(socks_to_http, "socks5"),
        "--proxy-user",
        "a:1",
        f"http://localhost:{origin.port}/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"


def test_socks5_to_http_chain_with_requests(socks_to_http, origin):
    proxies = {"http": f"socks5h://a:1@{hostport(socks_to_http, 'socks5')}"}
    response = requests.get(f"http://localhost:{origin.port}/", proxies=proxies, timeout=10)
    assert response.status_code == 200 and response.content == b"hello from origin"


@needs_curl
@pytest.mark.parametrize("tunnel", [[], ["--proxytunnel"]])
def test_http_to_socks5_chain_with_curl(http_to_socks, origin, tunnel):
    result = curl("-x", f"http://a:1@{hostport(http_to_socks, 'http')}", *tunnel, f"http://localhost:{origin.port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"


def test_http_to_socks5_chain_with_requests(http_to_socks, origin):
    proxies = {"http": f"http://a:1@{hostport(http_to_socks, 'http')}"}
    response = requests.post(f"http://localhost:{origin.port}/", data=b"x" * 100000, proxies=proxies, timeout=10)
    assert response.status_code == 200 and response.content == b"x" * 100000


def test_http_upstream_denies_is_0x02(proxy, echo_tcp):
    http_hop = proxy(http=["127.0.0.1:0"], deny_dest=[f"127.0.0.1:{echo_tcp.port}"])
    front = proxy(socks=["127.0.0.1:0"], upstream=f"http://{hostport(http_hop, 'http')}")
    assert connect_reply_code(front, ipv4_dest("127.0.0.1", echo_tcp.port)) == 0x02


def test_http_upstream_with_wrong_password_is_0x01(proxy, echo_tcp):
    http_hop = proxy(http=["127.0.0.1:0"], user=["b:2"])
    front = proxy(socks=["127.0.0.1:0"], upstream=f"http://b:wrong@{hostport(http_hop, 'http')}")
    assert connect_reply_code(front, ipv4_dest("127.0.0.1", echo_tcp.port)) == 0x01


def test_http_front_with_upstream_down_is_502(proxy, closed_port, origin):
    front = proxy(http=["127.0.0.1:0"], upstream=f"socks5://127.0.0.1:{closed_port}")
    proxies = {"http": f"http://{hostport(front, 'http')}"}
    response = requests.get(f"http://localhost:{origin.port}/", proxies=proxies, timeout=10)
    assert response.status_code == 502


@pytest.mark.parametrize("scheme", ["socks4", "socks4a"])
def test_socks4_upstreams(proxy, echo_tcp, scheme):
    socks_hop = proxy(socks=["127.0.0.1:0"])  # SOCKS4 has no passwords: no users here
    front = proxy(socks=["127.0.0.1:0"], upstream=f"{scheme}://{hostport(socks_hop, 'socks5')}")
    address = front.address("socks5")
    sock, reply = socks5_connect((address.host, address.port), name_dest("localhost", echo_tcp.port))
    assert reply[1] == 0x00
    sock.sendall(b"four")
    assert recv_exact(sock, 4) == b"four"
    sock.close()


def test_socks4_upstream_rejection_is_0x01(proxy, echo_tcp):
    socks_hop = proxy(socks=["127.0.0.1:0"], deny_dest=[f"127.0.0.1:{echo_tcp.port}"])
    front = proxy(socks=["127.0.0.1:0"], upstream=f"socks4://{hostport(socks_hop, 'socks5')}")
    assert connect_reply_code(front, ipv4_dest("127.0.0.1", echo_tcp.port)) == 0x01


def test_socks4_upstream_resolves_here_and_checks_the_address(proxy, echo_tcp):
    socks_hop = proxy(socks=["127.0.0.1:0"])
    front = proxy(
        socks=["127.0.0.1:0"], deny_dest=["127.0.0.0/8"], upstream=f"socks4://{hostport(socks_hop, 'socks5')}"
    )
    # localhost resolved here, into a denied network
    assert connect_reply_code(front, name_dest("localhost", echo_tcp.port)) == 0x02


def test_per_user_rules_over_http(origin):
    users = {"alice": {"password": "a", "deny-dest": ["localhost"]}, "bob": {"password": "b"}}
    config = Config.from_settings({"http": ["127.0.0.1:0"], "handshake-timeout": 5.0}, {"users": users})
    with Proxy(config) as running:
        url = f"http://localhost:{origin.port}/"
        for user, status in (("alice:a", 403), ("bob:b", 200)):
            proxies = {"http": f"http://{user}@{hostport(running, 'http')}"}
            assert requests.get(url, proxies=proxies, timeout=10).status_code == status


# -- the HTTP proxy over TLS --------------------------------------------------------------


@pytest.fixture
def https_proxy(proxy, cert):
    return proxy(https=["127.0.0.1:0"], user=["u:p"], cert=cert[0], key=cert[1])


@needs_curl
@pytest.mark.parametrize("tunnel", [[], ["--proxytunnel"]])
def test_curl_through_https_proxy(https_proxy, cert, origin, tunnel):
    result = curl(
        "-x",
        f"https://u:p@localhost:{https_proxy.address('https').port}",
        "--proxy-cacert",
        cert[0],
        *tunnel,
        f"http://localhost:{origin.port}/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"


@needs_curl
def test_curl_refuses_an_https_proxy_it_cannot_verify(https_proxy, origin):
    result = curl(
        "-x", f"https://u:p@localhost:{https_proxy.address('https').port}", f"http://localhost:{origin.port}/"
    )
    assert result.returncode != 0


def test_connect_over_tls_from_python(https_proxy, cert, echo_tcp):
    context = ssl.create_default_context(cafile=cert[0])
    raw = socket.create_connection(("127.0.0.1", https_proxy.address("https").port), timeout=10)
    client = context.wrap_socket(raw, server_hostname="localhost")
    token = base64.b64encode(b"u:p").decode()
    client.sendall(
        f"CONNECT 127.0.0.1:{echo_tcp.port} HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic {token}\r\n\r\n".encode()
        + b"early"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += client.recv(1)
    assert head.startswith(b"HTTP/1.1 200")
    assert recv_exact(client, 5) == b"early"
    client.close()


def test_http_front_long_name_through_socks4a_upstream_is_a_clean_error(proxy):
    """A 300-byte name fits HTTP but not SOCKS4a: 502, not a traceback."""
    socks_hop = proxy(socks=["127.0.0.1:0"])
    front = proxy(http=["127.0.0.1:0"], upstream=f"socks4a://{hostport(socks_hop, 'socks5')}")
    name = ".".join(["a" * 60] * 5)
    sock = socket.create_connection(("127.0.0.1", front.address("http").port), timeout=10)
    sock.sendall(f"CONNECT {name}:80 HTTP/1.1\r\nHost: {name}:80\r\n\r\n".encode())
    assert sock.recv(100).startswith(b"HTTP/1.1 502")
    sock.close()


@needs_curl
def test_curl_https_url_through_https_proxy_tls_in_tls(https_proxy, cert):
    from gevent.pywsgi import WSGIServer

    def app(environ, start_response):
        start_response("200 OK", [("Content-Length", "12")])
        return [b"secure hello"]

    origin = WSGIServer(("127.0.0.1", 0), app, keyfile=cert[1], certfile=cert[0], log=None, error_log=None)
    origin.start()
    try:
        result = curl(
            "-x",
            f"https://u:p@localhost:{https_proxy.address('https').port}",
            "--proxy-cacert",
            cert[0],
            "--cacert",
            cert[0],
            f"https://localhost:{origin.server_port}/",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"secure hello"
    finally:
        origin.stop(timeout=1)
