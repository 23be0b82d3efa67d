"""packaging/haproxy.cfg, run for real: HAProxy (send-proxy-v2) in front of two gproxy hosts.

Loopback stands in for the network: the client connects from 127.0.0.2, HAProxy
reaches gproxy from 127.0.0.1, and gproxy allows only 127.0.0.2. Skipped when
HAProxy is not installed (`apt-get install haproxy`; .ci/run does).
"""

import contextlib
import shutil
import socket
import subprocess
import time

import pytest

from tests.helpers import ROOT, GproxyProcess, access_lines, free_port, recv_exact

HAPROXY = shutil.which("haproxy")
pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed")
CLIENT_IP, STRANGER_IP = "127.0.0.2", "127.0.0.4"


def haproxy_config(lb_port: int, backend_ports: list[int]) -> str:
    """The README's example with loopback addresses in place of the real ones."""
    text = (ROOT / "packaging" / "haproxy.cfg").read_text()
    replacements = {"bind :1080": f"bind 127.0.0.1:{lb_port}"}
    for number, port in enumerate(backend_ports, 1):
        replacements[f"10.0.0.1{number}:1080"] = f"127.0.0.1:{port}"
    for old, new in replacements.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def socks_connect(lb_port: int, source_ip: str, echo) -> tuple[socket.socket, int]:
    """A raw SOCKS5 CONNECT through HAProxy from ``source_ip``; (socket, its source port)."""
    sock = socket.socket()
    sock.settimeout(10)
    sock.bind((source_ip, 0))
    sock.connect(("127.0.0.1", lb_port))
    sock.sendall(b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(echo.host) + echo.port.to_bytes(2, "big"))
    return sock, sock.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "haproxy exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("haproxy did not listen")


def read_lines(paths, want: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        lines = [line for path in paths for line in access_lines(path)]
        if len(lines) >= want:
            break
        time.sleep(0.05)
    return lines


def test_haproxy_send_proxy_v2_in_front_of_two_gproxies(tmp_path, echo_tcp):
    logs = [tmp_path / "g1.log", tmp_path / "g2.log"]
    gproxies = [
        GproxyProcess(
            "--socks",
            "127.0.0.1:0",
            "--proxy-protocol",
            "--allow",
            f"{CLIENT_IP}/32",
            "--allow-dest",
            "127.0.0.0/8",
            "--access-log",
            str(log),
        )
        for log in logs
    ]
    lb_port = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(lb_port, [g.port() for g in gproxies]))
    check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(config)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_listening(lb_port, haproxy)
        ports = []
        for _ in range(4):
            sock, port = socks_connect(lb_port, CLIENT_IP, echo_tcp)
            assert recv_exact(sock, 2) == b"\x05\x00"
            assert recv_exact(sock, 10)[:2] == b"\x05\x00"
            sock.sendall(b"via haproxy")
            assert recv_exact(sock, 11) == b"via haproxy"
            sock.close()
            ports.append(port)
        stranger, _ = socks_connect(lb_port, STRANGER_IP, echo_tcp)
        with stranger, contextlib.suppress(ConnectionResetError):
            assert stranger.recv(2) == b""  # gproxy refuses the real client address

        lines = read_lines(logs, 4)
        clients = sorted(line.split()[1] for line in lines)
        assert clients == sorted(f"client={CLIENT_IP}:{port}" for port in ports)
        assert all(line.endswith("outcome=ok") for line in lines)
        assert all(log.exists() and log.read_text() for log in logs), "leastconn should use both gproxy hosts"
    finally:
        haproxy.terminate()
        haproxy.wait(10)
        for pipe in (haproxy.stdout, haproxy.stderr):
            pipe.close()
        for gproxy in gproxies:
            assert gproxy.stop() == 0
