"""--redirect and --tproxy: the original destination, and end to end through nftables in
network namespaces this test creates:

    client ns  10.233.1.1 / fd33:1::1 --- 10.233.1.2 / fd33:1::2  router ns (gproxy)
    router ns  10.233.2.1 / fd33:2::1 --- 10.233.2.2 / fd33:2::2  server ns

The router does not forward packets: only gproxy gets the client across.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gevent
import pytest

from gproxy.codec.socks5 import encode_udp_header
from gproxy.core.addr import Address
from gproxy.core.config import Config
from gproxy.core.context import Metrics
from gproxy.core.errors import ConfigError, DialError
from gproxy.core.session import Session
from gproxy.core.udp_mappings import MappingTable
from gproxy.core.udp_upstream import Socks5UdpRelay, udp_route
from gproxy.frontends.transparent import parse_sockaddr
from gproxy.server.proxy import Proxy
from gproxy.services.tproxy_udp import original_destination
from tests.helpers import (
    ROOT,
    access_lines,
    gproxy_env,
    logfmt_fields,
    network_namespaces,
    recv_all,
    run_gproxy,
    run_in_netns,
    run_ip,
    wait_for,
)
from tests.robustness.live import DrainedGproxy

C4, R4C, R4S, S4 = "10.233.1.1", "10.233.1.2", "10.233.2.1", "10.233.2.2"
C6, R6C, R6S, S6 = "fd33:1::1", "fd33:1::2", "fd33:2::1", "fd33:2::2"


def test_parse_sockaddr_in_and_in6():
    raw4 = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 7000) + socket.inet_aton("10.1.2.3") + bytes(8)
    assert str(parse_sockaddr(raw4)) == "10.1.2.3:7000"
    raw6 = (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!H", 443)
        + bytes(4)
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1")
        + bytes(4)
    )
    assert str(parse_sockaddr(raw6)) == "[2001:db8::1]:443"
    with pytest.raises(ValueError):
        parse_sockaddr(b"\x01\x00")
    with pytest.raises(ValueError):
        parse_sockaddr(struct.pack("=H", socket.AF_UNIX) + bytes(14))


def _sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def test_original_destination_from_the_control_messages():
    raw6 = struct.pack("=HHI", socket.AF_INET6, socket.htons(53), 0) + socket.inet_pton(socket.AF_INET6, "fd00::5")
    found4 = original_destination(
        [(socket.SOL_SOCKET, 29, b"x" * 8), (socket.IPPROTO_IP, 20, _sockaddr_in("10.9.8.7", 53))]
    )
    assert str(found4) == "10.9.8.7:53"
    assert str(original_destination([(socket.IPPROTO_IPV6, 74, raw6 + bytes(4))])) == "[fd00::5]:53"
    assert original_destination([]) is None  # IP_RECVORIGDSTADDR not on, or not a diverted datagram
    assert original_destination([(socket.IPPROTO_IP, 20, b"\x02\x00")]) is None  # truncated: dropped, no traceback


@dataclass
class _FakeMapping:
    session: Session
    last: int
    closed: bool = False

    def close(self) -> None:
        self.closed = True


class _Sink:
    def __init__(self) -> None:
        self.metrics = Metrics()
        self.lines: list[str] = []
        self.access_log = self
        self.open: dict[int, Session] = {}

    def open_detached(self, session: Session, end: object) -> None:
        self.open[id(session)] = session

    def close_detached(self, session: Session) -> None:
        del self.open[id(session)]

    def write(self, line: str) -> None:
        self.lines.append(line)


def _fake(table: MappingTable, name: str) -> _FakeMapping:
    return table.add(name, _FakeMapping(Session(Address("10.0.0.1", 1), "tproxy", cmd=name), table.clock))


def test_mapping_table_evicts_the_idlest_when_full_and_logs_each_end():
    sink = _Sink()
    table: MappingTable[str, _FakeMapping] = MappingTable(60.0, 2, sink)
    first = _fake(table, "first")
    table.clock += 1
    second = _fake(table, "second")
    first.last = table.clock + 1  # a datagram: "second" is the idlest now
    third = _fake(table, "third")
    assert set(table) == {"first", "third"} and second.closed and not first.closed
    assert len(sink.open) == 2  # listed while open
    table.end_all("shutdown")
    assert table == {} and first.closed and third.closed and sink.open == {}
    outcomes = [(line.split("cmd=")[1].split()[0], line.split("outcome=")[1]) for line in sink.lines]
    assert outcomes == [("second", "evicted"), ("first", "shutdown"), ("third", "shutdown")]
    table.end("first", "again")  # already gone: nothing
    assert len(sink.lines) == 3


def test_mapping_table_reaper_ends_only_idle_mappings():
    sink = _Sink()
    table: MappingTable[str, _FakeMapping] = MappingTable(0.4, 10, sink)
    idle, busy = _fake(table, "idle"), _fake(table, "busy")
    reaper = gevent.spawn(table.reap)
    try:
        with gevent.Timeout(10):
            while "idle" in table:
                busy.last = table.clock  # keeps sending
                gevent.sleep(0.02)
    finally:
        reaper.kill()
    assert idle.closed and not busy.closed and list(table) == ["busy"]
    assert sink.lines[0].endswith("outcome=ok")


def test_socks5_relay_unwraps_only_whole_unfragmented_datagrams():
    datagram = encode_udp_header(Address("10.1.1.1", 53)) + b"answer"
    sender, payload = Socks5UdpRelay.unwrap(memoryview(datagram))
    assert str(sender) == "10.1.1.1:53" and bytes(payload) == b"answer"
    assert Socks5UdpRelay.unwrap(memoryview(b"\0\0\1" + datagram[3:])) is None  # FRAG 1
    assert Socks5UdpRelay.unwrap(memoryview(datagram[:6])) is None  # cut inside the address


@pytest.mark.parametrize(
    ("upstreams", "bypass", "route"),
    [
        ((), (), None),
        (("http://127.0.0.1:1", "socks5://u:secret@127.0.0.1:2"), (), "socks5://u:***@127.0.0.1:2"),
        (("socks5+tls://127.0.0.1:3",), (), "socks5+tls://127.0.0.1:3"),
        (("https://127.0.0.1:1", "ss://aes-128-gcm:pw@127.0.0.1:5"), (), "ss://aes-128-gcm:***@127.0.0.1:5"),
        (("socks5://127.0.0.1:2",), ("10.0.0.0/8",), None),
        (("http://127.0.0.1:1", "socks4://127.0.0.1:4"), (), DialError),
    ],
)
def test_udp_route_is_the_first_upstream_that_carries_udp(upstreams, bypass, route):
    config = Config.build(tproxy=["127.0.0.1:0"], upstream=list(upstreams), bypass=list(bypass))
    ctx = Proxy(config).context(config.listeners[0])
    dest = Address("10.2.3.4", 53)
    if route is DialError:
        with pytest.raises(DialError, match="no upstream can carry UDP"):
            udp_route(ctx.dialer, dest)
        return
    chosen = udp_route(ctx.dialer, dest)
    assert (chosen if chosen is None else str(chosen[0].upstream)) == route


@pytest.mark.skipif(os.geteuid() != 0, reason="IP_TRANSPARENT needs CAP_NET_ADMIN")
def test_tproxy_udp_shares_the_tcp_port_and_drops_datagrams_sent_straight_to_it(proxy, tmp_path):
    running = proxy(tproxy=["127.0.0.1:0"], access_log=str(tmp_path / "access.log"))
    tcp, udp = running.address("tproxy"), running.address("tproxy-udp")
    assert udp == tcp
    (service,) = running._services
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.settimeout(0.5)
        client.sendto(b"loop?", (udp.host, udp.port))  # its original destination is the listener itself
        with pytest.raises(TimeoutError):
            client.recvfrom(100)
    finally:
        client.close()
    assert service.mappings == {}


def test_a_tcp_connection_straight_to_the_tproxy_port_is_not_redirected(proxy, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(tproxy=["127.0.0.1:0"], access_log=str(log))
    address = running.address("tproxy")
    with socket.create_connection((address.host, address.port), timeout=5) as client:
        assert recv_all(client) == b""  # closed: it has no destination but the listener itself
    (line,) = wait_for(lambda: access_lines(log), what="its line")
    fields = logfmt_fields(line)
    assert (fields["proto"], fields["outcome"]) == ("tproxy", "not_redirected")


@pytest.mark.parametrize("kind", ["redirect", "tproxy"])
def test_open_proxy_rule_applies_whatever_the_users(kind):
    with pytest.raises(ConfigError, match="open proxy"):
        Config.build(**{kind: ["0.0.0.0:0"]}, user=["u:p"])
    Config.build(**{kind: ["0.0.0.0:0"]}, allow=["10.0.0.0/8"])
    Config.build(**{kind: ["127.0.0.1:0"]})


@pytest.mark.parametrize("args", [["--mark", "x"], ["--mark", "-1"], ["--mark", "4294967296"]])
def test_bad_mark_is_exit_2(args):
    proc = run_gproxy("--redirect", "0", *args)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "--mark" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- end to end, in network namespaces --------------------------------------------------


@dataclass
class Net:
    client: str
    router: str
    server: str
    dev: str  # the router's interface toward the client

    def ns(self, name: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", name)

    def sh(self, name: str, *args: str, stdin: str | None = None) -> None:
        subprocess.run([*self.ns(name), *args], check=True, capture_output=True, timeout=20, input=stdin, text=True)

    def nft(self, script: str) -> None:
        self.sh(self.router, "nft", "-f", "-", stdin=script)

    def peer(self, name: str, *args: str) -> dict[str, object]:
        return run_in_netns(name, "tests.frontends.transparent_peer", *args)

    def gproxy(self, *args: str, listeners: int = 1) -> DrainedGproxy:
        return DrainedGproxy(*args, listeners=listeners, prefix=self.ns(self.router))


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        pytest.skip("needs root, iproute2 and nftables (.ci/run installs them)")
    tag = f"gtp{os.getpid()}"
    names = Net(f"{tag}c", f"{tag}r", f"{tag}s", f"{tag}a1")
    with network_namespaces(names.client, names.router, names.server):
        links = (
            (names.client, f"{tag}a0", C4, C6, names.router, f"{tag}a1", R4C, R6C),
            (names.router, f"{tag}b0", R4S, R6S, names.server, f"{tag}b1", S4, S6),
        )
        for a_ns, a_dev, a4, a6, b_ns, b_dev, b4, b6 in links:
            run_ip("link", "add", a_dev, "netns", a_ns, "type", "veth", "peer", "name", b_dev, "netns", b_ns)
            for ns, dev, v4, v6 in ((a_ns, a_dev, a4, a6), (b_ns, b_dev, b4, b6)):
                run_ip("-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
                run_ip("-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
                run_ip("-n", ns, "link", "set", dev, "up")
        for ns, via4, via6 in ((names.client, R4C, R6C), (names.server, R4S, R6S)):
            run_ip("-n", ns, "route", "add", "default", "via", via4)
            run_ip("-n", ns, "-6", "route", "add", "default", "via", via6)
        server = subprocess.Popen(
            [*names.ns(names.server), sys.executable, "-m", "tests.frontends.transparent_peer", "server", S4, S6],
            stdout=subprocess.PIPE,
            text=True,
            env=gproxy_env(),
            cwd=ROOT,
        )
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            yield names
        finally:
            server.kill()
            server.wait(10)
            assert server.stdout is not None
            server.stdout.close()


@pytest.fixture
def clean_nft(net: Net) -> Iterator[None]:
    yield
    net.sh(net.router, "nft", "flush", "ruleset")


ALLOW = ("--allow", "10.233.1.0/24", "--allow", "fd33:1::/64")


def _redirect_rules(net: Net, port4: int, port6: int) -> str:
    return f"""
