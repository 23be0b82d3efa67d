"""--ss end to end, with gproxy's own codec as the client: CONNECT, users told apart by key,
per-user rules, probes and replays (no answer, no early close), UDP, and bad flags (exit 2)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from gproxy import Config, Proxy
from gproxy.codec import shadowsocks as ss
from gproxy.codec.socks5 import encode_address, parse_address
from gproxy.core.addr import Address
from tests.helpers import (
    ROOT,
    EchoServer,
    UdpEchoServer,
    access_lines,
    child_pids,
    cyclic_garbage,
    gproxy_env,
    metric,
    recv_all,
    scrape_metrics,
    start_gproxy,
    wait_for,
)

METHODS = ["chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm"]
HANDSHAKE = 1.0


class SsClient:
    """A Shadowsocks TCP client: sends the address header at once, then whatever it is given."""

    def __init__(self, port: int, password: str, method: str, dest: Address, first: bytes = b"") -> None:
        self.method = ss.method_by_name(method)
        key = ss.derive_key(password, self.method)
        self.encryptor = ss.TcpEncryptor(key, self.method)
        self.decryptor = ss.TcpDecryptor(key, self.method)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.first = self.encryptor.encrypt(encode_address(dest) + first)
        self.sock.sendall(self.first)
        self.plain = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(self.encryptor.encrypt(data))

    def recv_exact(self, n: int) -> bytes:
        while len(self.plain) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(f"EOF after {len(self.plain)} of {n} bytes")
            self.plain += self.decryptor.feed(data)
        out = bytes(self.plain[:n])
        del self.plain[:n]
        return out

    def close(self) -> None:
        self.sock.close()


class UdpSsClient:
    """Shadowsocks UDP from one socket of its own, to a UDP echo server through gproxy."""

    def __init__(self, port: int, key: bytes, method: ss.Method, echo: UdpEchoServer) -> None:
        self.port, self.key, self.method = port, key, method
        self.header = encode_address(Address("127.0.0.1", echo.port))
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(5)

    def seal(self, payload: bytes, salt: bytes | None = None) -> bytes:
        return ss.encrypt_udp(self.key, self.method, self.header + payload, salt)

    def first_answer(self, *packets: bytes) -> bytes:
        """Send ``packets``, then a fresh one; the payload of the first reply (loopback keeps the order)."""
        for packet in [*packets, self.seal(b"fresh")]:
            self.sock.sendto(packet, ("127.0.0.1", self.port))
        reply, _ = self.sock.recvfrom(65535)
        plain = ss.decrypt_udp(self.key, self.method, reply)
        parsed = parse_address(plain, 0)
        assert parsed is not None
        return plain[parsed[1] :]


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer("127.0.0.1") as server:
        yield server


def start(tmp_path: Path, method: str = "chacha20-ietf-poly1305", **extra: object) -> Proxy:
    settings = {
        "ss": ["127.0.0.1:0"],
        "ss-method": method,
        "user": ["alice:alice-pw", "carol:$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"],
        "handshake-timeout": HANDSHAKE,
        "connect-timeout": 5.0,
        "access-log": str(tmp_path / "access.log"),
    }
    tables = {"users": {"bob": {"password": "bob-pw", "deny-dest": ["127.0.0.1"]}}}
    settings.update(extra)
    return Proxy(Config.from_settings(settings, tables)).start()


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Proxy]:
    proxy = start(tmp_path)
    yield proxy
    proxy.stop(0)


def log_lines(tmp_path: Path, count: int) -> list[str]:
    path = tmp_path / "access.log"
    for _ in range(100):
        lines = access_lines(path)
        if len(lines) >= count:
            return lines
        gevent.sleep(0.05)
    raise AssertionError(f"wanted {count} access-log lines, got {lines}")


@pytest.mark.parametrize("method", METHODS)
def test_connect_and_echo(tmp_path: Path, echo: EchoServer, method: str) -> None:
    proxy = start(tmp_path, method)
    try:
        port = proxy.address("ss").port
        data = os.urandom(300_000)
        client = SsClient(port, "alice-pw", method, Address(echo.host, echo.port), first=data[:100])
        client.send(data[100:])
        assert client.recv_exact(len(data)) == data
        client.sock.shutdown(socket.SHUT_WR)  # half-close: the echo answers EOF with EOF
        rest = recv_all(client.sock)
        assert client.decryptor.feed(rest) == b""
        client.close()
        (line,) = log_lines(tmp_path, 1)
        assert "proto=ss" in line and "cmd=connect" in line and "user=alice" in line and "outcome=ok" in line
        assert f"up={len(data)}" in line and f"down={len(data)}" in line
    finally:
        proxy.stop(0)


def test_users_told_apart_and_their_own_rules(tmp_path: Path, running: Proxy, echo: EchoServer) -> None:
    port = running.address("ss").port
    alice = SsClient(port, "alice-pw", "chacha20-ietf-poly1305", Address(echo.host, echo.port), b"hi")
    assert alice.recv_exact(2) == b"hi"
    alice.close()
    bob = SsClient(port, "bob-pw", "chacha20-ietf-poly1305", Address(echo.host, echo.port), b"hi")
    assert recv_all(bob.sock) == b""  # denied for bob: closed, nothing relayed
    bob.close()
    lines = log_lines(tmp_path, 2)
    assert any("user=alice" in line and "outcome=ok" in line for line in lines), lines
    assert any("user=bob" in line and "outcome=denied" in line for line in lines), lines


def _probe_closes_after(port: int, payload: bytes) -> float:
    """Send ``payload``, then wait for gproxy to close: no byte may come back; returns the seconds it took."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    started = time.monotonic()
    try:
        sock.sendall(payload)
        assert recv_all(sock) == b""
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return time.monotonic() - started


