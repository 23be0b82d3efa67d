"""--upstream chaining: gproxy -> gproxy -> origin, and the reply codes when the upstream fails."""

from __future__ import annotations

import shutil
import socket

import gevent
import pytest
import requests
import socks

from tests.helpers import (
    BannerServer,
    FakeHttpUpstream,
    GproxyProcess,
    WsgiOrigin,
    curl,
    ipv4_dest,
    name_dest,
    pysocks_echo,
    recv_exact,
    run_gproxy,
    socks5_connect,
)


@pytest.fixture
def origin():
    with WsgiOrigin() as server:
        yield server


def hostport(running, kind="socks5"):
    address = running.address(kind)
    return address.host, address.port


@pytest.fixture
def socks_chain(proxy):
    """front (user a:1) -> upstream (user b:2), both SOCKS5; returns (front, upstream) proxies."""
    upstream = proxy(socks=["127.0.0.1:0"], user=["b:2"], access_log=None)
    up_host, up_port = hostport(upstream)
    front = proxy(socks=["127.0.0.1:0"], user=["a:1"], upstream=f"socks5://b:2@{up_host}:{up_port}")
    return front, upstream


def test_socks5_to_socks5_chain_with_pysocks(socks_chain, echo_tcp):
    front, _ = socks_chain
    pysocks_echo(
        socks.SOCKS5, hostport(front), ("127.0.0.1", echo_tcp.port), b"through two hops", username="a", password="1"
    )


def test_socks5_chain_goes_through_the_upstream(proxy, echo_tcp):
    """With the upstream denying the destination, the front answers the upstream's 0x02."""
    upstream = proxy(socks=["127.0.0.1:0"], user=["b:2"], deny_dest=[f"127.0.0.1:{echo_tcp.port}"])
    front = proxy(socks=["127.0.0.1:0"], upstream="socks5://b:2@{}:{}".format(*hostport(upstream)))
    sock, reply = socks5_connect(hostport(front), ipv4_dest("127.0.0.1", echo_tcp.port))
    assert reply[1] == 0x02
    sock.close()


