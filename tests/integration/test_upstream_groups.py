"""Upstream groups end to end: gproxy -> one of several gproxy upstreams -> echo.

Failover and cooldown, wrong credentials, round-robin, --bypass, https:// and
socks5+tls:// upstreams (test CA), via= in the access log, the upstream
metrics, and the CLI's answer to bad upstream flags.
"""

from __future__ import annotations

import re
import time

import pytest
from gevent.server import StreamServer

from gproxy.core.config import Config
from gproxy.core.errors import ConfigError
from gproxy.server.proxy import Proxy
from tests.helpers import (
    ROOT,
    echo_through,
    ipv4_dest,
    make_cert,
    metric,
    name_dest,
    recv_exact,
    run_gproxy,
    scrape_metrics,
    socks5_connect,
    wait_for,
)

VIA = re.compile(r' via=("[^"]*"|\S+)')


def socks_url(running, user="b:2", scheme="socks5", kind="socks5", host=None):
    address = running.address(kind)
    return f"{scheme}://{user + '@' if user else ''}{host or address.host}:{address.port}"


def front_of(proxy, upstreams, tmp_path, **settings):
    """A front gproxy with a metrics listener and an access log."""
    settings.setdefault("access_log", str(tmp_path / "front.log"))
    return proxy(socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], upstream=upstreams, **settings)


def echo_once(front, echo_tcp, payload=b"through a group"):
    """One CONNECT to the echo server through ``front``; returns the SOCKS5 reply code."""
    address = front.address("socks5")
    sock, reply = socks5_connect((address.host, address.port), ipv4_dest("127.0.0.1", echo_tcp.port))
    with sock:
        if reply[1] == 0:
            assert echo_through(sock, payload) == payload
    return reply[1]


def samples(front):
    return scrape_metrics(front.address("metrics").port)


def via_of(log_path, count):
    """The via= of the first ``count`` access-log lines, once there are that many."""

    def routes():
        text = log_path.read_text() if log_path.exists() else ""
        found = [match.strip('"') for match in VIA.findall(text)]
        return len(found) >= count and found

    return wait_for(routes, what=f"{count} access-log lines with via=")[:count]


@pytest.fixture
def two_upstreams(proxy):
    return proxy(socks=["127.0.0.1:0"], user=["b:2"]), proxy(socks=["127.0.0.1:0"], user=["b:2"])


def test_a_stopped_upstream_fails_over_is_marked_down_and_retried_after_the_cooldown(proxy, echo_tcp, tmp_path):
    first = proxy(socks=["127.0.0.1:0"], user=["b:2"])
    second = proxy(socks=["127.0.0.1:0"], user=["b:2"])
    first_url, second_url = socks_url(first), socks_url(second)
    first_port = first.address("socks5").port
    first.stop(0)
    front = front_of(proxy, [first_url, second_url], tmp_path, upstream_cooldown=1.5)
    first_label, second_label = first_url.replace("b:2@", "b:***@"), second_url.replace("b:2@", "b:***@")

    assert echo_once(front, echo_tcp) == 0  # the first is down: the same dial moves on
    assert echo_once(front, echo_tcp) == 0  # within the cooldown the first is not tried again
    seen = samples(front)
    assert metric(seen, "gproxy_upstream_up", upstream=first_label) == 0
    assert metric(seen, "gproxy_upstream_up", upstream=second_label) == 1
    assert metric(seen, "gproxy_upstream_dials_total", upstream=first_label, result="failed") == 1
    assert metric(seen, "gproxy_upstream_dials_total", upstream=second_label, result="ok") == 2
    assert via_of(tmp_path / "front.log", 2) == [second_label, second_label]

    proxy(socks=[f"127.0.0.1:{first_port}"], user=["b:2"])  # the first comes back on its port
    time.sleep(1.6)  # past the cooldown: failover goes back to the first
    assert echo_once(front, echo_tcp) == 0
    seen = samples(front)
    assert metric(seen, "gproxy_upstream_up", upstream=first_label) == 1
    assert metric(seen, "gproxy_upstream_dials_total", upstream=first_label, result="ok") == 1
    assert via_of(tmp_path / "front.log", 3)[2] == first_label
    assert "b:2@" not in (tmp_path / "front.log").read_text()  # passwords never logged


