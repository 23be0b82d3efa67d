"""Multi-host tests: client, gproxy and destination each in their own network
namespace (veth pairs), so addresses are real and distinct:

    client ns  10.231.1.1 --- 10.231.1.2  gproxy ns  10.231.2.1 --- 10.231.2.2  dest ns

gproxy's namespace does not forward packets: the proxy is the only way across.
Needs root and iproute2; the namespaces are the test's own (names carry the
PID) and are deleted in a finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import ROOT, gproxy_env, network_namespaces, run_in_netns, run_ip
from tests.robustness.live import DrainedGproxy

pytestmark = pytest.mark.netns

CLIENT_IP, PROXY_CLIENT_SIDE = "10.231.1.1", "10.231.1.2"
#: a second host on the client's link (an address of the client namespace)
NEIGHBOUR_IP = "10.231.1.3"
PROXY_DEST_SIDE, DEST_IP = "10.231.2.1", "10.231.2.2"


@dataclass
class Hosts:
    client: str
    proxy: str
    dest: str

    def exec(self, ns: str) -> tuple[str, ...]:
        return ("ip", "netns", "exec", ns)

    def run(self, ns: str, *args: str, timeout: float = 60) -> dict[str, object]:
        """``python -m tests.robustness.netns_peer ARGS`` in namespace ``ns``; its JSON."""
        return run_in_netns(ns, "tests.robustness.netns_peer", *args, timeout=timeout)


@pytest.fixture(scope="module")
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2")
    tag = f"gpr{os.getpid()}"
    names = Hosts(f"{tag}c", f"{tag}p", f"{tag}d")
    with network_namespaces(names.client, names.proxy, names.dest):
        for (a_ns, a_ip), (b_ns, b_ip), n in (
            ((names.client, CLIENT_IP), (names.proxy, PROXY_CLIENT_SIDE), "a"),
            ((names.proxy, PROXY_DEST_SIDE), (names.dest, DEST_IP), "b"),
        ):
            left, right = f"{tag}{n}0", f"{tag}{n}1"
            run_ip("link", "add", left, "netns", a_ns, "type", "veth", "peer", "name", right, "netns", b_ns)
            for ns, dev, ip in ((a_ns, left, a_ip), (b_ns, right, b_ip)):
                run_ip("-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
                run_ip("-n", ns, "link", "set", dev, "up")
        run_ip("-n", names.client, "addr", "add", f"{NEIGHBOUR_IP}/24", "dev", f"{tag}a0")
        yield names


@pytest.fixture(scope="module")
def dest(hosts: Hosts) -> Iterator[dict[str, int]]:
    """TCP and UDP echo servers in the destination namespace."""
    proc = subprocess.Popen(
        [*hosts.exec(hosts.dest), sys.executable, "-m", "tests.robustness.netns_peer", "echo", DEST_IP],
        stdout=subprocess.PIPE,
        text=True,
        env=gproxy_env(),
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait(10)


def _gproxy(hosts: Hosts, *args: str) -> DrainedGproxy:
    listen = f"{PROXY_CLIENT_SIDE}:0"
    return DrainedGproxy(
        "--socks", listen, "--allow", f"{CLIENT_IP}/32", "--connect-timeout", "10", *args,
        prefix=hosts.exec(hosts.proxy),
    )  # fmt: skip


def test_udp_relay_is_bound_on_the_control_connections_local_ip(hosts, dest):
    with _gproxy(hosts) as gproxy:
        seen = hosts.run(
            hosts.client, "udp-associate", PROXY_CLIENT_SIDE, str(gproxy.port()), DEST_IP, str(dest["udp"])
        )
    assert seen["bound"][0] == PROXY_CLIENT_SIDE, seen
    assert seen["control_local"] == CLIENT_IP
    assert seen["payload"] == "across namespaces", seen
    assert seen["source"] == [DEST_IP, dest["udp"]], seen


def test_udp_advertise_is_announced(hosts, dest):
    advertised = "10.231.9.9"
    with _gproxy(hosts, "--udp-advertise", advertised) as gproxy:
        seen = hosts.run(
            hosts.client, "udp-associate", PROXY_CLIENT_SIDE, str(gproxy.port()), DEST_IP, str(dest["udp"])
        )
    assert seen["bound"][0] == advertised, seen
    assert "payload" not in seen  # nothing answers at the advertised address in this test network


@pytest.mark.parametrize(
    ("host", "port_key", "reply"),
    [
        ("10.231.77.7", None, 0x03),  # no route from gproxy's namespace: network unreachable
        ("10.231.2.99", None, 0x04),  # on gproxy's link but nobody answers ARP: host unreachable
        (DEST_IP, "closed", 0x05),  # the host is there, the port is closed: refused
        (DEST_IP, "tcp", 0x00),
    ],
    ids=["net-unreachable", "host-unreachable", "refused", "reachable"],
)
def test_connect_reply_codes_across_hosts(hosts, dest, host, port_key, reply):
    port = {"tcp": dest["tcp"], "closed": 9, None: 80}[port_key]
    with _gproxy(hosts) as gproxy:
        seen = hosts.run(hosts.client, "connect", PROXY_CLIENT_SIDE, str(gproxy.port()), host, str(port))
    assert seen["reply"] == reply, seen


def test_udp_association_serves_only_its_client(hosts, dest):
    """Datagrams to the relay from another port, or another host on the client's
    link, are dropped: an association is not an open UDP relay."""
    with _gproxy(hosts, "--allow", f"{NEIGHBOUR_IP}/32") as gproxy:
        seen = hosts.run(
            hosts.client,
            "udp-intruders",
            PROXY_CLIENT_SIDE,
            str(gproxy.port()),
            DEST_IP,
            str(dest["udp"]),
            NEIGHBOUR_IP,
        )
    assert seen == {"owner": True, "other-port": False, "other-ip": False}, seen


@pytest.mark.parametrize("listener", ["socks", "forward"])
def test_no_bytes_lost_with_small_send_buffers(hosts, dest, listener):
    """A lowered tcp_wmem (a usual tuning for hosts with many connections) makes send()
    accept nothing right after a full send; every byte must still arrive, in order
    (guards the class "a chunk read from one side is dropped before the other side took it")."""
    subprocess.run(
        [*hosts.exec(hosts.proxy), "sysctl", "-q", "-w", "net.ipv4.tcp_wmem=4096 16384 65536"],
        check=True,
        capture_output=True,
        timeout=20,
    )
    size = 2 * 1024 * 1024
    runs = []  # a few runs: the kernel refuses a send only now and then (tests/core/test_relay_engine.py forces it)
    if listener == "socks":
        with _gproxy(hosts) as gproxy:
            args = ("bulk", PROXY_CLIENT_SIDE, str(gproxy.port()), DEST_IP, str(dest["tcp"]), str(size))
            runs = [hosts.run(hosts.client, *args) for _ in range(4)]
    else:
        forward = f"{PROXY_CLIENT_SIDE}:0={DEST_IP}:{dest['tcp']}"
        with DrainedGproxy(
            "--forward", forward, "--allow", f"{CLIENT_IP}/32", prefix=hosts.exec(hosts.proxy)
        ) as gproxy:
            args = ("bulk-direct", PROXY_CLIENT_SIDE, str(gproxy.port("forward")), str(size))
            runs = [hosts.run(hosts.client, *args) for _ in range(4)]
    for seen in runs:
        assert seen["received"] == size, seen
        assert seen["echoed"] == seen["sent"], seen