def test_socks5_chain_with_requests_and_names(socks_chain, origin):
    front, _ = socks_chain
    url = "socks5h://a:1@{}:{}".format(*hostport(front))
    response = requests.get(f"http://localhost:{origin.port}/", proxies={"http": url}, timeout=10)
    assert response.status_code == 200 and response.content == b"hello from origin"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_socks5_chain_with_curl(socks_chain, origin):
    front, _ = socks_chain
    result = curl(
        "--socks5-hostname", "{}:{}".format(*hostport(front)), "--proxy-user", "a:1", f"http://localhost:{origin.port}/"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"


@pytest.mark.parametrize(
    ("upstream_url", "code"),
    [
        ("socks5://b:wrong@{up}", 0x01),  # the upstream rejects our credentials
        ("socks5://{up}", 0x01),  # it wants a password we do not have
        ("socks5://b:2@127.0.0.1:{closed}", 0x05),  # the upstream is down: per dial table
    ],
)
def test_upstream_failures_map_to_reply_codes(proxy, echo_tcp, closed_port, upstream_url, code):
    upstream = proxy(socks=["127.0.0.1:0"], user=["b:2"])
    url = upstream_url.format(up="{}:{}".format(*hostport(upstream)), closed=closed_port)
    front = proxy(socks=["127.0.0.1:0"], upstream=url)
    sock, reply = socks5_connect(hostport(front), ipv4_dest("127.0.0.1", echo_tcp.port))
    assert reply[1] == code
    sock.close()


def test_upstream_reply_code_passes_through(proxy, closed_port):
    upstream = proxy(socks=["127.0.0.1:0"])
    front = proxy(socks=["127.0.0.1:0"], upstream="socks5://{}:{}".format(*hostport(upstream)))
    sock, reply = socks5_connect(hostport(front), ipv4_dest("127.0.0.1", closed_port))
    assert reply[1] == 0x05  # the upstream's own "connection refused"
    sock.close()


def test_front_rules_apply_before_the_upstream(proxy, echo_tcp):
    upstream = proxy(socks=["127.0.0.1:0"])
    front = proxy(
        socks=["127.0.0.1:0"], deny_dest=["*.blocked.test"], upstream="socks5://{}:{}".format(*hostport(upstream))
    )
    sock, reply = socks5_connect(hostport(front), name_dest("x.blocked.test", echo_tcp.port))
    assert reply[1] == 0x02
    sock.close()


# -- HTTP upstream (a minimal CONNECT proxy stands in until the HTTP front end is chained) --


def test_http_upstream_connect_with_basic_auth_and_early_bytes(proxy, echo_tcp):
    with FakeHttpUpstream(early=b"banner\n") as upstream:
        front = proxy(socks=["127.0.0.1:0"], upstream=f"http://b:p%3Aw@127.0.0.1:{upstream.port}")
        sock, reply = socks5_connect(hostport(front), ipv4_dest("127.0.0.1", echo_tcp.port))
        assert reply[1] == 0x00
        assert recv_exact(sock, 7) == b"banner\n"  # sent with the 200: not lost
        sock.sendall(b"ping")
        assert recv_exact(sock, 4) == b"ping"
        sock.close()
        head = upstream.heads[0]
        assert head.startswith(f"CONNECT 127.0.0.1:{echo_tcp.port} HTTP/1.1\r\n".encode())
        assert b"Proxy-Authorization: Basic YjpwOnc=\r\n" in head  # b:p:w


@pytest.mark.parametrize(("status", "code"), [(403, 0x02), (407, 0x01), (502, 0x04), (504, 0x06), (500, 0x01)])
def test_http_upstream_status_maps_to_reply_codes(proxy, echo_tcp, status, code):
    with FakeHttpUpstream(status=status) as upstream:
        front = proxy(socks=["127.0.0.1:0"], upstream=f"http://127.0.0.1:{upstream.port}")
        sock, reply = socks5_connect(hostport(front), ipv4_dest("127.0.0.1", echo_tcp.port))
        assert reply[1] == code
        sock.close()


# -- credentials stay out of logs ------------------------------------------------------------


def test_upstream_password_never_in_stderr_with_verbose(closed_port, echo_tcp):
    secret = "Sup3rSecretPw"
    with GproxyProcess(
        "--socks", "127.0.0.1:0", "-v", "--upstream", f"socks5://bob:{secret}@127.0.0.1:{closed_port}"
    ) as gp:
        sock, reply = socks5_connect(("127.0.0.1", gp.port()), ipv4_dest("127.0.0.1", echo_tcp.port))
        assert reply[1] == 0x05
        sock.close()
        gp.proc.send_signal(15)
        _, rest = gp.proc.communicate(timeout=15)
    stderr = "".join(gp.stderr_lines) + rest.decode()
    assert gp.proc.returncode == 0
    assert "upstream socks5://bob:***@" in stderr  # the failure is logged, redacted
    assert secret not in stderr


def test_bad_upstream_url_exit_2_without_password():
    result = run_gproxy("--socks", "0", "--upstream", "gopher://u:Sup3rSecretPw@h:1")
    assert result.returncode == 2
    assert "--upstream" in result.stderr and "Sup3rSecretPw" not in result.stderr


def test_upstream_pointing_at_ourselves_is_refused_at_start():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # a free port we then listen on, with ourselves as the upstream
    result = run_gproxy("--socks", f"127.0.0.1:{port}", "--upstream", f"socks5://127.0.0.1:{port}")
    assert result.returncode == 2 and "would loop" in result.stderr


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_read_head_takes_the_head_and_not_a_byte_more(step):
    from gproxy.core.upstream import read_head

    head = b"HTTP/1.1 200 OK\r\nX: y\r\n\r\n"
    ours, theirs = socket.socketpair()
    try:
        data = head + b"after"

        def feed():
            for i in range(0, len(data), step):
                theirs.sendall(data[i : i + step])
                gevent.sleep(0)

        feeder = gevent.spawn(feed)
        assert read_head(ours, 16384) == head
        feeder.get(timeout=5)
        assert recv_exact(ours, 5) == b"after"
    finally:
        ours.close()
        theirs.close()


def test_read_head_is_bounded():
    from gproxy.core.errors import ClientProtocolError
    from gproxy.core.upstream import read_head

    ours, theirs = socket.socketpair()
    try:
        theirs.sendall(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 100)
        with pytest.raises(ClientProtocolError):
            read_head(ours, 256)
    finally:
        ours.close()
        theirs.close()


def test_upstream_speaking_another_protocol_is_0x01(proxy, echo_tcp):
    socks_hop = proxy(socks=["127.0.0.1:0"])
    with BannerServer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as not_socks:
        for url in (f"socks5://127.0.0.1:{not_socks.port}", "http://{}:{}".format(*hostport(socks_hop))):
            front = proxy(socks=["127.0.0.1:0"], upstream=url)
            sock, reply = socks5_connect(hostport(front), ipv4_dest("127.0.0.1", echo_tcp.port))
            with sock:
                assert reply[1] == 0x01, url


def test_silent_upstream_is_0x06(proxy, echo_tcp):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts (in the backlog) and never answers
    try:
        front = proxy(
            socks=["127.0.0.1:0"], connect_timeout=0.5, upstream=f"socks5://127.0.0.1:{silent.getsockname()[1]}"
        )
        sock, reply = socks5_connect(hostport(front), ipv4_dest("127.0.0.1", echo_tcp.port))
        assert reply[1] == 0x06
        sock.close()
    finally:
        silent.close()
