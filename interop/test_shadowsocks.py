"""shadowsocks-libev both ways, for every method: ss-local and ss-tunnel -> gproxy --ss, and
gproxy (ss:// upstream) -> ss-server; TCP with a sha256-checked bulk transfer, and UDP (through
gproxy: a SOCKS5 UDP ASSOCIATE relayed as Shadowsocks UDP)."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from interop.support import ROOT, V4, Target, need_tool

METHODS = ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]
USER, PASSWORD = "alice", "ss-Interop-pw"
BULK = 4 * 1024 * 1024


# -- origins -----------------------------------------------------------------------------


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        while data := sock.recv(65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)


class _UdpEcho(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        sock.sendto(data, self.client_address)


@pytest.fixture(scope="module")
def echo() -> Iterator[tuple[int, int]]:
    """(TCP echo port, UDP echo port) on 127.0.0.1."""
    tcp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    tcp.daemon_threads = True
    udp = socketserver.UDPServer(("127.0.0.1", 0), _UdpEcho)
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in (tcp, udp)]
    for thread in threads:
        thread.start()
    yield tcp.server_address[1], udp.server_address[1]
    for server in (tcp, udp):
        server.shutdown()
        server.server_close()


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    """A port number free for both TCP and UDP on 127.0.0.1 (for tools that cannot take port 0)."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(port)
    raise RuntimeError("no port free for both TCP and UDP")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


