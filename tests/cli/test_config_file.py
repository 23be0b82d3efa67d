"""``--config FILE``: every key, flags over the file, errors that name the key (CLI end to end)."""

from __future__ import annotations

import ipaddress
import signal
import socket
import subprocess
import sys

import pytest

from gproxy.core.config import OPTIONS, Address, ListenerSpec
from gproxy.ops.cli import load_config
from tests.helpers import (
    ROOT,
    echo_through,
    gproxy_env,
    ipv4_dest,
    metric,
    recv_all,
    scrape_metrics,
    socks5_connect,
    start_gproxy,
    wait_for,
)

EVERY_KEY = """
socks = ["127.0.0.1:1080", "[::1]:1081"]
http = ["8080"]
mixed = ["127.0.0.1:8081"]
https = ["8443"]
socks-tls = ["1443"]
forward = ["2222=example.com:22"]
udp-forward = ["5353=127.0.0.1:53"]
metrics = ["9100"]
admin = ["9180"]
admin-token = "adm1n-t0ken"
redirect = ["12345"]
tproxy = ["127.0.0.1:12346"]
user = ["alice:s3cret", "bob:pw:with:colons"]
users-file = "{users}"
auth-cache = 30
allow = ["10.0.0.0/8", "192.168.1.0/24"]
deny = ["10.9.0.0/16"]
allow-dest = ["example.com"]
deny-dest = ["169.254.0.0/16", "internal.example"]
upstream = "socks5://u:p@127.0.0.1:9050"
upstream-strategy = "round-robin"
upstream-cooldown = 5
bypass = ["*.internal.example"]
ca = ["/etc/gproxy/ca.pem"]
connect-timeout = 3
idle-timeout = 60.5
handshake-timeout = 4
drain-timeout = 7
max-conns = 1000
max-conns-per-ip = 20
ipv6-prefix = 56
max-conns-per-user = 4
rate = "1.5M"
auth-url = "https://auth.example:8443/check?realm=proxy"
workers = 3
access-log = "/var/log/gproxy/access.log"
log-level = "warning"
cert = "/etc/gproxy/cert.pem"
key = "/etc/gproxy/key.pem"
proxy-protocol = true
udp-advertise = "203.0.113.7"
mark = 42
outgoing = ["127.0.0.2", "::1"]
resolver = ["127.0.0.53", "tls://dns.example"]
ss = ["8388"]
ss-method = "aes-256-gcm"
"""


def test_a_config_with_every_key(tmp_path):
    users = tmp_path / "users"
    users.write_text("carol:pw\n")
    path = tmp_path / "gproxy.toml"
    path.write_text(EVERY_KEY.format(users=users))
    in_file = {line.split(" = ")[0] for line in EVERY_KEY.strip().splitlines()}
    assert in_file == {option.key for option in OPTIONS}, "a new option needs a line here"

    config = load_config(["--config", str(path)])
    kinds = [(spec.kind, spec.host, spec.port) for spec in config.listeners]
    assert kinds == [
        ("socks5", "127.0.0.1", 1080),
        ("socks5", "::1", 1081),
        ("http", "127.0.0.1", 8080),
        ("mixed", "127.0.0.1", 8081),
        ("https", "127.0.0.1", 8443),
        ("socks5-tls", "127.0.0.1", 1443),
        ("forward", "127.0.0.1", 2222),
        ("udp-forward", "127.0.0.1", 5353),
        ("metrics", "127.0.0.1", 9100),
        ("admin", "127.0.0.1", 9180),
        ("redirect", "127.0.0.1", 12345),
        ("tproxy", "127.0.0.1", 12346),
        ("ss", "127.0.0.1", 8388),
    ]
    assert config.ss_method == "aes-256-gcm"
    assert config.admin_token == "adm1n-t0ken" and "adm1n-t0ken" not in repr(config)
    assert config.listeners[6] == ListenerSpec("forward", "127.0.0.1", 2222, Address("example.com", 22))
    assert config.users == (("alice", "s3cret"), ("bob", "pw:with:colons"))
    assert config.users_file == str(users)
    assert config.auth_cache == 30.0
    assert config.allow == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.0/24"))
    assert config.deny == (ipaddress.ip_network("10.9.0.0/16"),)
    assert tuple(map(str, config.allow_dest)) == ("example.com",)  # parsed rules print as written
    assert tuple(map(str, config.deny_dest)) == ("169.254.0.0/16", "internal.example")
    assert [(up.username, up.password) for up in config.upstream] == [("u", "p")]
    assert tuple(map(str, config.upstream)) == ("socks5://u:***@127.0.0.1:9050",)
    assert (config.upstream_strategy, config.upstream_cooldown) == ("round-robin", 5.0)
    assert (tuple(map(str, config.bypass)), config.ca) == (("*.internal.example",), ("/etc/gproxy/ca.pem",))
    assert (config.connect_timeout, config.idle_timeout, config.handshake_timeout, config.drain_timeout) == (
        3.0,
        60.5,
        4.0,
        7.0,
    )
    assert (config.max_conns, config.max_conns_per_ip, config.workers) == (1000, 20, 3)
    assert (config.max_conns_per_user, config.auth_url) == (4, "https://auth.example:8443/check?realm=proxy")
    assert config.rate == 3 << 19
    assert (config.access_log, config.log_level) == ("/var/log/gproxy/access.log", "warning")
    assert (config.cert, config.key) == ("/etc/gproxy/cert.pem", "/etc/gproxy/key.pem")
    assert config.proxy_protocol is True
    assert config.udp_advertise == "203.0.113.7"
    assert config.mark == 42
    assert config.outgoing == ("127.0.0.2", "::1")
    assert config.resolver == ("127.0.0.53", "tls://dns.example")


