"""Python clients through gproxy: PySocks (TCP, SOCKS4/4a, UDP), requests, httpx, python-socks."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable

import pytest

from interop.origins import Origins, describe
from interop.support import BAD_PASSWORD, PASSWORD, USER, Gproxy, Proxies, Target, case, need_module, payload, token


def password(auth: str) -> str:
    return BAD_PASSWORD if auth == "wrong-pw" else PASSWORD


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def echo_round_trip(sock: socket.socket, data: bytes) -> None:
    sock.settimeout(30)
    sock.sendall(data)
    sock.shutdown(socket.SHUT_WR)
    assert recv_all(sock) == data


def expected(method: str, path: str, body: bytes = b"", tls: bool = False) -> str:
    return describe(method, path, body, proxy_auth_seen=False, tls=tls)


def check_get(
    get: Callable[..., tuple[int, str, dict[str, str]]],
    proxy: Gproxy,
    scheme: str,
    dest: Target,
    origins: Origins,
    *,
    tls: bool = False,
    verify: str | bool | ssl.SSLContext = True,
) -> None:
    """GET a fresh path of the HTTP origin (the HTTPS one with ``tls``, checked with ``verify``)
    with ``get`` through ``proxy`` as ``scheme://``: gproxy logs the session, the origin answers."""
    port = origins.https.port if tls else origins.http.port
    path = f"/get/{token()}"
    url = f"{'https' if tls else 'http'}://{dest.hostport(port)}{path}"
    with proxy.session(port, proto="socks5" if proxy.kind == "socks5" else None):
        status, text, _ = get(proxy.url(scheme), url, verify=verify)
    assert status == 200
    assert text.strip() == expected("GET", path, tls=tls)


# -- PySocks --------------------------------------------------------------------------------