def test_wrong_credentials_on_one_upstream_move_on(proxy, echo_tcp, tmp_path, two_upstreams):
    first, second = two_upstreams
    front = front_of(proxy, [socks_url(first, "b:wrong"), socks_url(second)], tmp_path)
    assert echo_once(front, echo_tcp) == 0
    seen = samples(front)
    assert metric(seen, "gproxy_upstream_up", upstream=socks_url(first, "b:***")) == 0
    assert metric(seen, "gproxy_upstream_dials_total", upstream=socks_url(first, "b:***"), result="failed") == 1
    assert "wrong" not in str(seen)


def test_a_destination_error_is_answered_without_failover(proxy, echo_tcp, tmp_path, closed_port, two_upstreams):
    first, second = two_upstreams
    front = front_of(proxy, [socks_url(first), socks_url(second)], tmp_path)
    address = front.address("socks5")
    sock, reply = socks5_connect((address.host, address.port), ipv4_dest("127.0.0.1", closed_port))
    sock.close()
    assert reply[1] == 0x05  # the first upstream's own "connection refused", passed through
    seen = samples(front)
    assert metric(seen, "gproxy_upstream_dials_total", upstream=socks_url(first, "b:***"), result="refused") == 1
    assert metric(seen, "gproxy_upstream_up", upstream=socks_url(first, "b:***")) == 1
    assert metric(seen, "gproxy_upstream_dials_total", upstream=socks_url(second, "b:***")) == 0


def test_all_upstreams_down_answers_the_last_failure(proxy, echo_tcp, tmp_path, two_upstreams):
    first, second = two_upstreams
    front = front_of(proxy, [socks_url(first, "b:bad"), socks_url(second, "b:worse")], tmp_path)
    assert echo_once(front, echo_tcp) == 0x01
    seen = samples(front)
    assert metric(seen, "gproxy_upstream_dials_total", result="failed") == 2


def test_round_robin_spreads_over_three_upstreams(proxy, echo_tcp, tmp_path):
    upstreams = [proxy(socks=["127.0.0.1:0"], user=["b:2"]) for _ in range(3)]
    front = front_of(proxy, [socks_url(up) for up in upstreams], tmp_path, upstream_strategy="round-robin")
    for _ in range(6):
        assert echo_once(front, echo_tcp) == 0
    seen = samples(front)
    assert [metric(seen, "gproxy_upstream_dials_total", upstream=socks_url(up, "b:***")) for up in upstreams] == [
        2,
        2,
        2,
    ]


def test_least_conns_counts_tunnels_the_relay_runs_on(proxy, echo_tcp, tmp_path, two_upstreams, monkeypatch):
    # every choice looks for ended tunnels: plain tunnels whose relay took over the socket
    # must still count as open (they once all went to the first upstream)
    monkeypatch.setattr("gproxy.core.upstream_group.PRUNE_EVERY", 0.0)
    front = front_of(proxy, [socks_url(up) for up in two_upstreams], tmp_path, upstream_strategy="least-conns")
    address = front.address("socks5")
    tunnels = []
    try:
        for _ in range(4):
            sock, reply = socks5_connect((address.host, address.port), ipv4_dest("127.0.0.1", echo_tcp.port))
            tunnels.append(sock)
            assert reply[1] == 0
            assert echo_through(sock, b"kept open") == b"kept open"  # the relay runs it now
        seen = samples(front)
        dials = [metric(seen, "gproxy_upstream_dials_total", upstream=socks_url(up, "b:***")) for up in two_upstreams]
        assert dials == [2, 2]
    finally:
        for sock in tunnels:
            sock.close()


