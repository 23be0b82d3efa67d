"""Shell clients through gproxy: curl, proxychains4 running curl, ncat."""

from __future__ import annotations

from pathlib import Path

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

CURL_OPTS = ("-sS", "--max-time", "30", "--connect-timeout", "10")


def expected(method: str, path: str, body: bytes = b"", tls: bool = False) -> str:
    return describe(method, path, body, proxy_auth_seen=False, tls=tls)


def curl(*args: str) -> str:
    return run([need_tool("curl"), *CURL_OPTS, *args]).strip()


def proxy_user(proxy: Gproxy, password: str = PASSWORD) -> list[str]:
    return ["--proxy-user", f"{USER}:{password}"] if proxy.auth else []


# -- curl ----------------------------------------------------------------------------------


def curl_get(proxy: Gproxy, port: int, flags: list[str], dest: Target, *, https: bool = False) -> None:
    path = f"/curl/{token()}"
    scheme = "https" if https else "http"
    with proxy.session(port):
        body = curl(*flags, f"{scheme}://{dest.hostport(port)}{path}")
    assert body == expected("GET", path, tls=https)


@case("curl --socks4", "v4 name", auths=("noauth",))
def test_curl_socks4(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", False)
    curl_get(proxy, origins.http.port, ["--socks4", proxy.hostport], dest)


@case("curl --socks4a", "v4 name", auths=("noauth",))
def test_curl_socks4a(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", False)
    curl_get(proxy, origins.http.port, ["--socks4a", proxy.hostport], dest)


@case("curl --socks5")
def test_curl_socks5(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", auth == "auth")
    curl_get(proxy, origins.http.port, ["--socks5", proxy.hostport, *proxy_user(proxy)], dest)


@case("curl --socks5-hostname")
def test_curl_socks5_hostname(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", auth == "auth")
    curl_get(proxy, origins.http.port, ["--socks5-hostname", proxy.hostport, *proxy_user(proxy)], dest)


@case("curl --socks5-hostname", "v4", auths=("wrong-pw",))
def test_curl_socks5_wrong_password(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", True)
    flags = ["--socks5-hostname", proxy.hostport, *proxy_user(proxy, BAD_PASSWORD)]
    code, _, err = run_failing([need_tool("curl"), *CURL_OPTS, *flags, f"http://{dest.hostport(origins.http.port)}/"])
    assert code == 97, err  # CURLE_PROXY: the SOCKS5 server refused the user
    assert "rejected" in err.lower() or "authentication" in err.lower(), err


@case("curl -x socks5h:// (mixed port)")
def test_curl_mixed_socks5h(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("mixed", auth == "auth")
    curl_get(proxy, origins.http.port, ["-x", proxy.url("socks5h")], dest)


@case("curl -x http://")
def test_curl_http(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("http", auth == "auth")
    curl_get(proxy, origins.http.port, ["-x", proxy.url("http")], dest)


@case("curl -x http://", "v4", auths=("wrong-pw",))
def test_curl_http_wrong_password(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("http", True)
    status = curl(
        "-x", proxy.url("http", BAD_PASSWORD), "-o", "/dev/null", "-w", "%{http_code}",
        f"http://{dest.hostport(origins.http.port)}/",
    )  # fmt: skip
    assert status == "407"


@case("curl -x http:// -p (CONNECT)")
def test_curl_http_tunnel(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("http", auth == "auth")
    curl_get(proxy, origins.http.port, ["-x", proxy.url("http"), "-p"], dest)


@case("curl -x http:// https://")
def test_curl_http_connect_tls(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("http", auth == "auth")
    curl_get(proxy, origins.https.port, ["-x", proxy.url("http"), "--cacert", str(origins.cert)], dest, https=True)


@case("curl -x http:// (mixed port)")
def test_curl_mixed_http(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("mixed", auth == "auth")
    curl_get(proxy, origins.http.port, ["-x", proxy.url("http")], dest)


@case("curl -x https:// (TLS proxy)")
def test_curl_https_proxy(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("https", auth == "auth")
    flags = ["-x", proxy.url("https"), "--proxy-cacert", str(origins.cert)]
    curl_get(proxy, origins.http.port, flags, dest)


# -- proxychains4 ----------------------------------------------------------------------------


def proxychains_conf(directory: Path, kind: str, proxy: Gproxy) -> Path:
    """A strict one-hop chain with remote DNS; credentials only when the proxy wants them."""
    credentials = f" {USER} {PASSWORD}" if proxy.auth else ""
    conf = directory / f"proxychains-{kind}-{proxy.port}.conf"
    conf.write_text(
        "strict_chain\nproxy_dns\nremote_dns_subnet 224\n"
        "tcp_read_time_out 15000\ntcp_connect_time_out 8000\n"
        f"[ProxyList]\n{kind} {proxy.host} {proxy.port}{credentials}\n"
    )
    return conf


def proxychains_curl(conf: Path, url: str) -> str:
    return run([need_tool("proxychains4"), "-q", "-f", str(conf), need_tool("curl"), *CURL_OPTS, url]).strip()


@case("proxychains4 socks5 + curl")
def test_proxychains_socks5(dest: Target, auth: str, proxies: Proxies, origins: Origins, workdir: Path) -> None:
    proxy = proxies.get("socks5", auth == "auth")
    path = f"/proxychains/{token()}"
    with proxy.session(origins.http.port, proto="socks5"):
        body = proxychains_curl(
            proxychains_conf(workdir, "socks5", proxy), f"http://{dest.hostport(origins.http.port)}{path}"
        )
    assert body == expected("GET", path)


@case("proxychains4 http + curl")  # sends CONNECT ::1:PORT unbracketed; gproxy accepts that
def test_proxychains_http(dest: Target, auth: str, proxies: Proxies, origins: Origins, workdir: Path) -> None:
    proxy = proxies.get("http", auth == "auth")
    path = f"/proxychains/{token()}"
    with proxy.session(origins.http.port):
        body = proxychains_curl(
            proxychains_conf(workdir, "http", proxy), f"http://{dest.hostport(origins.http.port)}{path}"
        )
    assert body == expected("GET", path)


# -- ncat ------------------------------------------------------------------------------------


def ncat_echo(proxy: Gproxy, proxy_type: str, dest: Target, port: int, password: str = PASSWORD) -> None:
    # No -i: with an idle timeout ncat 7.93 no longer exits when the peer closes.
    args = [need_tool("ncat"), "--proxy", proxy.hostport, "--proxy-type", proxy_type, "-w", "10"]
    if proxy.auth:
        args += ["--proxy-auth", f"{USER}:{password}"]
    if proxy_type != "socks4":
        args += ["--proxy-dns", "remote"]
    data = payload()
    with proxy.session(port):
        out = run([*args, dest.host, str(port)], input=data)
    assert out.encode() == data


@case("ncat --proxy-type socks5")
def test_ncat_socks5(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    ncat_echo(proxies.get("socks5", auth == "auth"), "socks5", dest, origins.echo.port)


@case("ncat --proxy-type socks5", "v4", auths=("wrong-pw",))
def test_ncat_socks5_wrong_password(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    proxy = proxies.get("socks5", True)
    args = [need_tool("ncat"), "--proxy", proxy.hostport, "--proxy-type", "socks5", "-w", "10"]
    code, out, err = run_failing(
        [*args, "--proxy-auth", f"{USER}:{BAD_PASSWORD}", dest.host, str(origins.echo.port)], input=b"x"
    )
    assert code != 0 and out == "", (code, out, err)
    assert "auth" in err.lower(), err


@case("ncat --proxy-type socks4", "v4", auths=("noauth",))
def test_ncat_socks4(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    ncat_echo(proxies.get("socks5", False), "socks4", dest, origins.echo.port)


@case("ncat --proxy-type http")
def test_ncat_http(dest: Target, auth: str, proxies: Proxies, origins: Origins) -> None:
    ncat_echo(proxies.get("http", auth == "auth"), "http", dest, origins.echo.port)
