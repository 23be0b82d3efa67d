"""How long ``GET /sessions`` takes with many idle tunnels open, and whether it stalls relaying.

    python bench/admin_sessions.py [--tunnels 10000] [--workers 2] [--polls 20]

Three processes besides gproxy (each under the 20,000-descriptor limit): a
sink (accepts, echoes), the clients (open ``--tunnels`` idle SOCKS5 tunnels
through gproxy to the sink, then run one bulk upload through another tunnel),
and this one, which times ``GET /sessions`` ``--polls`` times while the bulk
upload runs. 10,000 tunnels take 20,000 descriptors in gproxy: with
``--workers 1`` ask for at most about 9,900. Prints the GET times (min,
median, max), the answer's size and the bulk rate with and without polling.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.connection
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from proxyprocs import socks5_tunnel, stop_process

ROOT = Path(__file__).resolve().parent.parent
BULK_SECONDS = 3.0


def sink(out: multiprocessing.connection.Connection) -> None:
    from gevent import monkey

    monkey.patch_all()
    from gevent.server import StreamServer

    def echo(sock: socket.socket, _: object) -> None:
        try:
            while data := sock.recv(1 << 16):
                if data[:1] != b"B":  # bulk tunnels are not echoed: the upload is all that is measured
                    sock.sendall(data)
        except OSError:
            pass

    server = StreamServer(("127.0.0.1", 0), echo, backlog=4096)
    server.start()
    out.send(server.address[1])
    server.serve_forever()


def clients(proxy_port: int, dest_port: int, count: int, conn: multiprocessing.connection.Connection) -> None:
    held = []
    for n in range(count):
        held.append(socks5_tunnel(proxy_port, dest_port))
        if n % 1000 == 999:
            print(f"  {n + 1} tunnels open", file=sys.stderr)
    conn.send("open")
    while (command := conn.recv()) != "quit":
        bulk = socks5_tunnel(proxy_port, dest_port)
        block = b"B" * (1 << 16)
        sent, deadline = 0, time.monotonic() + float(command)
        while time.monotonic() < deadline:
            bulk.sendall(block)
            sent += len(block)
        bulk.close()
        conn.send(sent / float(command))
    for sock in held:
        sock.close()


def get_sessions(port: int) -> tuple[float, int, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/sessions", timeout=30) as answer:
        body = answer.read()
    elapsed = time.perf_counter() - started
    return elapsed, len(body), len(json.loads(body))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tunnels", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--polls", type=int, default=20)
    args = parser.parse_args()
    ctx = multiprocessing.get_context("spawn")
    port_in, port_out = ctx.Pipe(duplex=False)
    sink_proc = ctx.Process(target=sink, args=(port_out,), daemon=True)
    sink_proc.start()
    sink_port = port_in.recv()
    gproxy = subprocess.Popen(
        [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        + ["--workers", str(args.workers), "--idle-timeout", "0", "--log-level", "error"],
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        ports = {}
        assert gproxy.stderr is not None
        while len(ports) < 2:
            line = gproxy.stderr.readline().decode()
            if not line:
                raise SystemExit("gproxy did not start")
            if line.startswith("gproxy: listening "):
                kind, address = line.split()[2:4]
                ports[kind] = int(address.rpartition(":")[2])
        mine, theirs = ctx.Pipe()
        client_proc = ctx.Process(target=clients, args=(ports["socks5"], sink_port, args.tunnels, theirs), daemon=True)
        client_proc.start()
        assert mine.recv() == "open"
        idle = [get_sessions(ports["admin"]) for _ in range(3)]
        print(
            f"{args.tunnels} tunnels, {args.workers} worker(s); idle GET /sessions: "
            f"{min(t for t, _, _ in idle) * 1000:.0f} ms, {idle[0][1] / 1e6:.1f} MB, {idle[0][2]} rows"
        )
        mine.send(str(BULK_SECONDS))
        quiet_rate = mine.recv()
        mine.send(str(BULK_SECONDS))
        times = []
        deadline = time.monotonic() + BULK_SECONDS
        while time.monotonic() < deadline or len(times) < args.polls:  # back to back while the upload runs
            times.append(get_sessions(ports["admin"])[0])
        busy_rate = mine.recv()
        ms = sorted(t * 1000 for t in times)
        print(
            f"GET /sessions during a bulk upload, {len(ms)} polls: min {ms[0]:.0f} ms, "
            f"median {statistics.median(ms):.0f} ms, max {ms[-1]:.0f} ms"
        )
        print(f"bulk upload: {quiet_rate / 1e6:.0f} MB/s alone, {busy_rate / 1e6:.0f} MB/s while polled back to back")
        mine.send("quit")
        client_proc.join(60)
    finally:
        stop_process(gproxy, 30)
        sink_proc.terminate()
        sink_proc.join(5)


if __name__ == "__main__":
    main()
