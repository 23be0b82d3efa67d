"""Re-record the Shadowsocks test vectors from shadowsocks-libev (run by hand; tests only read the JSON).

    PYTHONPATH=$PWD python tests/codec/data/shadowsocks/record.py

For each method: what ss-local sends to a fake server (TCP, UDP), and what ss-server sends
back from a loopback echo target (TCP, UDP). Everything binds 127.0.0.1; needs ss-local, ss-server.
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from gproxy.codec import shadowsocks as ss
from gproxy.codec.socks5 import encode_address
from gproxy.core.addr import Address

HERE = Path(__file__).parent
PASSWORD = "gproxy-vector-password"
BIG = 20000  # more than one 0x3FFF chunk


def pattern(size: int) -> bytes:
    """The payload of the big cases (tests rebuild it the same way)."""
    return bytes(i % 251 for i in range(size))


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def recv_all(sock: socket.socket, timeout: float = 3.0) -> bytes:
    sock.settimeout(timeout)
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def socks5_handshake(port: int, command: int, target: Address) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"\x05\x01\x00")
    assert sock.recv(2) == b"\x05\x00"
    sock.sendall(bytes((5, command, 0)) + encode_address(target))
    reply = sock.recv(262)
    assert reply[:2] == b"\x05\x00", reply
    return sock, reply


def case(target: Address | None, payload: bytes, ciphertext: bytes, big: bool) -> dict[str, object]:
    header = encode_address(target) if target is not None else b""
    plaintext = header + payload
    out: dict[str, object] = {"header_hex": header.hex(), "plaintext_sha256": hashlib.sha256(plaintext).hexdigest()}
    out["payload_pattern_size" if big else "payload_hex"] = len(payload) if big else payload.hex()
    out["ciphertext_hex"] = ciphertext.hex()
    return out


def record_ss_local_tcp(method: str) -> list[dict[str, object]]:
    """Ciphertext ss-local sends for one CONNECT carrying ``payload``."""
    cases = []
    for target, payload, big in (
        (Address("example.com", 80), b"GET / HTTP/1.0\r\n\r\n", False),
        (Address("192.0.2.7", 8443), pattern(BIG), True),
    ):
        with socket.create_server(("127.0.0.1", 0)) as fake:
            sport, lport = fake.getsockname()[1], free_port(socket.SOCK_STREAM)
            args = ["-s", "127.0.0.1", "-p", str(sport), "-b", "127.0.0.1", "-l", str(lport)]
            proc = subprocess.Popen(["ss-local", *args, "-k", PASSWORD, "-m", method])
            try:
                wait_tcp(lport)
                client, _ = socks5_handshake(lport, 1, target)
                client.sendall(payload)
                conn, _ = fake.accept()
                time.sleep(0.5)
                client.close()
                with conn:
                    cases.append(case(target, payload, recv_all(conn), big))
            finally:
                proc.terminate()
                proc.wait()
    return cases


def record_ss_local_udp(method: str) -> list[dict[str, object]]:
    """The packet ss-local sends for one SOCKS5 UDP datagram."""
    target, payload = Address("198.51.100.9", 53), b"\x12\x34 a small datagram"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fake:
        fake.bind(("127.0.0.1", 0))
        fake.settimeout(5)
        sport, lport = fake.getsockname()[1], free_port(socket.SOCK_STREAM)
        args = ["-s", "127.0.0.1", "-p", str(sport), "-b", "127.0.0.1", "-l", str(lport), "-u"]
        proc = subprocess.Popen(["ss-local", *args, "-k", PASSWORD, "-m", method])
        try:
            wait_tcp(lport)
            control, reply = socks5_handshake(lport, 3, Address("0.0.0.0", 0))
            with control:
                relay_port = struct.unpack("!H", reply[-2:])[0]
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.sendto(b"\0\0\0" + encode_address(target) + payload, ("127.0.0.1", relay_port))
                    packet, _ = fake.recvfrom(65536)
        finally:
            proc.terminate()
            proc.wait()
    return [case(target, payload, packet, False)]


def echo_tcp(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)


def record_ss_server(method: str) -> dict[str, list[dict[str, object]]]:
    """What ss-server sends back (TCP and UDP) from a loopback echo target."""
    m = ss.METHODS[method]
    key = ss.derive_key(PASSWORD, m)
    port = free_port(socket.SOCK_STREAM)
    proc = subprocess.Popen(["ss-server", "-s", "127.0.0.1", "-p", str(port), "-k", PASSWORD, "-m", method, "-u"])
    tcp_cases, udp_cases = [], []
    try:
        wait_tcp(port)
        for payload, big in ((b"hello from the echo target", False), (pattern(BIG), True)):
            with socket.create_server(("127.0.0.1", 0)) as echo:
                thread = threading.Thread(target=echo_tcp, args=(echo,), daemon=True)
                thread.start()
                enc, dec = ss.TcpEncryptor(key, m), ss.TcpDecryptor(key, m)
                target = Address("127.0.0.1", echo.getsockname()[1])
                with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                    conn.sendall(enc.encrypt(encode_address(target) + payload))
                    raw, plain = bytearray(), bytearray()
                    while len(plain) < len(payload):
                        chunk = conn.recv(65536)
                        if not chunk:
                            raise RuntimeError("ss-server closed early")
                        raw += chunk
                        plain += dec.feed(chunk)
                    assert plain == payload
                thread.join(5)
                tcp_cases.append(case(None, payload, bytes(raw), big))
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
        ):
            echo.bind(("127.0.0.1", 0))
            echo.settimeout(5)
            client.settimeout(5)
            target = Address("127.0.0.1", echo.getsockname()[1])
            payload = b"a datagram echoed by the target"
            client.sendto(ss.encrypt_udp(key, m, encode_address(target) + payload), ("127.0.0.1", port))
            data, peer = echo.recvfrom(65536)
            echo.sendto(data, peer)
            packet, _ = client.recvfrom(65536)
            udp_cases.append(case(target, payload, packet, False))
    finally:
        proc.terminate()
        proc.wait()
    return {"tcp_server": tcp_cases, "udp_server": udp_cases}


def main() -> None:
    for method in ss.METHODS:
        record = {
            "method": method,
            "password": PASSWORD,
            "recorded_with": subprocess.run(["ss-server", "-h"], capture_output=True, text=True).stdout.split("\n")[1],
            "tcp_client": record_ss_local_tcp(method),
            "udp_client": record_ss_local_udp(method),
            **record_ss_server(method),
        }
        path = HERE / f"{method}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        print("wrote", path)


if __name__ == "__main__":
    main()