def _probes(port: int, echo: EchoServer) -> dict[str, bytes]:
    method = ss.method_by_name("chacha20-ietf-poly1305")
    valid = SsClient(port, "alice-pw", method.name, Address(echo.host, echo.port), b"x" * 200)
    assert valid.recv_exact(200) == b"x" * 200
    valid.close()
    wrong = ss.TcpEncryptor(ss.derive_key("not-a-user", method), method).encrypt(
        encode_address(Address(echo.host, echo.port)) + b"hello"
    )
    return {
        "random": os.urandom(200),
        "truncated": valid.first[: method.tcp_header_size + 5],  # a valid length, then a short chunk
        "wrong-key": wrong,
        "replay": valid.first,  # byte for byte what a valid client sent
    }


def test_probes_get_no_answer_and_no_early_close(tmp_path: Path, running: Proxy, echo: EchoServer) -> None:
    port = running.address("ss").port
    probes = _probes(port, echo)
    waits = {name: gevent.spawn(_probe_closes_after, port, payload) for name, payload in probes.items()}
    wait_for(lambda: running.open_sessions >= len(probes), timeout=10, what="every probe connected")
    # meanwhile a valid client is served
    client = SsClient(port, "alice-pw", "chacha20-ietf-poly1305", Address(echo.host, echo.port), b"still here")
    assert client.recv_exact(10) == b"still here"
    client.close()
    for name, wait in waits.items():
        took = wait.get(timeout=15)
        assert HANDSHAKE * 0.8 <= took <= HANDSHAKE + 5, (name, took)
    lines = log_lines(tmp_path, 2 + len(probes))
    assert sum("outcome=ss_probe" in line for line in lines) == len(probes), lines