table inet gproxy {{
  chain prerouting {{
    type nat hook prerouting priority dstnat;
    iifname "{net.dev}" meta nfproto ipv4 tcp dport 7000 redirect to :{port4}
    iifname "{net.dev}" meta nfproto ipv6 tcp dport 7000 redirect to :{port6}
  }}
}}
"""


@pytest.mark.netns
def test_redirect_ipv4_and_ipv6_reach_the_server_from_gproxys_address(net, clean_nft, tmp_path):
    log = tmp_path / "access.log"
    with net.gproxy(
        "--redirect", "0.0.0.0:0", "--redirect", "[::]:0", *ALLOW, "--access-log", str(log), listeners=2
    ) as gp:
        (_, port4), (_, port6) = gp.listening["redirect"]
        net.nft(_redirect_rules(net, port4, port6))
        seen4 = net.peer(net.client, "bulk", S4, "7000", str(1 << 20))
        seen6 = net.peer(net.client, "bulk", S6, "7000", str(1 << 20))
        direct = net.peer(net.client, "direct", R4C, str(port4))  # straight at the port: closed
    assert seen4["peer"] == f"peer={R4S}" and seen4["echoed"] == seen4["sent"], seen4
    assert seen6["peer"] == f"peer={R6S}" and seen6["echoed"] == seen6["sent"], seen6
    assert direct == {"received": ""}
    lines = log.read_text().splitlines()
    assert any("proto=redirect" in line and f"dest={S4}:7000" in line and "outcome=ok" in line for line in lines)
    assert any("proto=redirect" in line and f"dest=[{S6}]:7000" in line for line in lines)
    assert any("outcome=not_redirected" in line for line in lines), lines


@pytest.mark.netns
def test_redirect_through_an_upstream(net, clean_nft, tmp_path):
    upstream_log = tmp_path / "upstream.log"
    with net.gproxy("--socks", "127.0.0.1:0", "--access-log", str(upstream_log)) as upstream:
        url = f"socks5://127.0.0.1:{upstream.port()}"
        with net.gproxy("--redirect", "0.0.0.0:0", *ALLOW, "--upstream", url) as gp:
            port = gp.listening["redirect"][0][1]
            net.nft(_redirect_rules(net, port, port))
            seen = net.peer(net.client, "bulk", S4, "7000", "65536")
    assert seen["peer"] == f"peer={R4S}" and seen["echoed"] == seen["sent"], seen
    assert f"dest={S4}:7000" in upstream_log.read_text()


@pytest.mark.netns
def test_mark_exempts_gproxys_own_connections_from_the_hosts_redirect(net, clean_nft):
    """The recipe for a host's own outgoing TCP: redirect everything but gproxy's marked sockets."""
    with net.gproxy("--redirect", "127.0.0.1:0", "--mark", "42") as gp:
        port = gp.listening["redirect"][0][1]
        net.nft(f"""
