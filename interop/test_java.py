"""JVM clients through gproxy: java.net.Proxy (Socket, HttpURLConnection) and OkHttp.

interop/java/InteropClient.java explains the JVM quirks it handles; here every
SOCKS case also checks that gproxy logged ``proto=socks5`` (the JDK silently
falls back to SOCKS4 when the greeting reply is not SOCKS5), and every case
checks that gproxy logged the session at all (no loopback bypass).
"""

from __future__ import annotations

from pathlib import Path

from interop.conftest import JARS
from interop.origins import Origins, describe
from interop.support import (
    BAD_PASSWORD,
    PASSWORD,
    USER,
    Gproxy,
    Proxies,
    Target,
    case,
    need_tool,
    payload,
    run,
    run_failing,
    token,
)


def java(build: Path, mode: str, proxy: Gproxy, *args: str, password: str = PASSWORD) -> list[str]:
    cmd = [need_tool("java"), "-cp", ":".join([str(build), *JARS]), "InteropClient", mode, "--proxy", proxy.hostport]
    if proxy.auth:
        cmd += ["--user", f"{USER}:{password}"]
    return cmd + list(args)


def parse(out: str) -> dict[str, str]:
    """``KEY value`` lines printed by InteropClient."""
    return dict(line.partition(" ")[::2] for line in out.splitlines() if line)


def check_auth_calls(result: dict[str, str], proxy: Gproxy) -> None:
    """With auth on, the client's authenticator must actually have been asked (and only then)."""
    calls = int(result["AUTH-CALLS"])
    assert (calls >= 1) if proxy.auth else (calls == 0), result


def http_case(
    build: Path,
    mode: str,
    proxy: Gproxy,
    origins: Origins,
    dest: Target,
    *,
    tls: bool = False,
    data: str | None = None,
    proto: str | None = None,
) -> None:
    """GET (or POST ``data``) through ``proxy``; the origin's answer must come back intact."""
    path = f"/java/{token()}"
    port = origins.https.port if tls else origins.http.port
    url = f"{'https' if tls else 'http'}://{dest.hostport(port)}{path}"
    extra = ["--url", url, "--cert", str(origins.cert)]
    if data is not None:
        extra += ["--data", data]
    with proxy.session(port, proto=proto):
        result = parse(run(java(build, mode, proxy, *extra)))
    body = (data or "").encode()
    assert result["STATUS"] == "200", result
    assert result["BODY"] == describe("POST" if data else "GET", path, body, proxy_auth_seen=False, tls=tls)
    check_auth_calls(result, proxy)


@case("java Socket(Proxy SOCKS)")
def test_java_socket(dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path) -> None:
    proxy = proxies.get("socks5", auth == "auth")
    data = payload(20_000).decode()
    with proxy.session(origins.echo.port, proto="socks5"):
        out = run(java(java_build, "socks-socket", proxy, "--dest", dest.hostport(origins.echo.port), "--data", data))
    result = parse(out)
    assert result["ECHO"] == data
    check_auth_calls(result, proxy)


@case("java Socket(Proxy SOCKS)", "v4", auths=("wrong-pw",))
def test_java_socket_wrong_password(
    dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path
) -> None:
    proxy = proxies.get("socks5", True)
    code, out, err = run_failing(
        java(java_build, "socks-socket", proxy, "--dest", dest.hostport(origins.echo.port), "--data", "x",
             password=BAD_PASSWORD)
    )  # fmt: skip
    assert code != 0 and "ECHO" not in out, (code, out, err)
    assert "authentication failed" in err, err


@case("java HttpURLConnection SOCKS")
def test_java_urlconnection_socks(
    dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path
) -> None:
    http_case(java_build, "socks-urlconnection", proxies.get("socks5", auth == "auth"), origins, dest, proto="socks5")


@case("java HttpURLConnection HTTP CONNECT https")
def test_java_urlconnection_http_connect(
    dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path
) -> None:
    http_case(java_build, "http-urlconnection", proxies.get("http", auth == "auth"), origins, dest, tls=True)


@case("okhttp HTTP proxy GET")
def test_okhttp_http_get(dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path) -> None:
    http_case(java_build, "okhttp-http", proxies.get("http", auth == "auth"), origins, dest)


@case("okhttp HTTP proxy POST")
def test_okhttp_http_post(dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path) -> None:
    http_case(java_build, "okhttp-http", proxies.get("http", auth == "auth"), origins, dest, data=f"post {token()}")


@case(
    "okhttp HTTP proxy CONNECT https",
    client_bugs={"v6": "OkHttp 3.13 compares IPv6 SANs as text (0:0:0:0:0:0:0:1 != ::1): hostname not verified"},
)
def test_okhttp_http_connect(dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path) -> None:
    http_case(java_build, "okhttp-http", proxies.get("http", auth == "auth"), origins, dest, tls=True)


@case("okhttp HTTP proxy GET", "v4", auths=("wrong-pw",))
def test_okhttp_http_wrong_password(
    dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path
) -> None:
    """The authenticator answers the 407 once; gproxy's second 407 must reach the caller."""
    proxy = proxies.get("http", True)
    url = f"http://{dest.hostport(origins.http.port)}/java/{token()}"
    result = parse(run(java(java_build, "okhttp-http", proxy, "--url", url, password=BAD_PASSWORD)))
    assert result["STATUS"] == "407", result
    assert result["AUTH-CALLS"] == "1", result


@case("okhttp SOCKS proxy")
def test_okhttp_socks(dest: Target, auth: str, proxies: Proxies, origins: Origins, java_build: Path) -> None:
    http_case(java_build, "okhttp-socks", proxies.get("socks5", auth == "auth"), origins, dest, proto="socks5")