def test_bypass_goes_direct(proxy, echo_tcp, tmp_path):
    # the upstream refuses the echo server: only a direct dial reaches it
    upstream = proxy(socks=["127.0.0.1:0"], user=["b:2"], deny_dest=["127.0.0.1"])
    front = front_of(proxy, [socks_url(upstream)], tmp_path, bypass=[f"127.0.0.1:{echo_tcp.port}"])
    assert echo_once(front, echo_tcp) == 0
    address = front.address("socks5")
    sock, reply = socks5_connect((address.host, address.port), name_dest("localhost", echo_tcp.port))
    sock.close()
    assert reply[1] == 0x02  # a name the rule does not name goes through the upstream, which denies it
    assert via_of(tmp_path / "front.log", 2) == ["direct", socks_url(upstream, "b:***")]


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("upstream-tls"))


@pytest.fixture(scope="module")
def other_cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("other-tls"))


@pytest.fixture
def tls_upstream(proxy, cert):
    return proxy(https=["127.0.0.1:0"], socks_tls=["127.0.0.1:0"], user=["b:2"], cert=cert[0], key=cert[1])


@pytest.mark.parametrize(
    ("scheme", "kind", "host"),
    [("socks5+tls", "socks5-tls", "127.0.0.1"), ("https", "https", "localhost"), ("https", "https", "127.0.0.1")],
)
def test_tls_upstreams_with_the_test_ca(proxy, echo_tcp, tmp_path, cert, tls_upstream, scheme, kind, host):
    url = socks_url(tls_upstream, scheme=scheme, kind=kind, host=host)
    front = front_of(proxy, [url], tmp_path, ca=[cert[0]])
    assert echo_once(front, echo_tcp, bytes(range(256)) * 512) == 0  # 128 KiB both ways over TLS
    assert via_of(tmp_path / "front.log", 1) == [url.replace("b:2@", "b:***@")]


@pytest.mark.parametrize("scheme", ["socks5+tls", "https"])
def test_a_tls_upstream_with_a_certificate_we_do_not_trust_is_marked_down(
    proxy, echo_tcp, tmp_path, other_cert, tls_upstream, scheme
):
    url = socks_url(tls_upstream, scheme=scheme, kind="socks5-tls" if scheme == "socks5+tls" else "https")
    front = front_of(proxy, [url], tmp_path, ca=[other_cert[0]])
    assert echo_once(front, echo_tcp) == 0x01
    seen = samples(front)
    label = url.replace("b:2@", "b:***@")
    assert metric(seen, "gproxy_upstream_up", upstream=label) == 0
    assert metric(seen, "gproxy_upstream_dials_total", upstream=label, result="failed") == 1


def test_a_tls_upstream_whose_certificate_names_another_host_is_marked_down(proxy, echo_tcp, tmp_path, cert):
    # the certificate names 127.0.0.1, localhost and ::1, not 127.0.0.2
    upstream = proxy(socks_tls=["127.0.0.2:0"], user=["b:2"], cert=cert[0], key=cert[1])
    url = socks_url(upstream, scheme="socks5+tls", kind="socks5-tls")
    front = front_of(proxy, [url], tmp_path, ca=[cert[0]])
    assert echo_once(front, echo_tcp) == 0x01
    assert metric(samples(front), "gproxy_upstream_up", upstream=url.replace("b:2@", "b:***@")) == 0


def test_a_certificate_that_names_the_host_only_in_its_common_name_is_refused(proxy, echo_tcp, tmp_path):
    # RFC 6125 / the README: the host must be listed in subjectAltName; no fallback to the CN
    cert, key = make_cert(tmp_path, alt_names=False)
    upstream = proxy(https=["127.0.0.1:0"], user=["b:2"], cert=cert, key=key)
    url = socks_url(upstream, scheme="https", kind="https", host="localhost")
    front = front_of(proxy, [url], tmp_path, ca=[cert])
    assert echo_once(front, echo_tcp) == 0x01
    assert metric(samples(front), "gproxy_upstream_up", upstream=url.replace("b:2@", "b:***@")) == 0


