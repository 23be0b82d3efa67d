"""Bulk and connections per second through ``--redirect`` beside ``--socks``, in one run.

Everything runs inside a network namespace this script creates (root and nftables
needed): bench/loadgen.c's targets, one gproxy with a ``--socks`` and a ``--redirect``
listener (``--mark 42``), and an nftables rule that redirects the targets' ports for
every socket without mark 42. The load generator reaches the targets "directly" (so
the firewall sends it to ``--redirect``) or through the SOCKS5 port; the ratio shows
what the original-destination lookup costs.

    python bench/transparent.py --secs 3 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from proxyprocs import checkout_env  # noqa: E402
from run import LOADGEN, build_loadgen  # noqa: E402

ROOT = HERE.parent


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def loadgen(ns: str, *args: object, timeout: float = 120) -> dict:
    out = subprocess.run(
        in_ns(ns, str(LOADGEN), *map(str, args)), input="go\n", capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {args}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--secs", type=float, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (a network namespace and nftables)", file=sys.stderr)
        return 2
    build_loadgen()
    ns = f"gpbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    procs: list[subprocess.Popen[str]] = []
    try:
        subprocess.run(in_ns(ns, "ip", "link", "set", "lo", "up"), check=True)
        target = subprocess.Popen(in_ns(ns, str(LOADGEN), "target"), stdout=subprocess.PIPE, text=True)
        procs.append(target)
        assert target.stdout is not None
        ports = json.loads(target.stdout.readline())
        env = checkout_env(ROOT)
        gproxy = subprocess.Popen(
            in_ns(ns, sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:0", "--redirect", "127.0.0.1:0",
                  "--mark", "42", "-q", "--drain-timeout", "1"),
            stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        procs.append(gproxy)
        assert gproxy.stderr is not None
        listening = dict(gproxy.stderr.readline().split()[2:4] for _ in range(2))
        socks_port = int(listening["socks5"].rsplit(":", 1)[1])
        redirect_port = int(listening["redirect"].rsplit(":", 1)[1])
        target_ports = ", ".join(str(ports[k]) for k in ("source", "sink", "echo"))
        rules = (
            "table ip bench {\n chain output {\n  type nat hook output priority -100;\n"
            f"  tcp dport {{ {target_ports} }} meta mark != 42 redirect to :{redirect_port}\n }}\n}}\n"
        )
        subprocess.run(in_ns(ns, "nft", "-f", "-"), input=rules, text=True, check=True)
        rows: dict[str, dict[str, list[float]]] = {"socks": {}, "redirect": {}}
        for _ in range(args.repeat):
            for name, port in (("socks", socks_port), ("redirect", 0)):
                row = rows[name]
                row.setdefault("down1 Gbit/s", []).append(
                    loadgen(ns, "bulk", "down", 1, ports["source"], port, args.secs)["gbps"]
                )
                row.setdefault("up1 Gbit/s", []).append(
                    loadgen(ns, "bulk", "up", 1, ports["sink"], port, args.secs)["gbps"]
                )
                row.setdefault("conn/s", []).append(loadgen(ns, "connrate", 50, ports["echo"], port, args.secs)["rate"])
        print(
            f"medians of {args.repeat} x {args.secs} s, same run (loadgen 'redirect' connects straight to the target)"
        )
        keys = list(rows["socks"])
        print("| scenario | --socks | --redirect | redirect / socks |")
        print("|---|---|---|---|")
        for key in keys:
            s, r = statistics.median(rows["socks"][key]), statistics.median(rows["redirect"][key])
            print(f"| {key} | {s:.4g} | {r:.4g} | {r / s:.2f}x |")
    finally:
        for proc in reversed(procs):
            proc.kill()
            proc.wait(10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
