"""Datagrams per second through SOCKS5 UDP ASSOCIATE against a direct UDP echo.

    python bench/udp_assoc.py [--count 50000] [--window 32] [--size 64] [--forward]

Starts a UDP echo server (its own process) and ``python -m gproxy --socks
127.0.0.1:0`` (its own process), then runs the same windowed echo load
twice in one run: straight to the echo server, then through an association.
Prints both rates and their ratio. ``--forward`` adds a third run through a
``--udp-forward`` listener to the same echo server. Loopback only, port 0 everywhere.
"""

from __future__ import annotations

import argparse
import ipaddress
import multiprocessing
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from proxyprocs import checkout_env

ROOT = Path(__file__).resolve().parent.parent


def echo_server(port_out: multiprocessing.connection.Connection) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port_out.send(sock.getsockname()[1])
    while True:
        data, peer = sock.recvfrom(65535)
        sock.sendto(data, peer)


def start_gproxy(forward_to: int | None) -> tuple[subprocess.Popen[bytes], int, int | None]:
    """gproxy with --socks (and --udp-forward to 127.0.0.1:``forward_to``): (process, socks port, forward port)."""
    env = checkout_env(ROOT)
    argv = [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:0", "-q"]
    if forward_to is not None:
        argv += ["--udp-forward", f"127.0.0.1:0=127.0.0.1:{forward_to}"]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    assert proc.stderr is not None
    ports: dict[str, int] = {}
    for _ in range(1 if forward_to is None else 2):
        line = proc.stderr.readline().decode()
        if not line.startswith("gproxy: listening "):
            proc.kill()
            raise SystemExit(f"gproxy did not start: {line!r}")
        ports[line.split()[2]] = int(line.rsplit(":", 1)[1])
    return proc, ports["socks5"], ports.get("udp-forward")


def associate(proxy_port: int) -> tuple[socket.socket, tuple[str, int]]:
    control = socket.create_connection(("127.0.0.1", proxy_port), timeout=5)
    control.sendall(b"\x05\x01\x00")
    assert control.recv(2) == b"\x05\x00"
    control.sendall(b"\x05\x03\x00\x01\0\0\0\0\0\0")
    reply = control.recv(10)
    assert reply[1] == 0, reply
    host = str(ipaddress.IPv4Address(reply[4:8]))
    (port,) = struct.unpack("!H", reply[8:10])
    return control, (host, port)


def run_load(target: tuple[str, int], header: bytes, count: int, window: int, size: int) -> tuple[float, int]:
    """Send ``count`` datagrams, at most ``window`` outstanding; (datagrams/s, lost)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    datagram = header + b"x" * size
    received = sent = 0
    started = time.perf_counter()
    while sent < count:
        burst = min(window, count - sent)
        for _ in range(burst):
            sock.sendto(datagram, target)
        sent += burst
        for _ in range(burst):
            try:
                sock.recv(65535)
            except TimeoutError:
                break
            received += 1
    elapsed = time.perf_counter() - started
    sock.close()
    return received / elapsed, count - received


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--size", type=int, default=64, help="payload bytes per datagram")
    parser.add_argument("--forward", action="store_true", help="also measure a --udp-forward listener")
    args = parser.parse_args()

    parent, child = multiprocessing.Pipe()
    echo = multiprocessing.Process(target=echo_server, args=(child,), daemon=True)
    echo.start()
    echo_port = parent.recv()
    proxy, proxy_port, forward_port = start_gproxy(echo_port if args.forward else None)
    forwarded = forwarded_lost = None
    try:
        direct, direct_lost = run_load(("127.0.0.1", echo_port), b"", args.count, args.window, args.size)
        control, relay = associate(proxy_port)
        header = b"\0\0\0\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_port)
        proxied, proxied_lost = run_load(relay, header, args.count, args.window, args.size)
        control.close()
        if forward_port is not None:
            forwarded, forwarded_lost = run_load(("127.0.0.1", forward_port), b"", args.count, args.window, args.size)
    finally:
        proxy.terminate()
        proxy.wait(10)
        echo.terminate()
    print(f"datagrams: {args.count}, window {args.window}, payload {args.size} bytes")
    print(f"direct UDP echo:       {direct:9.0f} datagrams/s round trip ({direct_lost} lost)")
    print(f"through UDP ASSOCIATE: {proxied:9.0f} datagrams/s round trip ({proxied_lost} lost)")
    print(f"ratio: {proxied / direct:.2f}")
    if forwarded is not None:
        print(f"through --udp-forward: {forwarded:9.0f} datagrams/s round trip ({forwarded_lost} lost)")
        print(f"ratio: {forwarded / direct:.2f}")


if __name__ == "__main__":
    main()
