"""Is there a per-session leak? Equal rounds of soak traffic against one gproxy.

    PYTHONPATH=. python bench/leak_rounds.py                    # the soak's mix, every listener kind
    PYTHONPATH=. python bench/leak_rounds.py --kind udp_forward --rounds 8 --sessions 500
    PYTHONPATH=. python bench/leak_rounds.py --trace            # + tracemalloc inside gproxy (slower)

gproxy runs with a debug hook (this file with ``--serve``): on SIGUSR1 it runs
gc.collect() and writes its live objects counted by type (and, with --trace,
tracemalloc's traced bytes and a snapshot) to a scratch directory. After each
round (and after the fds are back and udp-forward mappings have expired) the
driver prints VmRSS, the gc object count and the types that changed. Growth
that stops after the first rounds is warm-up; the same growth every round is
a leak. Snapshots (snapN.tm) can be diffed with tracemalloc.Snapshot.compare_to.
Loopback only; bounded by --rounds x --sessions.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path


def serve(argv: list[str]) -> int:
    """gproxy's own main, plus the SIGUSR1 dump hook."""
    out = Path(os.environ["LEAK_DIR"])
    trace = os.environ.get("LEAK_TRACE") == "1"
    if trace:
        tracemalloc.start(8)
    dumps = [0]

    def dump() -> None:
        gc.collect()
        dumps[0] += 1
        n = dumps[0]
        counts = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
        (out / f"counts{n}.pickle").write_bytes(pickle.dumps(counts))
        if trace:
            tracemalloc.take_snapshot().dump(str(out / f"snap{n}.tm"))
        (out / f"done{n}").write_text(str(tracemalloc.get_traced_memory()[0] if trace else -1))

    # Installed before gproxy starts, so a SIGUSR1 can never arrive unhandled (which would
    # end the process); a plain Python handler, run by the interpreter on the main thread.
    signal.signal(signal.SIGUSR1, lambda *_: dump())
    import gproxy.ops.cli as cli

    return cli.main(argv)


def drive(opts: argparse.Namespace) -> None:
    import gevent
    from gevent import monkey

    monkey.patch_all()
    from gproxy.core.addr import Address
    from tests.helpers import ROOT, EchoServer, UdpEchoServer, WsgiOrigin, gproxy_env
    from tests.robustness import test_soak as soak
    from tests.robustness.live import fd_count, rss_kib

    out = Path(tempfile.mkdtemp(prefix="gproxy-leak-"))
    listeners = soak._available()
    if opts.kind != "mixed":
        scenario = getattr(soak, opts.kind)
        listeners = [next(lis for lis in listeners if any(s is scenario for s, _ in lis.scenarios))]
        scenarios = [(scenario, 1)]
    else:
        scenarios = [(s, w) for lis in listeners for s, w in lis.scenarios]
    tally = soak.Tally()
    with EchoServer() as echo, UdpEchoServer() as udp_echo, WsgiOrigin() as origin:
        ctx = soak.SoakContext(Address("127.0.0.1", echo.port), Address("127.0.0.1", udp_echo.port), tally, origin.port)
        args = [arg for lis in listeners for arg in lis.args(ctx)]
        if "--user" not in args:  # the soak's clients authenticate on every listener
            args += ["--user", f"{soak.USER.decode()}:{soak.PASSWORD.decode()}"]
        args += ["--access-log", str(out / "access.log"), "--handshake-timeout", "2", "--idle-timeout", str(soak.IDLE)]
        env = gproxy_env() | {"LEAK_DIR": str(out), "LEAK_TRACE": "1" if opts.trace else "0"}
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        assert proc.stderr is not None
        try:
            for _ in listeners:
                line = proc.stderr.readline().decode()
                assert line.startswith("gproxy: listening "), line
                kind, address = line.split()[2:4]
                host, _, port = address.rpartition(":")
                ctx.addresses[kind] = (host.strip("[]"), int(port))
            stderr = proc.stderr
            gevent.spawn(lambda: [None for _ in stderr])
            pid = proc.pid
            fds_before = fd_count(pid)

            def snapshot(n: int) -> tuple[Counter[str], int]:
                proc.send_signal(signal.SIGUSR1)
                done = out / f"done{n}"
                deadline = time.monotonic() + 120
                while not (done.exists() and done.read_text()) and time.monotonic() < deadline:
                    gevent.sleep(0.1)
                return pickle.loads((out / f"counts{n}.pickle").read_bytes()), int(done.read_text())

            prev, traced = snapshot(1)
            print(
                f"{opts.kind}: gproxy pid {pid}, RSS {rss_kib(pid)} KiB, gc objects {prev.total()}, traced {traced} B"
            )
            for r in range(1, opts.rounds + 1):
                left = [opts.sessions]

                def worker(seed: int, left: list[int]) -> None:
                    rng = random.Random(seed)
                    while left[0] > 0:
                        left[0] -= 1
                        scenario = rng.choices([s for s, _ in scenarios], [w for _, w in scenarios])[0]
                        try:
                            tally.bytes_verified += scenario(ctx, rng)
                            tally.sessions[scenario.__name__] += 1
                        except (AssertionError, OSError, EOFError) as exc:
                            tally.failures.append(f"{scenario.__name__}: {exc!r}")

                started = time.monotonic()
                gevent.joinall(
                    [gevent.spawn(worker, r * 1000 + i, left) for i in range(opts.workers)], raise_error=True
                )
                took = time.monotonic() - started
                deadline = time.monotonic() + soak.IDLE * 3 + 10
                while fd_count(pid) > fds_before and time.monotonic() < deadline:
                    gevent.sleep(0.2)
                gevent.sleep(soak.IDLE + 1)  # udp-forward mappings expire
                counts, now_traced = snapshot(r + 1)
                diff = counts.copy()
                diff.subtract(prev)
                changed = sorted(((v, k) for k, v in diff.items() if v), reverse=True)[:5]
                print(
                    f"round {r}: {opts.sessions} sessions in {took:.1f}s; RSS {rss_kib(pid)} KiB;"
                    f" fds {fd_count(pid)} (before {fds_before}); gc objects {counts.total()} ({diff.total():+d});"
                    f" traced {now_traced} B ({now_traced - traced:+d}); changed {changed}",
                    flush=True,
                )
                prev, traced = counts, now_traced
            print(
                f"sessions {dict(tally.sessions)}; failures {len(tally.failures)} {tally.failures[:3]}; scratch {out}"
            )
        finally:
            proc.terminate()
            proc.wait(30)


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        raise SystemExit(serve(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", default="mixed", help="mixed, or one soak scenario: socks5_connect, udp_forward, ...")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=2000, help="sessions per round")
    parser.add_argument("--workers", type=int, default=12, help="concurrent clients")
    parser.add_argument("--trace", action="store_true", help="tracemalloc inside gproxy")
    drive(parser.parse_args())


if __name__ == "__main__":
    main()