table ip gproxy {{
  chain output {{
    type nat hook output priority -100;
    tcp dport 7000 meta mark != 42 redirect to :{port}
  }}
}}
""")
        seen = net.peer(net.router, "bulk", S4, "7000", "65536")
    assert seen["peer"] == f"peer={R4S}" and seen["echoed"] == seen["sent"], seen


def _tproxy_setup(net: Net, port4: int, port6: int) -> None:
    for family in ("-4", "-6"):
        net.sh(net.router, "ip", family, "rule", "add", "fwmark", "1", "lookup", "100")
        default = "0.0.0.0/0" if family == "-4" else "::/0"
        net.sh(net.router, "ip", family, "route", "add", "local", default, "dev", "lo", "table", "100")
    net.nft(f"""
table inet gproxy {{
  chain prerouting {{
    type filter hook prerouting priority mangle;
    iifname "{net.dev}" meta l4proto {{ tcp, udp }} th dport 8000 tproxy ip to :{port4} meta mark set 1 accept
    iifname "{net.dev}" meta l4proto {{ tcp, udp }} th dport 8000 tproxy ip6 to :{port6} meta mark set 1 accept
  }}
}}
""")


@pytest.fixture
def tproxy_routes(net: Net) -> Iterator[None]:
    yield
    for family in ("-4", "-6"):
        subprocess.run([*net.ns(net.router), "ip", family, "rule", "del", "fwmark", "1", "lookup", "100"], timeout=20)
        subprocess.run([*net.ns(net.router), "ip", family, "route", "flush", "table", "100"], timeout=20)


@pytest.mark.netns
def test_tproxy_tcp_ipv4_and_ipv6(net, clean_nft, tproxy_routes, tmp_path):
    log = tmp_path / "access.log"
    with net.gproxy("--tproxy", "0.0.0.0:0", "--tproxy", "[::]:0", *ALLOW, "--access-log", str(log), listeners=2) as gp:
        (_, port4), (_, port6) = gp.listening["tproxy"]
        _tproxy_setup(net, port4, port6)
        seen4 = net.peer(net.client, "bulk", S4, "8000", str(1 << 20))
        seen6 = net.peer(net.client, "bulk", S6, "8000", str(1 << 20))
    assert seen4["peer"] == f"peer={R4S}" and seen4["echoed"] == seen4["sent"], seen4
    assert seen6["peer"] == f"peer={R6S}" and seen6["echoed"] == seen6["sent"], seen6
    text = log.read_text()
    assert f"dest={S4}:8000" in text and f"dest=[{S6}]:8000" in text and "proto=tproxy" in text


@pytest.mark.netns
def test_tproxy_udp_ipv4_and_ipv6_replies_come_from_the_original_destination(net, clean_nft, tproxy_routes, tmp_path):
    log = tmp_path / "access.log"
    listeners = ("--tproxy", "0.0.0.0:0", "--tproxy", "[::]:0", "--mark", "42")
    with net.gproxy(*listeners, *ALLOW, "--access-log", str(log), "--idle-timeout", "1", listeners=2) as gp:
        (_, port4), (_, port6) = gp.listening["tproxy"]
        _tproxy_setup(net, port4, port6)
        # the router itself may send to port 8000 only with gproxy's mark: the outbound sockets carry it
        net.nft("""