def test_replays_are_refused_by_every_worker(echo: EchoServer, tmp_path: Path) -> None:
    """--workers 2: one first packet sent on many connections reaches the origin once, and one UDP
    packet sent from many addresses is answered once, whichever worker each lands on (the workers
    share one replay filter)."""
    log = tmp_path / "access.log"
    running = start_gproxy(
        *("--ss", "127.0.0.1:0", "--user", "alice:alice-pw", "--workers", "2", "--metrics", "127.0.0.1:0"),
        *("--handshake-timeout", "3", "--access-log", str(log)),
        listeners=2,
    )
    replays: list[socket.socket] = []
    udp_clients: list[UdpSsClient] = []
    try:
        port = running.port("ss")
        wait_for(lambda: len(child_pids(running.proc.pid)) == 2, what="two workers")
        client = SsClient(port, "alice-pw", "chacha20-ietf-poly1305", Address(echo.host, echo.port), b"hello")
        assert client.recv_exact(5) == b"hello"
        for _ in range(24):
            replays.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            replays[-1].sendall(client.first)

        def held_by_both_workers() -> list[float] | None:  # the client and every replay, on both workers
            samples = scrape_metrics(running.port("metrics"))
            held = [value for (name, _), value in samples.items() if name == "gproxy_worker_connections_active"]
            return held if sum(held) == 1 + len(replays) and len(held) == 2 and all(held) else None

        wait_for(held_by_both_workers, what="both workers holding replays")

        def probes_logged() -> bool:  # each replay judged: held silently, then let go as a probe
            return log.exists() and log.read_text().count("outcome=ss_probe") == len(replays)

        wait_for(probes_logged, what="every replay logged as a probe")
        assert echo.connections == 1
        assert [recv_all(sock) for sock in replays] == [b""] * len(replays)  # never a byte of answer
        client.close()
        with UdpEchoServer("127.0.0.1") as udp_echo:  # from 16 source ports: spread over both workers
            method = ss.method_by_name("chacha20-ietf-poly1305")
            udp_clients = [UdpSsClient(port, ss.derive_key("alice-pw", method), method, udp_echo) for _ in range(16)]
            packet = udp_clients[0].seal(b"once")
            answers = [udp.first_answer(packet) for udp in udp_clients]
            assert answers == [b"once"] + [b"fresh"] * (len(udp_clients) - 1)
    finally:
        for sock in replays:
            sock.close()
        for udp in udp_clients:
            udp.sock.close()
        running.stop()


def test_probe_that_closes_is_let_go(running: Proxy) -> None:
    port = running.address("ss").port
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(os.urandom(100))
    sock.shutdown(socket.SHUT_WR)
    started = time.monotonic()
    assert recv_all(sock) == b""
    assert time.monotonic() - started < HANDSHAKE * 0.8
    sock.close()


@pytest.mark.parametrize("method", METHODS)
def test_udp_round_trip(tmp_path: Path, method: str) -> None:
    proxy = start(tmp_path, method)
    m = ss.method_by_name(method)
    try:
        with UdpEchoServer("127.0.0.1") as echo:
            tcp, udp = proxy.address("ss"), proxy.address("ss-udp")
            assert udp.port == tcp.port
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(5)
            try:
                for user, password in (("alice", "alice-pw"), ("bob", "bob-pw")):
                    key = ss.derive_key(password, m)
                    payload = os.urandom(1000)
                    dest = Address("127.0.0.1", echo.port)
                    sock.sendto(ss.encrypt_udp(key, m, encode_address(dest) + payload), ("127.0.0.1", udp.port))
                    if user == "bob":  # 127.0.0.1 is denied for bob: dropped
                        with pytest.raises(TimeoutError):
                            sock.settimeout(0.5)
                            sock.recvfrom(65535)
                        continue
                    reply, _ = sock.recvfrom(65535)
                    plain = ss.decrypt_udp(key, m, reply)
                    parsed = parse_address(plain, 0)
                    assert parsed is not None
                    source, start_at = parsed
                    assert source == dest and plain[start_at:] == payload
                sock.settimeout(0.5)
                sock.sendto(os.urandom(100), ("127.0.0.1", udp.port))  # no key opens it: no answer
                with pytest.raises(TimeoutError):
                    sock.recvfrom(65535)
            finally:
                sock.close()
    finally:
        proxy.stop(0)
    lines = log_lines(tmp_path, 1)
    assert any("proto=ss" in line and "user=alice" in line and "cmd=udp" in line for line in lines), lines