@case("pysocks socks5")
def test_pysocks_socks5(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    socks = need_module("socks", "PySocks")
    proxy = proxies.get("socks5", auth == "auth")
    with proxy.session(origins.echo.port, proto="socks5"), socks.socksocket() as sock:
        sock.set_proxy(socks.SOCKS5, proxy.host, proxy.port, rdns=True, username=proxy.user, password=proxy.password)
        sock.connect((dest.host, origins.echo.port))
        echo_round_trip(sock, payload())


@case("pysocks socks5", "v4", auths=("wrong-pw",))
def test_pysocks_socks5_wrong_password(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    socks = need_module("socks", "PySocks")
    proxy = proxies.get("socks5", True)
    with socks.socksocket() as sock, pytest.raises(socks.ProxyError, match="SOCKS5 authentication failed"):
        sock.set_proxy(socks.SOCKS5, proxy.host, proxy.port, username=USER, password=BAD_PASSWORD)
        sock.connect((dest.host, origins.echo.port))


@case("pysocks socks4/4a", "v4 name")
def test_pysocks_socks4(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    """No auth: SOCKS4 (IPv4) and SOCKS4a (name). With users configured SOCKS4 must be refused (0x5B)."""
    socks = need_module("socks", "PySocks")
    proxy = proxies.get("socks5", auth == "auth")
    with socks.socksocket() as sock:
        sock.set_proxy(socks.SOCKS4, proxy.host, proxy.port, rdns=True, username="ident")
        if auth == "auth":
            with pytest.raises(socks.ProxyError, match="0x5[bB]"):
                sock.connect((dest.host, origins.echo.port))
            return
        with proxy.session(origins.echo.port, proto="socks4a" if dest.label == "name" else "socks4"):
            sock.connect((dest.host, origins.echo.port))
            echo_round_trip(sock, payload())
            sock.close()


@case("pysocks udp")
def test_pysocks_udp(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    """UDP ASSOCIATE; the reply header must carry the origin's real address."""
    socks = need_module("socks", "PySocks")
    proxy = proxies.get("socks5", auth == "auth")
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.set_proxy(socks.SOCKS5, proxy.host, proxy.port, rdns=True, username=proxy.user, password=proxy.password)
        sock.bind(("127.0.0.1", 0))  # PySocks would bind all interfaces
        local_port = sock.getsockname()[1]
        with proxy.session(local_port, proto="socks5"):
            sock.settimeout(3)
            data = payload(1200)
            for _ in range(5):  # UDP: a bounded number of tries
                sock.sendto(data, (dest.host, origins.udp.port))
                try:
                    received, (host, port) = sock.recvfrom(65535)
                    break
                except TimeoutError:
                    continue
            else:
                pytest.fail("no UDP echo through gproxy after 5 tries")
            assert received == data
            assert (host, port) in (("127.0.0.1", origins.udp.port), ("::1", origins.udp.port))
            if dest.label != "name":
                assert host == dest.host
            sock.close()
    finally:
        sock.close()


# -- requests ---------------------------------------------------------------------------------


def requests_get(proxy_url: str, url: str, verify: str | bool = True) -> tuple[int, str, dict[str, str]]:
    """(status, text, headers); the connection is really closed on return."""
    requests = need_module("requests", "requests[socks]")
    with requests.Session() as session:
        session.trust_env = False  # only our proxy, whatever the environment says
        session.proxies = {"http": proxy_url, "https": proxy_url}
        response = session.get(url, timeout=30, verify=verify)
        result = response.status_code, response.text, dict(response.headers)
        response.close()  # drops the socket's file object, so the pool's close() really closes it
        return result


@case("requests socks5://")
def test_requests_socks5(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    check_get(requests_get, proxies.get("socks5", auth == "auth"), "socks5", dest, origins)


@case("requests socks5h://")
def test_requests_socks5h(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    check_get(requests_get, proxies.get("socks5", auth == "auth"), "socks5h", dest, origins)


@case("requests socks5h://", "v4", auths=("wrong-pw",))
def test_requests_socks5h_wrong_password(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    requests = need_module("requests", "requests[socks]")
    proxy = proxies.get("socks5", True)
    with pytest.raises(requests.exceptions.ConnectionError, match="authentication failed"):
        requests_get(proxy.url("socks5h", BAD_PASSWORD), f"http://{dest.hostport(origins.http.port)}/")


@case("requests http://")
def test_requests_http(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    """Absolute-URI GET; the origin must not see Proxy-Authorization."""
    check_get(requests_get, proxies.get("http", auth == "auth"), "http", dest, origins)


@case("requests http:// CONNECT https")
def test_requests_http_connect(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("http", auth == "auth")
    check_get(requests_get, proxy, "http", dest, origins, tls=True, verify=str(origins.cert))


@case("requests http://", "v4", auths=("wrong-pw",))
def test_requests_http_wrong_password(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("http", True)
    status, _, headers = requests_get(proxy.url("http", BAD_PASSWORD), f"http://{dest.hostport(origins.http.port)}/")
    assert status == 407
    assert headers.get("Proxy-Authenticate") == 'Basic realm="gproxy"'


# -- httpx ----------------------------------------------------------------------------------


def httpx_get(proxy_url: str, url: str, verify: ssl.SSLContext | bool = True) -> tuple[int, str, dict[str, str]]:
    httpx = need_module("httpx", "httpx[socks]")
    with httpx.Client(proxy=proxy_url, trust_env=False, verify=verify, timeout=30) as client:
        response = client.get(url)
        return response.status_code, response.text, dict(response.headers)


@case("httpx socks5://")
def test_httpx_socks5(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    need_module("socksio", "httpx[socks]")
    check_get(httpx_get, proxies.get("socks5", auth == "auth"), "socks5", dest, origins)


# httpx 0.28 sends GET http://::1:PORT/ unbracketed; gproxy accepts that
@case("httpx http://")
def test_httpx_http(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    check_get(httpx_get, proxies.get("http", auth == "auth"), "http", dest, origins)


@case("httpx http:// CONNECT https")  # httpx 0.28 sends CONNECT ::1:PORT unbracketed; gproxy accepts that
def test_httpx_http_connect(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    context = ssl.create_default_context(cafile=str(origins.cert))
    check_get(httpx_get, proxies.get("http", auth == "auth"), "http", dest, origins, tls=True, verify=context)


# -- python-socks -----------------------------------------------------------------------------


def python_socks_connect(proxy_url: str, dest: Target, port: int) -> socket.socket:
    sync = need_module("python_socks.sync", "python-socks")
    return sync.Proxy.from_url(proxy_url, rdns=True).connect(dest_host=dest.host, dest_port=port, timeout=30)


@case("python-socks socks5")
def test_python_socks_socks5(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", auth == "auth")
    with (
        proxy.session(origins.echo.port, proto="socks5"),
        python_socks_connect(proxy.url("socks5"), dest, origins.echo.port) as sock,
    ):
        echo_round_trip(sock, payload())


@case("python-socks socks4a", "v4 name", auths=("noauth",))
def test_python_socks_socks4(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", False)
    with (
        proxy.session(origins.echo.port, proto="socks4a" if dest.label == "name" else "socks4"),
        python_socks_connect(proxy.url("socks4"), dest, origins.echo.port) as sock,
    ):
        echo_round_trip(sock, payload())


@case("python-socks http CONNECT")
def test_python_socks_http(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("http", auth == "auth")
    with proxy.session(origins.echo.port), python_socks_connect(proxy.url("http"), dest, origins.echo.port) as sock:
        echo_round_trip(sock, payload())
