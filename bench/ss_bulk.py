"""Shadowsocks bulk: ss-local -> gproxy --ss against ss-local -> ss-server (C), same run, per method.

    PYTHONPATH=$PWD python bench/ss_bulk.py [--mb 200] [--rounds 2]

For each method, both servers run side by side, each behind an ss-local of its own, with the same
origin and client: a download (the origin sends --mb MB) and an upload (the client sends --mb MB),
the rounds alternating between the servers. Prints MB/s (1 MB = 10^6 bytes, the best of --rounds),
the server process's CPU seconds per GB (utime + stime from /proc, the round with the best MB/s)
and gproxy's MB/s over ss-server's. Everything runs on 127.0.0.1; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from proxyprocs import checkout_env, cpu_seconds, free_port, socks5_tunnel, wait_connectable

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("chacha20-ietf-poly1305", "aes-256-gcm", "aes-128-gcm")
PASSWORD = "bench-pw"
BLOCK = memoryview(os.urandom(1 << 20))


def origin() -> tuple[socket.socket, int]:
    """A TCP origin: ``D`` + size: sends size bytes; ``U`` + size: reads size bytes, answers ``k``."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)

    def serve(sock: socket.socket) -> None:
        with sock:
            head = b""
            while len(head) < 9:
                head += sock.recv(9 - len(head))
            size = int.from_bytes(head[1:], "big")
            if head[:1] == b"D":
                while size > 0:
                    size -= sock.send(BLOCK[: min(size, len(BLOCK))])
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)
            else:
                buf = bytearray(1 << 18)
                while size > 0:
                    n = sock.recv_into(buf)
                    if not n:
                        return
                    size -= n
                sock.sendall(b"k")

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(sock,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def through_socks(port: int, dest: int, direction: str, size: int) -> float:
    """One transfer through ss-local's SOCKS5 port; returns the seconds it took."""
    with socks5_tunnel(port, dest, timeout=60) as sock:
        started = time.perf_counter()
        sock.sendall(direction.encode() + size.to_bytes(8, "big"))
        if direction == "D":
            buf = bytearray(1 << 18)
            got = 0
            while got < size:
                n = sock.recv_into(buf)
                assert n, f"EOF after {got} bytes"
                got += n
        else:
            left = size
            while left > 0:
                left -= sock.send(BLOCK[: min(left, len(BLOCK))])
            assert sock.recv(1) == b"k"
        return time.perf_counter() - started


def measure(
    servers: dict[str, tuple[subprocess.Popen[bytes], int]], dest: int, size: int, rounds: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """server name -> direction -> (MB/s, server CPU s/GB), the best MB/s of ``rounds`` transfers.

    ``servers``: name -> (server process, port of its ss-local). Rounds alternate between the
    servers, so load from elsewhere on the machine falls on both alike. A 1 MB transfer each
    way first warms every path up.
    """
    results: dict[str, dict[str, tuple[float, float]]] = {name: {} for name in servers}
    for direction in ("D", "U"):
        for _, local in servers.values():
            through_socks(local, dest, direction, 1_000_000)
    for _ in range(rounds):
        for direction in ("D", "U"):
            key = "download" if direction == "D" else "upload"
            for name, (server, local) in servers.items():
                cpu0 = cpu_seconds([server.pid])
                took = through_socks(local, dest, direction, size)
                time.sleep(0.2)  # the server's last chunks
                cpu = cpu_seconds([server.pid]) - cpu0
                row = (size / took / 1e6, cpu / (size / 1e9))
                if key not in results[name] or row[0] > results[name][key][0]:
                    results[name][key] = row
    return results


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = checkout_env(ROOT)
    with open(log, "wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="MB per transfer (default 200)")
    parser.add_argument("--rounds", type=int, default=2, help="transfers per case; the best counts (default 2)")
    parser.add_argument("--methods", nargs="*", default=list(METHODS))
    args = parser.parse_args()
    size = args.mb * 1_000_000
    listener, dest = origin()
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    print("| method | server | download MB/s | download CPU s/GB | upload MB/s | upload CPU s/GB |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    procs: list[subprocess.Popen[bytes]] = []
    ratios = []
    try:
        for method in args.methods:
            servers = {}
            for name in ("gproxy", "ss-server"):
                port = free_port()
                if name == "gproxy":
                    cmd = [sys.executable, "-m", "gproxy", "--ss", f"127.0.0.1:{port}", "--ss-method", method,
                           "--user", f"bench:{PASSWORD}", "--log-level", "error"]  # fmt: skip
                else:
                    cmd = ["ss-server", "-s", "127.0.0.1", "-p", str(port), "-k", PASSWORD, "-m", method]
                server = start(cmd, logs / f"ss_bulk-{name}.log")
                procs.append(server)
                wait_connectable(port, server, timeout=20)
                local = free_port()
                ss_local = start(["ss-local", "-s", "127.0.0.1", "-p", str(port), "-b", "127.0.0.1", "-l", str(local),
                                  "-k", PASSWORD, "-m", method], logs / f"ss_bulk-ss-local-{name}.log")  # fmt: skip
                procs.append(ss_local)
                wait_connectable(local, ss_local, timeout=20)
                servers[name] = (server, local)
            results = measure(servers, dest, size, args.rounds)
            for name, result in results.items():
                (dl, dl_cpu), (ul, ul_cpu) = result["download"], result["upload"]
                print(f"| {method} | {name} | {dl:.0f} | {dl_cpu:.2f} | {ul:.0f} | {ul_cpu:.2f} |", flush=True)
            ours, theirs = results["gproxy"], results["ss-server"]
            ratios.append((method, *(ours[k][0] / theirs[k][0] for k in ("download", "upload"))))
            for proc in procs[-4:]:
                proc.terminate()
                proc.wait(10)
        print("\n| method | gproxy / ss-server download | upload |\n| --- | ---: | ---: |")
        for method, down, up in ratios:
            print(f"| {method} | {down:.2f}x | {up:.2f}x |")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        listener.close()


if __name__ == "__main__":
    main()
