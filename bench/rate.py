#!/usr/bin/env python3
"""What --rate costs and how close it holds a tunnel to its rate, in one run.

    python bench/rate.py                       # 5 repetitions of 2 s per scenario
    python bench/rate.py --repeat 3 --secs 1   # quicker
    python bench/rate.py --extra "--rate 0"    # compare other flags against plain gproxy

1. Overhead: bulk throughput (loadgen, bench/loadgen.c) through plain gproxy, gproxy
   with each ``--extra`` (default ``--rate 0``: must match plain gproxy within noise, the
   unlimited tunnel runs the same code) and ``--rate 1000G`` (the limited code path with
   a bucket that never runs dry: the cost of the bookkeeping itself). Repetitions go
   round-robin over the servers; the median is kept.
2. Accuracy: one tunnel downloads ``--size`` MiB at ``--limit`` (default 10 MiB at 2M);
   after the one-second burst, the achieved rate over the rest against the configured one.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

from proxyprocs import socks5_tunnel
from run import Server, build_loadgen, loadgen, target

from gproxy.core.limits import parse_rate

SCENARIOS = [("down1", "down", 1), ("up1", "up", 1), ("down8", "down", 8)]


def overhead(servers: list[Server], ports: dict, repeat: int, secs: float) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, list[float]]] = {s.name: {} for s in servers}
    for rep in range(repeat):
        for server in servers:
            for key, direction, n in SCENARIOS:
                port = ports["source" if direction == "down" else "sink"]
                out = loadgen("bulk", direction, n, port, server.port, secs)
                results[server.name].setdefault(key, []).append(out["gbps"])
            print(f"  rep {rep + 1}/{repeat} {server.name}: " + ", ".join(
                f"{k}={v[-1]:.3g}" for k, v in results[server.name].items()
            ))  # fmt: skip
    return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in results.items()}


def accuracy(server: Server, ports: dict, size: int, rate: int) -> tuple[float, float, float]:
    """(seconds in all, rate over everything, rate after the burst) for ``size`` bytes down."""
    buf = bytearray(1 << 18)
    with socks5_tunnel(server.port, ports["source"]) as sock:
        start = time.monotonic()
        got, burst_at, burst_got = 0, None, 0
        while got < size:
            n = sock.recv_into(buf)
            if not n:
                raise RuntimeError("source closed early")
            got += n
            if burst_at is None and got >= rate:
                burst_at, burst_got = time.monotonic(), got
        end = time.monotonic()
    assert burst_at is not None
    return end - start, got / (end - start), (got - burst_got) / max(end - burst_at, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--secs", type=float, default=2.0, help="seconds per bulk measurement")
    parser.add_argument("--extra", action="append", help='extra gproxy flags to compare (default "--rate 0")')
    parser.add_argument("--size", type=float, default=10, help="MiB for the accuracy transfer")
    parser.add_argument("--limit", default="2M", help="the rate for the accuracy transfer")
    args = parser.parse_args()
    build_loadgen()
    gproxy = [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:{port}", "-q"]
    servers = [Server("gproxy", gproxy)]
    for extra in args.extra or ["--rate 0"]:
        servers.append(Server(f"gproxy {extra}", [*gproxy, *shlex.split(extra)]))
    servers.append(Server("gproxy --rate 1000G", [*gproxy, "--rate", "1000G"]))
    rate = parse_rate(args.limit)
    limited = Server(f"gproxy --rate {args.limit}", [*gproxy, "--rate", args.limit])
    with target() as ports:
        started = []
        try:
            for server in [*servers, limited]:
                if not server.start():
                    raise SystemExit(f"{server.name} did not start (see {server.log})")
                started.append(server)
            med = overhead(servers, ports, args.repeat, args.secs)
            took, overall, steady = accuracy(limited, ports, int(args.size * (1 << 20)), rate)
        finally:
            for server in started:
                server.stop()
    base = med["gproxy"]
    print(f"\nbulk throughput, Gbit/s (median of {args.repeat} x {args.secs:g} s; ratio to plain gproxy)")
    print(f"{'server':<24}" + "".join(f"{key:>18}" for key, _, _ in SCENARIOS))
    for name, row in med.items():
        cells = "".join(f"{row[key]:>9.3f} ({row[key] / base[key]:.3f})" for key, _, _ in SCENARIOS)
        print(f"{name:<24}{cells}")
    mib = 1 << 20
    print(
        f"\naccuracy: {args.size:g} MiB down at {args.limit} ({rate / mib:.3g} MiB/s) took {took:.2f} s; "
        f"overall {overall / mib:.3f} MiB/s (with the 1 s burst), after the burst {steady / mib:.3f} MiB/s "
        f"= {steady / rate:.3f} x the configured rate"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