table inet marked {
  chain output {
    type filter hook output priority 0;
    meta l4proto udp th dport 8000 meta mark != 42 drop
  }
}
""")
        seen4 = net.peer(net.client, "udp", S4, "8000")
        seen6 = net.peer(net.client, "udp", S6, "8000")
        lines = _udp_log_lines(log, 2)  # the mappings expire after the idle timeout, then log
    # the server saw the router (gproxy relayed it); the client got the answer from the address it sent to
    assert seen4 == {"answer": f"peer={R4S};hello", "source": [S4, 8000]}, seen4
    assert seen6 == {"answer": f"peer={R6S};hello", "source": [S6, 8000]}, seen6
    line4, line6 = sorted(lines, key=lambda line: "dest=[" in line)
    assert f"client={C4}:" in line4 and f"dest={S4}:8000" in line4, line4
    assert f"client=[{C6}]:" in line6 and f"dest=[{S6}]:8000" in line6, line6
    for line, answer in ((line4, seen4["answer"]), (line6, seen6["answer"])):
        assert "proto=tproxy cmd=udp" in line and "via=direct" in line and "outcome=ok" in line, line
        assert f"up=5 down={len(answer)} " in line, line


def _udp_log_lines(log, count: int, within: float = 15.0) -> list[str]:
    """The access log's ``cmd=udp`` lines once there are ``count`` of them (polled, bounded)."""
    deadline = time.monotonic() + within
    while True:
        lines = [line for line in access_lines(log) if "cmd=udp" in line]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def _tproxy_udp_via_upstream(
    net: Net, tmp_path, upstream_args: tuple[str, ...], url_of: Callable[[DrainedGproxy], str]
) -> tuple[str, dict[str, object], str, list[str]]:
    """One datagram from the client through --tproxy and an upstream gproxy (started with
    ``upstream_args``; ``url_of`` gives its --upstream URL): (that URL, what the client saw,
    our access-log line, the upstream's ``cmd=udp`` lines once it logged one)."""
    log, upstream_log = tmp_path / "access.log", tmp_path / "upstream.log"
    with net.gproxy(*upstream_args, "--access-log", str(upstream_log), "--idle-timeout", "1") as upstream:
        url = url_of(upstream)
        args = ("--tproxy", "0.0.0.0:0", *ALLOW, "--upstream", url, "--access-log", str(log), "--idle-timeout", "1")
        with net.gproxy(*args) as gp:
            port = gp.listening["tproxy"][0][1]
            _tproxy_setup(net, port, port)
            seen = net.peer(net.client, "udp", S4, "8000")
            (line,) = _udp_log_lines(log, 1)
            upstream_lines = _udp_log_lines(upstream_log, 1)  # once the upstream's mapping has ended
    return url, seen, line, upstream_lines


