#!/usr/bin/env python3
"""Benchmark gproxy beside a direct connection, microsocks, pproxy, a C relay, a minimal gevent relay,
Squid and tinyproxy, in one run.

    python bench/run.py                 # full run: writes bench/RESULTS.md and bench/results.png
    python bench/run.py --quick         # 1 repetition, 1 s each, 2,000 idle tunnels; writes nothing
    python bench/run.py --idle-only     # only the idle-tunnel scenario; writes nothing
    python bench/run.py --quick --no-idle --no-auth --no-http --servers gproxy,c-relay

The load generator, the TCP targets and the reference relay ("c-relay") are C
(bench/loadgen.c, compiled into bench/out/ on each run); "gevent-min" is gproxy's design
with none of its features (bench/gevent_relay.py), the floor of a gevent proxy. Every measurement is
repeated and the median kept; repetitions go round-robin over the servers so
that noise hits them alike. Ratios are always taken between servers measured in
the same run. Besides the SOCKS5 scenarios, connections/s is also measured with
RFC 1929 auth (gproxy, microsocks) and over HTTP CONNECT (gproxy, Squid, tinyproxy).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from proxyprocs import (
    checkout_env,
    cpu_seconds,
    descendants,
    free_port,
    squid_argv,
    stop_process,
    tinyproxy_argv,
    wait_connectable,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
LOADGEN = OUT / "loadgen"
PAGE = os.sysconf("SC_PAGE_SIZE")

BULK = [("down1", "down", 1), ("up1", "up", 1), ("down8", "down", 8), ("up8", "up", 8)]


def build_loadgen() -> None:
    OUT.mkdir(exist_ok=True)
    src = HERE / "loadgen.c"
    if not LOADGEN.exists() or LOADGEN.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-Wall", "-o", str(LOADGEN), str(src)], check=True)


def loadgen(*args: object, timeout: float = 120) -> dict:
    argv = [str(LOADGEN), *map(str, args)]
    out = subprocess.run(argv, input="go\n", capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen {args}: {out.stderr.strip()}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


def fd_count(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{pid}/fd"))
    return total


Argv = list[str] | Callable[[int], list[str]]  # a template with {port}, or built from the port


class Server:
    """One server under test (or the direct connection: argv None, port 0).

    Its results go to the column ``label``; ``phase`` says what it is measured in:
    "socks" (bulk, connections/s, ping-pong, idle), "auth" (connections/s with RFC 1929
    user u, password p) or "http" (connections/s over HTTP CONNECT).
    """

    def __init__(
        self,
        name: str,
        argv: Argv | None,
        workers: int = 1,
        label: str | None = None,
        phase: str = "socks",
        checkout: Path = ROOT,
    ) -> None:
        self.name, self.argv, self.workers = name, argv, workers
        self.label, self.phase = label or name, phase
        self.checkout = checkout  # the gproxy package its python -m gproxy imports
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = OUT / f"{name}.log"

    def start(self) -> bool:
        if self.argv is None:
            return True
        port = free_port()
        argv = self.argv(port) if callable(self.argv) else [a.replace("{port}", str(port)) for a in self.argv]
        env = checkout_env(self.checkout)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=self.checkout)
        try:
            wait_connectable(port, self.proc)
        except RuntimeError:
            self.stop()
            return False
        self.port = port
        if self.workers > 1:  # all workers up?
            deadline = time.monotonic() + 10
            while len(self.pids()) <= self.workers and time.monotonic() < deadline:
                time.sleep(0.1)
            if len(self.pids()) <= self.workers:
                print(f"{self.name}: no worker processes appeared (is --workers implemented?)")
                self.stop()
                return False
        return True

    def pids(self) -> list[int]:
        return descendants(self.proc.pid) if self.proc else []

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None


def servers(args: argparse.Namespace, tmp: Path) -> list[Server]:
    """Every server of the run, those not in --servers (by label) left out; tmp holds configs."""
    gproxy = [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:{port}", "-q"]
    listed = [Server("direct", None), Server("gproxy", gproxy)]
    help_text = subprocess.run(gproxy[:3] + ["--help"], capture_output=True, text=True, cwd=ROOT).stdout
    if "--workers" in help_text:
        listed.append(Server("gproxy-w2", [*gproxy, "--workers", "2"], workers=2))
    else:
        print("gproxy has no --workers flag: skipping gproxy-w2")
    if shutil.which("microsocks"):
        listed.append(Server("microsocks", ["microsocks", "-i", "127.0.0.1", "-p", "{port}"]))
    else:
        print("microsocks not installed: skipping it")
    # pproxy installed into the same environment as this interpreter counts even when not on PATH
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    pproxy = shutil.which("pproxy", path=search)
    if pproxy:
        listed.append(Server("pproxy", [pproxy, "-l", "socks5://127.0.0.1:{port}"]))
    else:
        print("pproxy not installed (pip install pproxy): skipping it")
    listed.append(Server("c-relay", [str(LOADGEN), "relay", "{port}"]))
    listed.append(Server("gevent-min", [sys.executable, str(HERE / "gevent_relay.py"), "{port}"]))
    if not args.no_auth:
        listed.append(Server("gproxy-auth", [*gproxy, "--user", "u:p"], label="gproxy", phase="auth"))
        if shutil.which("microsocks"):
            ms_auth = ["microsocks", "-i", "127.0.0.1", "-p", "{port}", "-u", "u", "-P", "p"]
            listed.append(Server("microsocks-auth", ms_auth, label="microsocks", phase="auth"))
    if not args.no_http:
        http = [sys.executable, "-m", "gproxy", "--http", "127.0.0.1:{port}", "-q"]
        listed.append(Server("gproxy-http", http, label="gproxy", phase="http"))
        for name, build in (("squid", squid_argv), ("tinyproxy", tinyproxy_argv)):
            if shutil.which(name) or Path(f"/usr/sbin/{name}").exists():
                listed.append(Server(name, lambda port, build=build: build(tmp, port), phase="http"))
            else:
                print(f"{name} not installed: skipping it")
    return [s for s in listed if s.label in args.servers.split(",")]


@contextlib.contextmanager
def target() -> Iterator[dict]:
    proc = subprocess.Popen([str(LOADGEN), "target"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def conn_rate(server: Server, ports: dict, secs: float, mode: str, prefix: str) -> dict[str, float]:
    """loadgen connrate in the given mode (socks, auth, http), with the proxy's CPU per connection."""
    pids = server.pids()
    before = cpu_seconds(pids)
    out = loadgen("connrate", 50, ports["echo"], server.port, secs, mode)
    spent = cpu_seconds(pids) - before
    got = {prefix + key: out[key] for key in ("rate", "p50_us", "p99_us", "errors", "client_cpu")}
    if pids and out["conns"]:
        got[prefix + "cpu_us"] = spent / out["conns"] * 1e6
    return got