def test_the_group_skips_a_tls_upstream_that_fails_verification(proxy, echo_tcp, tmp_path, other_cert, tls_upstream):
    plain = proxy(socks=["127.0.0.1:0"], user=["b:2"])
    bad = socks_url(tls_upstream, scheme="socks5+tls", kind="socks5-tls")
    front = front_of(proxy, [bad, socks_url(plain)], tmp_path, ca=[other_cert[0]])
    assert echo_once(front, echo_tcp) == 0
    assert via_of(tmp_path / "front.log", 1) == [socks_url(plain, "b:***")]


def test_every_upstream_is_checked_against_our_own_listeners(closed_port):
    upstreams = ["socks5://127.0.0.1:1", f"socks5://127.0.0.1:{closed_port}"]  # the second is our own port
    looping = Proxy(Config.build(socks=[f"127.0.0.1:{closed_port}"], upstream=upstreams))
    with pytest.raises(ConfigError, match="own listener: that would loop"):
        looping.start()
    looping.stop(0)


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--upstream", "ftp://u:SECRET@h:21"], "--upstream"),
        (["--upstream", "socks5+tls://u:SECRET@h"], "--upstream"),
        (["--upstream", "https://u:SECRET@bad_host!:443"], "--upstream"),
        (["--upstream", "socks5://h:1", "--upstream-strategy", "fastest"], "--upstream-strategy"),
        (["--upstream", "socks5://h:1", "--upstream-cooldown", "-1"], "--upstream-cooldown"),
        (["--bypass", "10.0.0.0/8:99999"], "--bypass"),
        (["--ca", "/nonexistent/ca.pem"], "--ca"),
        (["--ca", str(ROOT / "README.md")], "--ca"),
    ],
)
def test_bad_upstream_flags_exit_2_with_one_line(args, flag):
    result = run_gproxy("--socks", "127.0.0.1:0", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and flag in result.stderr, result.stderr
    assert "SECRET" not in result.stderr and "Traceback" not in result.stderr


def test_a_banner_sent_right_after_the_connect_reply_arrives_through_an_https_upstream(
    proxy, tmp_path, cert, tls_upstream
):
    """The HTTP head is read byte by byte over TLS: the destination's first bytes stay for the relay."""

    def banner(sock, _addr):
        sock.sendall(b"220 hello\r\n")
        sock.recv(1)

    server = StreamServer(("127.0.0.1", 0), banner)
    server.start()
    try:
        front = front_of(proxy, [socks_url(tls_upstream, scheme="https", kind="https")], tmp_path, ca=[cert[0]])
        address = front.address("socks5")
        sock, reply = socks5_connect((address.host, address.port), ipv4_dest("127.0.0.1", server.address[1]))
        with sock:
            assert reply[1] == 0
            assert recv_exact(sock, 11) == b"220 hello\r\n"
    finally:
        server.stop(timeout=1)


def test_reload_with_other_upstreams_uses_them_for_new_connections(proxy, echo_tcp, tmp_path, two_upstreams):
    first, second = two_upstreams
    front = front_of(proxy, [socks_url(first)], tmp_path)
    assert echo_once(front, echo_tcp) == 0
    new = Config.build(
        socks=["127.0.0.1:0"], metrics=["127.0.0.1:0"], upstream=[socks_url(second)], access_log=front.config.access_log
    )
    assert front.reload(new)
    assert echo_once(front, echo_tcp) == 0
    assert via_of(tmp_path / "front.log", 2) == [socks_url(first, "b:***"), socks_url(second, "b:***")]