def test_an_ended_udp_mapping_is_freed_without_the_cycle_collector(tmp_path: Path) -> None:
    proxy = start(tmp_path)
    method = ss.method_by_name("chacha20-ietf-poly1305")
    key = ss.derive_key("alice-pw", method)
    (service,) = [s for s in proxy._services if hasattr(s, "mappings")]
    try:
        with UdpEchoServer("127.0.0.1") as udp_echo, cyclic_garbage() as cyclic:
            for n in range(10):
                client = UdpSsClient(proxy.address("ss-udp").port, key, method, udp_echo)
                try:
                    assert client.first_answer(client.seal(b"%d" % n)) == b"%d" % n
                finally:
                    client.sock.close()
            loops = [loop for mapping in service.mappings.values() for loop in mapping.loops]
            service.mappings.end_all("ok")
            assert len(gevent.joinall(loops, timeout=10)) == len(loops)  # the kills have run
        assert "_Mapping" not in cyclic and "Session" not in cyclic, sorted(set(cyclic))
    finally:
        proxy.stop(0)


def test_udp_replays_are_dropped(tmp_path: Path, echo: EchoServer) -> None:
    """A salt seen before, in a UDP packet or on TCP, is dropped silently and counted as a probe."""
    proxy = start(tmp_path, metrics=["127.0.0.1:0"])
    method = ss.method_by_name("chacha20-ietf-poly1305")
    key = ss.derive_key("alice-pw", method)
    port = proxy.address("ss-udp").port
    clients: list[UdpSsClient] = []
    try:
        with UdpEchoServer("127.0.0.1") as udp_echo:
            first, other = clients = [UdpSsClient(port, key, method, udp_echo) for _ in range(2)]
            packet = first.seal(b"once")
            assert first.first_answer(packet) == b"once"
            # again: from the same address (its mapping's key is tried first), and from another one
            assert first.first_answer(packet) == b"fresh"
            assert other.first_answer(packet) == b"fresh"
            # a TCP stream's salt in a UDP packet, and a UDP packet's salt opening a TCP stream
            client = SsClient(port, "alice-pw", method.name, Address(echo.host, echo.port), b"tcp")
            assert client.recv_exact(3) == b"tcp"
            client.close()
            assert first.first_answer(first.seal(b"tcp salt", salt=client.encryptor.salt)) == b"fresh"
            replay = ss.TcpEncryptor(key, method, salt=packet[: method.salt_size])
            assert _probe_gets_nothing(port, replay.encrypt(encode_address(Address(echo.host, echo.port)) + b"x"))
        assert echo.connections == 1
        samples = scrape_metrics(proxy.address("metrics").port)
        assert metric(samples, "gproxy_udp_dropped_total", listener="ss", direction="up", reason="ss_probe") == 3
    finally:
        for client in clients:
            client.sock.close()
        proxy.stop(0)


def _probe_gets_nothing(port: int, payload: bytes) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        sock.settimeout(0.3)
        try:
            return not sock.recv(1)
        except TimeoutError:
            return True


def run_cli(*args: str, users_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--users-file", str(users_file)] if users_file else []
    return subprocess.run(
        [sys.executable, "-m", "gproxy", *args, *extra],
        capture_output=True,
        text=True,
        env=gproxy_env(),
        cwd=ROOT,
        timeout=30,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("--ss", "127.0.0.1:0"),
        ("--ss", "127.0.0.1:0", "--user", "u:$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234"),
        ("--ss", "127.0.0.1:0", "--user", "u:p", "--ss-method", "rc4-md5"),
        ("--socks", "127.0.0.1:0", "--upstream", "ss://bm90LWJhc2U2NA@127.0.0.1:8388"),
        ("--socks", "127.0.0.1:0", "--upstream", "ss://YWVzLTI1Ni1nY206cHc@127.0.0.1:8388/?plugin=obfs-local"),
        ("--socks", "127.0.0.1:0", "--upstream", "ss://YWVzLTI1Ni1nY206cHc@127.0.0.1:8388/?outline=1&plugin=#tag"),
        ("--socks", "127.0.0.1:0", "--upstream", "ss://aes-256-gcm:pw@127.0.0.1:8388/path#tag"),
        ("--socks", "127.0.0.1:0", "--upstream", "ss://rc4-md5:pw@127.0.0.1:8388"),
        ("--socks", "127.0.0.1:0", "--upstream", "ss://aes-256-gcm:pw@127.0.0.1"),
    ],
    ids=[
        "no-user",
        "hashed-only",
        "bad-method",
        "bad-base64",
        "plugin",
        "empty-plugin",
        "path",
        "bad-url-method",
        "no-port",
    ],
)
def test_bad_input_exits_2_with_one_line(args: tuple[str, ...]) -> None:
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gproxy: "), done.stderr
    assert "Traceback" not in done.stderr and "pw@" not in done.stderr