def bulk(server: Server, ports: dict, direction: str, tunnels: int, secs: float) -> tuple[dict[str, float], float]:
    """loadgen bulk (``direction`` down or up, over ``tunnels`` tunnels): its output, and the
    proxy's CPU seconds meanwhile."""
    pids = server.pids()
    before = cpu_seconds(pids)
    out = loadgen("bulk", direction, tunnels, ports["source" if direction == "down" else "sink"], server.port, secs)
    return out, cpu_seconds(pids) - before


def measure(servers_: list[Server], ports: dict, args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Round-robin repetitions of every server's scenarios (bulk, connection rates, ping-pong)."""
    res: dict[str, dict[str, list[float]]] = {s.label: {} for s in servers_}
    gb: dict[str, float] = dict.fromkeys(res, 0.0)
    cpu: dict[str, float] = dict.fromkeys(res, 0.0)
    secs = args.secs
    for rep in range(args.repeat):
        for server in servers_:
            got: dict[str, float] = {}
            if server.phase == "socks":
                for key, direction, n in BULK:
                    out, used = bulk(server, ports, direction, n, secs)
                    cpu[server.label] += used
                    gb[server.label] += out["bytes"] / 1e9
                    got[key] = out["gbps"]
                    got[key + "_client_cpu"] = out["client_cpu"]
                got.update(conn_rate(server, ports, secs, "socks", "conn_"))
                out = loadgen("pingpong", ports["echo"], server.port, secs)
                got["ping_p50_us"], got["ping_p99_us"] = out["p50_us"], out["p99_us"]
            else:
                got.update(conn_rate(server, ports, secs, server.phase, server.phase + "_conn_"))
            for key, value in got.items():
                res[server.label].setdefault(key, []).append(value)
            print(f"  rep {rep + 1}/{args.repeat} {server.name}: " + ", ".join(f"{k}={v:.4g}" for k, v in got.items()))
    for name in res:
        if name != "direct" and gb[name]:
            res[name]["cpu_s_per_gb"] = [cpu[name] / gb[name]]
    return res


def idle(server: Server, ports: dict, n: int) -> dict[str, float]:
    """Open n idle tunnels from a separate client process; RSS and fds per tunnel; all must still echo."""
    if not server.start():
        return {}
    try:
        pids = server.pids()
        loadgen("idle", 200, ports["echo"], server.port, timeout=60)  # warm up, then measure from here
        time.sleep(0.5)
        rss0, fds0 = rss_bytes(pids), fd_count(pids)
        client = subprocess.Popen(
            [str(LOADGEN), "idle", str(n), str(ports["echo"]), str(server.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert client.stdin is not None and client.stdout is not None
        opened = json.loads(client.stdout.readline())["opened"]
        time.sleep(1.0)  # let the proxy settle
        pids = server.pids()
        rss1, fds1 = rss_bytes(pids), fd_count(pids)
        client.stdin.write("go\n")
        client.stdin.flush()
        try:
            done = json.loads(client.stdout.readline())
        finally:
            client.wait(120)
        return {
            "idle_tunnels": n,
            "idle_opened": opened,
            "idle_echoed": done["echoed"],
            "idle_kib_per_tunnel": (rss1 - rss0) / 1024 / max(opened, 1),
            "idle_fds_per_tunnel": (fds1 - fds0) / max(opened, 1),
        }
    finally:
        server.stop()


# -- report ----------------------------------------------------------------------------

ROWS = [
    ("down1", "1 tunnel download, Gbit/s", "direct"),
    ("up1", "1 tunnel upload, Gbit/s", "direct"),
    ("down8", "8 tunnels download, Gbit/s", "direct"),
    ("up8", "8 tunnels upload, Gbit/s", "direct"),
    ("cpu_s_per_gb", "proxy CPU s per GB relayed", None),
    ("conn_rate", "connections/s (50 clients)", "pproxy"),
    ("conn_p50_us", "connection p50 latency, us", None),
    ("conn_p99_us", "connection p99 latency, us", None),
    ("conn_cpu_us", "proxy CPU us per connection", None),
    ("ping_p50_us", "64 B ping-pong p50, us", "microsocks"),
    ("ping_p99_us", "64 B ping-pong p99, us", None),
    ("idle_kib_per_tunnel", "RSS per idle tunnel, KiB", None),
    ("idle_fds_per_tunnel", "proxy fds per idle tunnel", None),
    ("idle_echoed", "idle tunnels still echoing", None),
    ("down1_client_cpu", "load generator CPU, 1 tunnel down (cores)", None),
    ("up8_client_cpu", "load generator CPU, 8 tunnels up (cores)", None),
    ("conn_client_cpu", "load generator CPU, conn/s (cores)", None),
]


def medians(res: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {name: {k: statistics.median(v) for k, v in r.items()} for name, r in res.items()}


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


#: connections/s by handshake: (key, label, is a ratio within one proxy)
HANDSHAKE_ROWS = [
    ("conn_rate", "SOCKS5 no auth: connections/s", False),
    ("conn_cpu_us", "SOCKS5 no auth: proxy CPU us per connection", False),
    ("conn_errors", "SOCKS5 no auth: failed connections", False),
    ("auth_conn_rate", "SOCKS5 + RFC 1929 auth: connections/s", False),
    ("auth_conn_cpu_us", "SOCKS5 + RFC 1929 auth: proxy CPU us per connection", False),
    ("auth_conn_errors", "SOCKS5 + RFC 1929 auth: failed connections", False),
    ("auth_vs_noauth", "connections/s with auth / without", True),
    ("http_conn_rate", "HTTP CONNECT: connections/s", False),
    ("http_conn_cpu_us", "HTTP CONNECT: proxy CPU us per connection", False),
    ("http_conn_p50_us", "HTTP CONNECT: connection p50 latency, us", False),
    ("http_conn_errors", "HTTP CONNECT: failed connections", False),
    ("http_vs_socks", "connections/s HTTP CONNECT / SOCKS5 (goal for gproxy: >= 0.90x)", True),
]


def derive(med: dict[str, dict[str, float]]) -> None:
    """Ratios within one proxy: auth vs no auth, HTTP CONNECT vs SOCKS5 (same run)."""
    for r in med.values():
        if r.get("conn_rate") and "auth_conn_rate" in r:
            r["auth_vs_noauth"] = r["auth_conn_rate"] / r["conn_rate"]
        if r.get("conn_rate") and "http_conn_rate" in r:
            r["http_vs_socks"] = r["http_conn_rate"] / r["conn_rate"]


def handshake_table(med: dict[str, dict[str, float]]) -> str:
    """Connections/s and CPU per connection by handshake, with gproxy's ratio to each other proxy."""
    keys = ("auth_conn_rate", "http_conn_rate")
    if not any(k in r for r in med.values() for k in keys):
        return ""
    names = [n for n in med if n != "direct" and any(k in med[n] for k in ("conn_rate", *keys))]
    refs = [n for n in names if not n.startswith("gproxy")] if "gproxy" in names else []
    head = ["scenario", *names] + [f"gproxy / {r}" for r in refs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, within in HANDSHAKE_ROWS:
        values = [med[n].get(key) for n in names]
        if not any(values):  # not measured, or an error count of 0 everywhere
            continue
        cells = [("-" if v is None else f"{v:.2f}x") if within else fmt(v) for v in values]
        ratios = []
        for r in refs:
            mine, ref = med["gproxy"].get(key), med[r].get(key)
            plain = not within and not key.endswith("_errors")
            ratios.append(f"{mine / ref:.2f}x" if plain and mine is not None and ref else "-")
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    return "\n".join(lines)


#: the rows a reference's ratio means something in: gevent-min copies with recv/send only (no
#: splice), so gproxy against it in bulk would compare splice() with a copy, not gproxy's own code
REF_ROWS = {
    "gevent-min": {
        "conn_rate", "conn_p50_us", "conn_p99_us", "conn_cpu_us", "ping_p50_us", "ping_p99_us",
        "idle_kib_per_tunnel", "idle_fds_per_tunnel",
    }
}  # fmt: skip


def table(med: dict[str, dict[str, float]]) -> str:
    names = [n for n in med if any(key in med[n] for key, _, _ in ROWS)]
    refs = [n for n in ("direct", "microsocks", "pproxy", "c-relay", "gevent-min") if n in names]
    mine = [n for n in names if n.startswith("gproxy")]
    pairs = [(g, r) for g in mine for r in refs]
    head = ["scenario", *names] + [f"{g} / {r}" for g, r in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, _ in ROWS:
        cells = [fmt(med[n].get(key)) for n in names]
        if all(c == "-" for c in cells):
            continue
        ratios = []
        for g, r in pairs:
            if key == "idle_echoed" or key not in REF_ROWS.get(r, {key}):  # counts of different totals
                ratios.append("-")
                continue
            mv, ref = med[g].get(key), med[r].get(key)
            ratios.append(f"{mv / ref:.2f}x" if mv is not None and ref else "-")
        lines.append("| " + " | ".join([label, *cells, *ratios]) + " |")
    return "\n".join(lines)


def machine() -> str:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    import gevent

    return (
        f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}, gevent {gevent.__version__}, loadavg {os.getloadavg()[0]:.2f}"
    )


def chart(med: dict[str, dict[str, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing (pip install '.[bench]'): no chart")
        return
    panels = [
        ("throughput vs direct (x)", ["down1", "up1", "down8", "up8"], "direct"),
        ("connections/s by handshake", ["conn_rate", "auth_conn_rate", "http_conn_rate"], None),
        ("proxy CPU us per connection", ["conn_cpu_us", "auth_conn_cpu_us", "http_conn_cpu_us"], None),
        ("ping-pong p50 (us)", ["ping_p50_us"], None),
        ("RSS per idle tunnel (KiB)", ["idle_kib_per_tunnel"], None),
        ("CPU s per GB", ["cpu_s_per_gb"], None),
    ]
    ticks = {"conn_rate": "SOCKS5", "auth_conn_rate": "+auth", "http_conn_rate": "HTTP", "conn_cpu_us": "SOCKS5"}
    ticks |= {"auth_conn_cpu_us": "+auth", "http_conn_cpu_us": "HTTP"}
    everyone = [n for n in med if n != "direct"]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4))
    for ax, (title, keys, rel) in zip(axes, panels, strict=True):
        names = [n for n in everyone if any(k in med[n] for k in keys)] or everyone
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            vals = []
            for key in keys:
                v = med[name].get(key, 0.0)
                if rel:
                    v = v / med[rel][key] if med.get(rel, {}).get(key) else 0.0
                vals.append(v)
            color = f"C{everyone.index(name) % 10}"  # one colour per server across panels
            ax.bar([k + i * width for k in range(len(keys))], vals, width, label=name, color=color)
        labels = [ticks.get(k, k) for k in keys] if len(keys) > 1 else [""]
        ax.set_xticks([k + width * (len(names) - 1) / 2 for k in range(len(keys))], labels)
        ax.set_title(title)
        if rel:
            ax.axhline(1.0, color="grey", lw=0.8)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"wrote {path}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="repetitions per scenario (median kept)")
    parser.add_argument("--secs", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--idle", type=int, default=9000, help="idle tunnels on one process")
    parser.add_argument("--idle-workers", type=int, default=12000, help="idle tunnels with --workers 2")
    parser.add_argument("--quick", action="store_true", help="1 repetition, 1 s, 2,000 idle tunnels")
    parser.add_argument(
        "--servers",
        default="direct,gproxy,gproxy-w2,microsocks,pproxy,c-relay,gevent-min,squid,tinyproxy",
        help="by column name",
    )
    parser.add_argument("--no-idle", action="store_true", help="skip the idle-tunnel scenario")
    parser.add_argument("--no-auth", action="store_true", help="skip connections/s with RFC 1929 auth")
    parser.add_argument("--no-http", action="store_true", help="skip connections/s over HTTP CONNECT")
    parser.add_argument("--idle-only", action="store_true", help="run only the idle-tunnel scenario")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md and results.png")
    args = parser.parse_args()
    if args.quick:
        args.repeat, args.secs, args.idle, args.idle_workers = 1, 1.0, 2000, 2000
    if args.idle_only:
        args.no_write = True  # one scenario is not a results table
    build_loadgen()
    # every server gets the same open-file limit: the hard one (9,000 tunnels need 18,000+ descriptors)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * args.idle + 100:
        print(f"open-file limit {hard} is too low for {args.idle} idle tunnels: lowering the count")
        args.idle = args.idle_workers = max((hard - 100) // 2, 100)
    started = datetime.datetime.now(datetime.UTC)
    with tempfile.TemporaryDirectory(prefix="gproxy-bench-") as tmp, target() as ports:
        listed = servers(args, Path(tmp))
        running = []
        measured = [] if args.idle_only else listed  # the throughput, rate and latency scenarios
        for s in measured:
            if s.start():
                running.append(s)
            else:
                print(f"{s.name} did not start: skipped")
        try:
            res = measure(running, ports, args)
        finally:
            for s in running:
                s.stop()
        if not args.no_idle:
            for s in listed:
                if s.argv is not None and s.phase == "socks":
                    n = args.idle_workers if s.workers > 1 else args.idle
                    out = idle(s, ports, n)
                    print(f"  idle {s.name}: {out or 'did not start'}")
                    for k, v in out.items():
                        res.setdefault(s.label, {})[k] = [v]
    med = medians(res)
    derive(med)
    text = table(med)
    handshakes = handshake_table(med)
    if handshakes:
        text += "\n\nConnections/s by handshake (50 clients; auth = user u, password p):\n\n" + handshakes
    print(text)
    if not (args.quick or args.no_write):
        cmd = " ".join(["python", "bench/run.py", *sys.argv[1:]])
        notes = (HERE / "NOTES.md").read_text() if (HERE / "NOTES.md").exists() else ""
        (HERE / "RESULTS.md").write_text(
            f"# Benchmark results\n\nCommand: `{cmd}`  \nDate: {started:%Y-%m-%d %H:%M} UTC  \n"
            f"Machine: {machine()}  \nMedian of {args.repeat} runs of {args.secs:g} s each; "
            f"idle: {args.idle} tunnels ({args.idle_workers} with --workers 2).\n\n{text}\n\n"
            f"![results](results.png)\n\nRaw medians:\n\n```json\n{json.dumps(med, indent=1)}\n```\n\n{notes}"
        )
        chart(med, HERE / "results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