class Procs:
    """Processes this test started; stopped by PID at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed when the process ends)
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(list(args), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        log.close()
        self.running.append(proc)
        return proc

    def gproxy(self, name: str, *args: str) -> tuple[int, Path]:
        """Start gproxy; (its first listener's port, its access log)."""
        access = self.workdir / f"{name}.access"
        proc = self.start(name, sys.executable, "-m", "gproxy", "--access-log", str(access), *args)
        deadline = time.monotonic() + 20
        log = self.workdir / f"{name}.log"
        while time.monotonic() < deadline:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("gproxy: listening "):
                    return int(line.rsplit(":", 1)[1]), access
            if proc.poll() is not None:
                raise RuntimeError(f"gproxy exited: {log.read_text()}")
            time.sleep(0.05)
        raise RuntimeError("gproxy did not start")

    def stop(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    running = Procs(tmp_path)
    yield running
    running.stop()


# -- SOCKS5 client (ss-local and gproxy speak it) ---------------------------------------------


def socks5_request(port: int, command: int, dest: tuple[str, int]) -> tuple[socket.socket, tuple[str, int]]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    sock.sendall(b"\x05" + bytes([command]) + b"\x00\x01" + socket.inet_aton(dest[0]) + dest[1].to_bytes(2, "big"))
    reply = b""
    while len(reply) < 10:
        chunk = sock.recv(10 - len(reply))
        assert chunk, reply
        reply += chunk
    assert reply[1] == 0, reply
    return sock, (socket.inet_ntoa(reply[4:8]), int.from_bytes(reply[8:10], "big"))


def bulk_echo(sock: socket.socket, size: int = BULK) -> None:
    """Send ``size`` random bytes while reading them back; the sha256 of both must match."""
    data = os.urandom(size)
    sender = threading.Thread(target=sock.sendall, args=(data,))
    sender.start()
    digest = hashlib.sha256()
    got = 0
    while got < size:
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {got} of {size} bytes"
        digest.update(chunk)
        got += len(chunk)
    sender.join(30)
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    sock.shutdown(socket.SHUT_WR)
    assert sock.recv(1) == b""  # the echo's EOF comes back through the tunnel: half-close works
    sock.close()


def udp_round_trip(relay: tuple[str, int], dest: tuple[str, int]) -> None:
    header = b"\x00\x00\x00\x01" + socket.inet_aton(dest[0]) + dest[1].to_bytes(2, "big")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        payload = os.urandom(1200)
        for _ in range(5):  # UDP: a first datagram may race the relay's setup
            sock.sendto(header + payload, relay)
            try:
                reply, _ = sock.recvfrom(65535)
            except TimeoutError:
                continue
            assert reply == header + payload
            return
    raise AssertionError("no UDP reply through the relay")


def logged(access: Path, proto: str, cmd: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in access.read_text().splitlines() if access.exists() else []:
            if f"proto={proto}" in line and f"cmd={cmd}" in line:
                return line
        time.sleep(0.1)
    raise AssertionError(f"no proto={proto} cmd={cmd} line in {access}")


# -- the cases ---------------------------------------------------------------------------------


def matrix_row(client: str):  # type: ignore[no-untyped-def]
    """One matrix row per (client, method): an IPv4 destination, with the key as the credential."""

    def apply(fn):  # type: ignore[no-untyped-def]
        params = [pytest.param(m, marks=pytest.mark.client(f"{client} {m}"), id=m) for m in METHODS]
        fn = pytest.mark.parametrize("method", params)(fn)
        fn = pytest.mark.parametrize("auth", ["auth"])(fn)
        return pytest.mark.parametrize("dest", [pytest.param(V4, id="v4")])(fn)

    return apply


@matrix_row("ss-local")
def test_ss_local_to_gproxy(dest: Target, auth: str, method: str, procs: Procs, echo: tuple[int, int]) -> None:
    ss_local = need_tool("ss-local")
    port, access = procs.gproxy(
        "gproxy-ss", "--ss", "127.0.0.1:0", "--ss-method", method, "--user", f"{USER}:{PASSWORD}"
    )
    local = free_port()
    proc = procs.start("ss-local", ss_local, "-s", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1", "-l", str(local),
                       "-k", PASSWORD, "-m", method, "-u")  # fmt: skip
    wait_port(local, proc)
    sock, _ = socks5_request(local, 1, ("127.0.0.1", echo[0]))
    bulk_echo(sock)
    line = logged(access, "ss", "connect")
    assert f"user={USER}" in line and f"up={BULK}" in line and f"down={BULK}" in line, line
    control, relay = socks5_request(local, 3, ("0.0.0.0", 0))
    try:
        udp_round_trip(relay, ("127.0.0.1", echo[1]))
    finally:
        control.close()


@matrix_row("ss-tunnel")
def test_ss_tunnel_to_gproxy(dest: Target, auth: str, method: str, procs: Procs, echo: tuple[int, int]) -> None:
    ss_tunnel = need_tool("ss-tunnel")
    port, _ = procs.gproxy("gproxy-ss", "--ss", "127.0.0.1:0", "--ss-method", method, "--user", f"{USER}:{PASSWORD}")
    tcp_local, udp_local = free_port(), free_port()
    tcp = procs.start("ss-tunnel-tcp", ss_tunnel, "-s", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1",
                      "-l", str(tcp_local), "-k", PASSWORD, "-m", method, "-L", f"127.0.0.1:{echo[0]}")  # fmt: skip
    procs.start("ss-tunnel-udp", ss_tunnel, "-s", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1",
                "-l", str(udp_local), "-k", PASSWORD, "-m", method, "-U", "-L", f"127.0.0.1:{echo[1]}")  # fmt: skip
    wait_port(tcp_local, tcp)
    bulk_echo(socket.create_connection(("127.0.0.1", tcp_local), timeout=15))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        payload = os.urandom(1000)
        for _ in range(10):  # ss-tunnel's UDP side has no port to wait for
            sock.sendto(payload, ("127.0.0.1", udp_local))
            try:
                assert sock.recvfrom(65535)[0] == payload
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("no UDP reply through ss-tunnel -> gproxy --ss")


@matrix_row("gproxy ss:// -> ss-server")
def test_gproxy_upstream_to_ss_server(
    dest: Target, auth: str, method: str, procs: Procs, echo: tuple[int, int]
) -> None:
    ss_server = need_tool("ss-server")
    server_port = free_port()
    proc = procs.start("ss-server", ss_server, "-s", "127.0.0.1", "-p", str(server_port), "-k", PASSWORD,
                       "-m", method, "-u")  # fmt: skip
    wait_port(server_port, proc)

    userinfo = base64.urlsafe_b64encode(f"{method}:{PASSWORD}".encode()).decode().rstrip("=")
    socks, access = procs.gproxy(
        "gproxy-chain", "--socks", "127.0.0.1:0", "--upstream", f"ss://{userinfo}@127.0.0.1:{server_port}"
    )
    sock, _ = socks5_request(socks, 1, ("127.0.0.1", echo[0]))
    bulk_echo(sock)
    line = logged(access, "socks5", "connect")
    assert f"up={BULK}" in line and f"down={BULK}" in line, line
    # UDP ASSOCIATE on gproxy: its datagrams go to ss-server -u as Shadowsocks UDP
    control, relay = socks5_request(socks, 3, ("0.0.0.0", 0))
    try:
        udp_round_trip(relay, ("127.0.0.1", echo[1]))
    finally:
        control.close()
    line = logged(access, "socks5", "udp-associate")
    assert f"via=ss://{method}:***@127.0.0.1:{server_port}" in line, line
    assert "up=0 " not in line and "down=0 " not in line, line