@pytest.mark.netns
def test_tproxy_udp_through_a_socks5_upstream(net, clean_nft, tproxy_routes, tmp_path):
    # the upstream logs when the mapping closes its control connection
    url, seen, line, associations = _tproxy_udp_via_upstream(
        net, tmp_path, ("--socks", "127.0.0.1:0"), lambda upstream: f"socks5://127.0.0.1:{upstream.port()}"
    )
    assert seen == {"answer": f"peer={R4S};hello", "source": [S4, 8000]}, seen
    assert f"dest={S4}:8000" in line and f"via={url}" in line and f"up=5 down={len(seen['answer'])} " in line, line
    # the upstream relayed it: one UDP ASSOCIATE from 127.0.0.1 carried the datagram both ways
    assert len(associations) == 1 and f"up=5 down={len(seen['answer'])} " in associations[0], associations
    assert "client=127.0.0.1:" in associations[0], associations


@pytest.mark.netns
def test_tproxy_udp_through_an_ss_upstream(net, clean_nft, tproxy_routes, tmp_path):
    ss_args = ("--ss", "127.0.0.1:0", "--ss-method", "aes-256-gcm", "--user", "alice:ss-pw")
    # the upstream logs when its mapping ends after its idle timeout
    _, seen, line, (relayed,) = _tproxy_udp_via_upstream(
        net, tmp_path, ss_args, lambda upstream: f"ss://aes-256-gcm:ss-pw@127.0.0.1:{upstream.port('ss')}"
    )
    assert seen == {"answer": f"peer={R4S};hello", "source": [S4, 8000]}, seen
    assert "via=ss://aes-256-gcm:***@127.0.0.1:" in line and f"up=5 down={len(seen['answer'])} " in line, line
    # the ss server opened the sealed datagram with alice's key and carried it both ways
    assert "proto=ss" in relayed and "user=alice" in relayed, relayed
    assert f"up=5 down={len(seen['answer'])} " in relayed, relayed
