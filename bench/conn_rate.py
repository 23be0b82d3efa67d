"""Connections per second through gproxy with --workers 1 against --workers 2, in one run.

Each connection: TCP connect to gproxy's SOCKS5 port, greeting and CONNECT
pipelined in one segment, read the method choice and the reply (the
outbound connection is up by then), close. The target accepts and closes.
Load comes from ``--clients`` processes of ``--concurrency`` greenlets each.

    python bench/conn_rate.py --seconds 10 --clients 2 --concurrency 32
    python bench/conn_rate.py --workers 1 --name localhost --compare "--resolver 127.0.0.53"

``--name`` asks for the target by name (SOCKS5 ATYP 3) instead of by address;
``--compare ARGS`` adds a row per ARGS: gproxy started with those extra flags.

Everything runs on this machine: the load generator and the target compete
with gproxy for the same cores, so compare the two rows, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from proxyprocs import checkout_env, cpu_seconds, descendants, stop_process

ROOT = Path(__file__).resolve().parent.parent


def target_main() -> None:
    """Accept and close, forever; prints its port."""
    from gevent import monkey

    monkey.patch_all()
    from gevent.server import StreamServer

    server = StreamServer(("127.0.0.1", 0), lambda sock, _addr: None, backlog=4096)
    server.start()
    print(server.address[1], flush=True)
    server.serve_forever()


def client_main(proxy_port: int, target_port: int, seconds: float, concurrency: int, name: str = "") -> None:
    """Open and close SOCKS5 tunnels for ``seconds``; prints {"ok": n, "errors": m}."""
    from gevent import monkey

    monkey.patch_all()
    import socket

    import gevent

    by_name = b"\x03" + bytes([len(name)]) + name.encode()
    address = by_name if name else b"\x01" + socket.inet_aton("127.0.0.1")
    request = b"\x05\x01\x00" + b"\x05\x01\x00" + address + target_port.to_bytes(2, "big")
    counts = {"ok": 0, "errors": 0}
    deadline = time.monotonic() + seconds

    def one() -> None:
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", proxy_port), timeout=10) as sock:
                    sock.sendall(request)
                    answer = b""
                    while len(answer) < 12:
                        chunk = sock.recv(12 - len(answer))
                        if not chunk:
                            break
                        answer += chunk
                ok = answer[:2] == b"\x05\x00" and answer[3:4] == b"\x00"
                counts["ok" if ok else "errors"] += 1
            except OSError:
                counts["errors"] += 1

    gevent.joinall([gevent.spawn(one) for _ in range(concurrency)])
    print(json.dumps(counts), flush=True)


def spawn(*args: str) -> subprocess.Popen[str]:
    env = checkout_env(ROOT)
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def measure(
    workers: int, target_port: int, args: argparse.Namespace, extra: list[str] | None = None
) -> dict[str, float]:
    flags = ["--socks", "0", "--workers", str(workers), "-q", "--drain-timeout", "1", *(extra or [])]
    proxy = spawn("-m", "gproxy", *flags)
    clients: list[subprocess.Popen[str]] = []
    try:
        assert proxy.stderr is not None
        line = proxy.stderr.readline()
        if not line.startswith("gproxy: listening socks5 "):
            raise SystemExit(f"gproxy did not start: {line}{proxy.stderr.read()}")
        port = int(line.rsplit(":", 1)[1])
        clients += [
            spawn(__file__, "client", str(port), str(target_port), str(args.seconds), str(args.concurrency), args.name)
            for _ in range(args.clients)
        ]
        cpu_before = cpu_seconds(descendants(proxy.pid))
        ok = errors = 0
        for client in clients:
            out, err = client.communicate(timeout=args.seconds + 60)
            if client.returncode:
                raise SystemExit(f"client failed: {err}")
            counts = json.loads(out)
            ok += counts["ok"]
            errors += counts["errors"]
        cpu = cpu_seconds(descendants(proxy.pid)) - cpu_before
        return {
            "workers": workers,
            "connections": ok,
            "errors": errors,
            "per_second": ok / args.seconds,
            "gproxy_cpu": cpu / args.seconds,
        }
    finally:
        for process in (*clients, proxy):  # a client that failed or timed out, too
            stop_process(process, 30)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "target":
        target_main()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        client_main(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), *sys.argv[6:7])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=2, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=32, help="greenlets per load-generator process")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--name", default="", help="ask for the target by this name (it must resolve to 127.0.0.1)")
    parser.add_argument("--compare", action="append", default=[], help="extra gproxy flags for one more row")
    args = parser.parse_args()
    target = spawn(__file__, "target")
    try:
        assert target.stdout is not None
        target_port = int(target.stdout.readline())
        print(f"cores: {os.cpu_count()}  clients: {args.clients}x{args.concurrency}  seconds: {args.seconds}")
        runs = [(workers, []) for workers in args.workers]
        runs += [(args.workers[0], extra.split()) for extra in args.compare]
        for workers, extra in runs:
            row = measure(workers, target_port, args, extra)
            print(
                f"--workers {row['workers']} {' '.join(extra)}: {row['per_second']:8.0f} connections/s "
                f"({row['connections']} ok, {row['errors']} errors; gproxy used {row['gproxy_cpu']:.2f} cores)",
                flush=True,
            )
    finally:
        stop_process(target)


if __name__ == "__main__":
    main()