def test_users_file_with_only_hashed_users_exits_2(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("u:$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\n")
    done = run_cli("--ss", "127.0.0.1:0", users_file=users)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "clear-text" in done.stderr


# -- ss:// upstreams ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "method", "password"),
    [
        ("ss://YWVzLTI1Ni1nY206cGFzcw@h.example:8388", "aes-256-gcm", "pass"),  # SIP002, no padding
        ("ss://YWVzLTEyOC1nY206cDpx@h.example:8388/", "aes-128-gcm", "p:q"),  # padding-free, colon in password
        ("ss://Y2hhY2hhMjAtaWV0Zi1wb2x5MTMwNTp3b3Jk@[::1]:8388", "chacha20-ietf-poly1305", "word"),
        ("ss://aes-256-gcm:p%40ss@h.example:8388", "aes-256-gcm", "p@ss"),
        # SIP002's optional parts: a tag (ignored), and query parameters other than plugin (ignored)
        ("ss://Y2hhY2hhMjAtaWV0Zi1wb2x5MTMwNTpwdzE@127.0.0.1:8388#my-server", "chacha20-ietf-poly1305", "pw1"),
        ("ss://YWVzLTI1Ni1nY206cGFzcw@h.example:8388/?outline=1", "aes-256-gcm", "pass"),
        ("ss://YWVzLTI1Ni1nY206cGFzcw@h.example:8388/?outline=1#Tag%20with%20%40@:", "aes-256-gcm", "pass"),
        ("ss://aes-128-gcm:pw@h.example:8388#home", "aes-128-gcm", "pw"),
    ],
)
def test_parse_ss_url(url: str, method: str, password: str) -> None:
    from gproxy.core.upstream_url import parse_upstream

    upstream = parse_upstream(url)
    assert (upstream.scheme, upstream.port, upstream.username, upstream.password) == ("ss", 8388, method, password)
    assert password not in str(upstream) and password not in repr(upstream)


def socks5_connect(port: int, dest: Address) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    sock.sendall(b"\x05\x01\x00" + encode_address(dest))
    reply = sock.recv(10)
    assert reply[:2] == b"\x05\x00", reply
    return sock


@pytest.mark.parametrize("method", METHODS)
def test_socks_through_ss_upstream(tmp_path: Path, echo: EchoServer, method: str) -> None:
    server = start(tmp_path, method)
    try:
        url = f"ss://{method}:alice-pw@127.0.0.1:{server.address('ss').port}"
        with Proxy(Config.build(socks=["127.0.0.1:0"], upstream=url, handshake_timeout=5)).start() as chain:
            sock = socks5_connect(chain.address("socks5").port, Address(echo.host, echo.port))
            data = os.urandom(200_000)
            sender = gevent.spawn(sock.sendall, data)
            received = bytearray()
            while len(received) < len(data):
                chunk = sock.recv(65536)
                assert chunk
                received += chunk
            sender.get(timeout=10)
            assert bytes(received) == data
            sock.shutdown(socket.SHUT_WR)
            assert recv_all(sock) == b""
            sock.close()
        (line,) = log_lines(tmp_path, 1)
        assert "user=alice" in line and "proto=ss" in line and f"up={len(data)}" in line
    finally:
        server.stop(0)
