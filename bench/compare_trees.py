#!/usr/bin/env python3
"""Two (or more) gproxy checkouts, or sets of flags, side by side in one run, rounds
alternating between them: connections/s, bulk, ping-pong or HTTP forwarding, each with
the proxy's CPU per unit.

    git worktree add /tmp/old 55518bd
    python bench/compare_trees.py /tmp/old .                      # connections/s
    python bench/compare_trees.py /tmp/old . --mode down:1        # 1 tunnel of bulk download
    python bench/compare_trees.py /tmp/old . --mode ping          # 64 B ping-pong p50 and p99
    python bench/compare_trees.py /tmp/old . --mode http          # ab -k through --http (nginx origin)
    python bench/compare_trees.py /tmp/old . --gproxy-args="--metrics 127.0.0.1:0 --access-log /tmp/a.log"
    python bench/compare_trees.py . --mode http --variant "" --variant "--access-log /tmp/a.log"

Each checkout's gproxy runs from its own directory (``python -m gproxy`` imports the
checkout's package); ``--variant FLAGS`` (repeatable) runs every checkout once per set of
flags, beside ``--gproxy-args`` (given to all). The C load generator and targets are
run.py's; the HTTP mode's nginx origin and ab are http_forward.py's. The machine's noise
moves whole runs: compare the rows of one run, not runs.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import run as bench
from http_forward import ab, nginx_argv, running
from proxyprocs import cpu_seconds, free_port

#: what each mode reports: (rate, cost per unit)
UNITS = {
    "conn": ("connections/s", "proxy CPU us per connection"),
    "ping": ("ping-pong p50, us", "p99, us"),
    "http": ("requests/s", "proxy CPU us per request"),
    "bulk": ("GB/s", "proxy CPU s per GB"),
}


def number(value: float) -> str:
    """4 significant digits, thousands separated, never an exponent."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.4g}"


def measure(server: bench.Server, targets: dict, mode: str, args: argparse.Namespace) -> tuple[float, float]:
    """(rate, cost) of one round through ``server`` (see UNITS)."""
    secs = args.secs
    if mode == "ping":
        out = bench.loadgen("pingpong", targets["echo"], server.port, secs)
        return out["p50_us"], out["p99_us"]
    if mode == "conn":
        got = bench.conn_rate(server, targets, secs, "socks", "")
        if "cpu_us" not in got:  # not one connection completed: no cost to show
            sys.exit(f"compare_trees: no connection through {server.name} completed ({got.get('errors', 0):g} failed)")
        return got["rate"], got["cpu_us"]
    if mode == "http":
        pids = server.pids()
        before = cpu_seconds(pids)
        rate = ab(server.port, targets["url"], args.requests, 50)
        return rate, (cpu_seconds(pids) - before) / args.requests * 1e6
    direction, tunnels = mode.split(":")
    out, used = bench.bulk(server, targets, direction, int(tunnels), secs)
    return out["bytes"] / secs / 1e9, used / max(out["bytes"] / 1e9, 1e-9)


@contextlib.contextmanager
def targets_for(mode: str) -> Iterator[dict]:
    """run.py's C targets, or for HTTP an nginx origin serving a 1 KiB file (``url``)."""
    if mode != "http":
        bench.build_loadgen()
        with bench.target() as ports:
            yield ports
        return
    with tempfile.TemporaryDirectory(prefix="gproxy-compare-") as tmpdir:
        tmp, port = Path(tmpdir), free_port()
        with running(nginx_argv(tmp, port), port, tmp / "nginx.out"):
            yield {"url": f"http://127.0.0.1:{port}/1k"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trees", nargs="+", help="gproxy checkouts (directories)")
    parser.add_argument("--mode", default="conn", help="conn, ping, http, or DIRECTION:TUNNELS bulk (down:1, up:8)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--secs", type=float, default=3.0, help="seconds per round (conn, ping, bulk)")
    parser.add_argument("--requests", type=int, default=20000, help="ab requests per round (http)")
    parser.add_argument("--gproxy-args", default="", help="extra flags for every checkout's gproxy")
    parser.add_argument("--variant", action="append", help="a set of flags; each checkout runs once per --variant")
    args = parser.parse_args()
    if not re.fullmatch(r"conn|ping|http|(down|up):[1-9][0-9]*", args.mode):
        parser.error("--mode is conn, ping, http or down:N / up:N")
    trees = [Path(tree).resolve() for tree in args.trees]
    for tree in trees:
        if not (tree / "gproxy" / "__main__.py").is_file():
            parser.error(f"{tree} is not a gproxy checkout")
    listener = "--http" if args.mode == "http" else "--socks"
    variants = args.variant or [""]
    servers = [
        bench.Server(
            f"compare-{index}-{variant}",  # its log: bench/out/NAME.log
            [sys.executable, "-m", "gproxy", listener, "127.0.0.1:{port}", "-q"]
            + shlex.split(args.gproxy_args)
            + shlex.split(flags),
            label=f"{index}:{tree.name}" + (f" {flags}" if flags else ""),
            checkout=tree,
        )
        for index, tree in enumerate(trees)
        for variant, flags in enumerate(variants)
    ]
    results: dict[str, list[tuple[float, float]]] = {server.label: [] for server in servers}
    with targets_for(args.mode) as targets:
        try:
            for server in servers:
                if not server.start():
                    parser.error(f"{server.label} did not start (see {server.log})")
                if args.mode == "http":
                    ab(server.port, targets["url"], 1000, 50)  # warm-up: the pool, the code paths
            for _ in range(args.rounds):
                for server in servers:
                    results[server.label].append(measure(server, targets, args.mode, args))
                    rate, cost = results[server.label][-1]
                    print(f"  {server.label}: {number(rate)} {number(cost)}", flush=True)
        finally:
            for server in servers:
                server.stop()
    unit = UNITS.get(args.mode, UNITS["bulk"])
    print(f"\n| checkout | {unit[0]} | {unit[1]} |\n|---|---|---|")
    for name, values in results.items():
        rate, cost = statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)
        print(f"| {name} | {number(rate)} | {number(cost)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