def test_flags_win_over_the_file(tmp_path, echo_tcp):
    path = tmp_path / "gproxy.toml"
    path.write_text('socks = ["127.0.0.1:0"]\nmetrics = ["127.0.0.1:0"]\nuser = ["file:pw"]\nmax-conns = 1\n')
    running = start_gproxy("--config", str(path), "--user", "flag:pw", "--max-conns", "5", listeners=2)
    try:
        addr = ("127.0.0.1", running.port("socks5"))
        dest = ipv4_dest(echo_tcp.host, echo_tcp.port)
        first, reply = socks5_connect(addr, dest, auth=(b"flag", b"pw"))
        assert reply[1] == 0
        second, reply = socks5_connect(addr, dest, auth=(b"flag", b"pw"))  # max-conns 5, not 1
        assert echo_through(second, b"2") == b"2"
        with socket.create_connection(addr, timeout=10) as sock:  # the file's user is replaced, not added to
            sock.sendall(b"\x05\x01\x02\x01\x04file\x02pw")
            assert recv_all(sock) == b"\x05\x02\x01\x01"
        first.close()
        second.close()

        def sessions() -> float:
            return metric(scrape_metrics(running.port("metrics")), "gproxy_sessions_total")

        wait_for(lambda: sessions() == 3, what="three sessions")
        assert metric(scrape_metrics(running.port("metrics")), "gproxy_auth_failures_total") == 1
        assert running.stop() == 0
    finally:
        running.__exit__()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gproxy", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=gproxy_env(),
        cwd=ROOT,
    )


def test_unknown_key_is_exit_2_naming_it(tmp_path):
    path = tmp_path / "gproxy.toml"
    path.write_text('socks = ["0"]\nidle_timeout = 5\n')
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown setting 'idle_timeout'" in result.stderr and str(path) in result.stderr


def test_wrong_type_is_exit_2_naming_it(tmp_path):
    path = tmp_path / "gproxy.toml"
    path.write_text('socks = ["0"]\nmax-conns = "lots"\n')
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "'max-conns' must be an integer" in result.stderr


def test_missing_file_is_exit_2(tmp_path):
    result = run_cli("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml" in result.stderr and result.stderr.count("\n") == 1


def test_sighup_rereads_the_config_file(tmp_path, echo_tcp):
    path = tmp_path / "gproxy.toml"
    path.write_text('socks = ["127.0.0.1:0"]\nuser = ["old:pw"]\n')
    running = start_gproxy("--config", str(path), "--idle-timeout", "30")
    try:
        addr = ("127.0.0.1", running.port("socks5"))
        dest = ipv4_dest(echo_tcp.host, echo_tcp.port)
        tunnel, _ = socks5_connect(addr, dest, auth=(b"old", b"pw"))
        path.write_text('socks = ["127.0.0.1:0"]\nuser = ["new:pw"]\n')
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reloaded" in line for line in running.stderr_lines), what="the reload")
        sock, reply = socks5_connect(addr, dest, auth=(b"new", b"pw"))
        assert reply[1] == 0
        sock.close()
        assert echo_through(tunnel, b"open") == b"open"  # the old user's tunnel stays

        path.write_text('socks = ["127.0.0.1:0"]\nuser = "new:pw"\nbogus = 1\n')
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload failed" in line for line in running.stderr_lines), what="the error")
        errors = [line for line in running.stderr_lines if "reload failed" in line]
        assert len(errors) == 1 and "'bogus'" in errors[0]
        sock, reply = socks5_connect(addr, dest, auth=(b"new", b"pw"))  # old settings kept
        assert reply[1] == 0
        sock.close()
        tunnel.close()
        assert running.stop() == 0
    finally:
        running.__exit__()


def test_a_rate_of_nan_or_inf_is_exit_2(tmp_path):
    path = tmp_path / "gproxy.toml"
    for value in ("nan", "inf", "-inf"):
        path.write_text(f'socks = ["0"]\nrate = {value}\n')
        result = run_cli("--config", str(path))
        assert result.returncode == 2, result.stderr
        assert result.stderr == f"gproxy: --rate: expected a rate such as 500k, 1M or 0, got {value}\n"


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_sighup_with_a_rate_of_inf_keeps_serving(tmp_path, echo_tcp, workers):
    """int(inf) raised OverflowError out of the SIGHUP handler: the process (the supervisor) died."""
    path = tmp_path / "gproxy.toml"
    path.write_text('socks = ["127.0.0.1:0"]\nuser = ["u:pw"]\n')
    running = start_gproxy("--config", str(path), *workers)
    try:
        addr = ("127.0.0.1", running.port("socks5"))
        path.write_text('socks = ["127.0.0.1:0"]\nuser = ["u:pw"]\nrate = inf\n')
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload failed" in line for line in running.stderr_lines), what="the error")
        errors = [line for line in running.stderr_lines if "reload failed" in line]
        assert errors == [
            "gproxy: ERROR: reload failed, keeping the old settings: --rate: expected a rate such as "
            "500k, 1M or 0, got inf\n"
        ]
        sock, reply = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port), auth=(b"u", b"pw"))
        assert reply[1] == 0
        sock.close()
        assert running.stop() == 0
        assert not any("Traceback" in line for line in running.stderr_lines)
    finally:
        running.__exit__()
