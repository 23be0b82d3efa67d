#!/usr/bin/env python3
"""Two (or more) gproxy checkouts side by side in one run: connections/s or bulk, and the
proxy's CPU per connection (or per GB), rounds alternating between them.

    git worktree add /tmp/old 55518bd
    python bench/compare_trees.py /tmp/old .                      # connections/s
    python bench/compare_trees.py /tmp/old . --mode down:1        # 1 tunnel of bulk download
    python bench/compare_trees.py /tmp/old . --mode ping          # 64 B ping-pong p50 and p99
    python bench/compare_trees.py /tmp/old . --gproxy-args="--metrics 127.0.0.1:0 --access-log /tmp/a.log"

Each checkout's gproxy runs from its own directory (``python -m gproxy`` imports the
checkout's package); the C load generator and targets are run.py's. The machine's noise
moves whole runs: compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
from pathlib import Path

import run as bench


def measure(server: bench.Server, ports: dict, mode: str, secs: float) -> tuple[float, float]:
    """(rate, proxy CPU per unit): connections/s and us per connection, or GB/s and s per GB;
    for ping, the round trip's p50 and p99 in us."""
    if mode == "ping":
        out = bench.loadgen("pingpong", ports["echo"], server.port, secs)
        return out["p50_us"], out["p99_us"]
    pids = server.pids()
    before = bench.cpu_seconds(pids)
    if mode == "conn":
        out = bench.loadgen("connrate", 50, ports["echo"], server.port, secs)
        used = bench.cpu_seconds(pids) - before
        return out["rate"], used / max(out["rate"] * secs, 1) * 1e6
    direction, tunnels = mode.split(":")
    out = bench.loadgen(
        "bulk", direction, int(tunnels), ports["source" if direction == "down" else "sink"], server.port, secs
    )
    used = bench.cpu_seconds(pids) - before
    return out["bytes"] / secs / 1e9, used / max(out["bytes"] / 1e9, 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", help="gproxy checkouts (directories)")
    parser.add_argument("--mode", default="conn", help="conn, ping, or DIRECTION:TUNNELS bulk (down:1, up:8)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--secs", type=float, default=3.0)
    parser.add_argument("--gproxy-args", default="", help="extra flags for every checkout's gproxy")
    args = parser.parse_args()
    bulk = args.mode.count(":") == 1 and args.mode.split(":")[0] in ("down", "up")
    if args.mode not in ("conn", "ping") and not bulk:
        parser.error("--mode is conn, ping or down:N / up:N")
    trees = [Path(tree).resolve() for tree in args.trees]
    for tree in trees:
        if not (tree / "gproxy" / "__main__.py").is_file():
            parser.error(f"{tree} is not a gproxy checkout")
    bench.build_loadgen()
    servers = []
    for index, tree in enumerate(trees):
        server = bench.Server(
            f"{index}:{tree.name}",
            [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:{port}", "-q", *shlex.split(args.gproxy_args)],
        )
        servers.append((tree, server))
    results: dict[str, list[tuple[float, float]]] = {server.name: [] for _, server in servers}
    here = Path.cwd()
    with bench.target() as ports:
        try:
            for tree, server in servers:
                os.chdir(tree)  # python -m gproxy imports from the working directory first
                bench.ROOT = tree
                if not server.start():
                    parser.error(f"gproxy from {tree} did not start (see {server.log})")
            os.chdir(here)
            for _ in range(args.rounds):
                for _, server in servers:
                    results[server.name].append(measure(server, ports, args.mode, args.secs))
                    rate, cost = results[server.name][-1]
                    print(f"  {server.name}: {rate:,.4g} {cost:.4g}", flush=True)
        finally:
            for _, server in servers:
                server.stop()
    unit = {"conn": ("connections/s", "proxy CPU us per connection"), "ping": ("ping-pong p50, us", "p99, us")}.get(
        args.mode, ("GB/s", "proxy CPU s per GB")
    )
    print(f"\n| checkout | {unit[0]} | {unit[1]} |\n|---|---|---|")
    for name, values in results.items():
        rate, cost = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        print(f"| {name} | {rate:,.4g} | {cost:.4g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
