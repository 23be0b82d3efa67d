#!/usr/bin/env python3
"""HTTP forwarding rate: ``ab -k`` GETs of a 1 KiB file from nginx through each proxy.

    python bench/http_forward.py                 # 20,000 requests per proxy, 50 concurrent
    python bench/http_forward.py -n 5000 --gproxy-args="--workers 2"
    python bench/http_forward.py --access-log    # gproxy and Squid each writing its access log

Starts nginx (a temp config on a free loopback port), then gproxy, Squid (no
cache, foreground) and tinyproxy if installed, one at a time, and prints each
one's requests/s, the proxy's CPU per request (utime + stime of its processes over
the run) and both as ratios to Squid's in the same run. Absolute-URI
requests with client keep-alive, as browsers send them to a proxy. Every
process it starts is stopped by its PID; the temp directory is removed.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import proxyprocs as procs

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def running(argv: list[str], port: int, log: Path, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` until the block ends; stopped by its PID (SIGTERM, then SIGKILL)."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kwargs)  # type: ignore[call-overload]
    try:
        procs.wait_connectable(port, proc)
        yield proc
    finally:
        procs.stop_process(proc)


def nginx_argv(tmp: Path, port: int) -> list[str]:
    (tmp / "www").mkdir()
    (tmp / "www" / "1k").write_bytes(b"x" * 1023 + b"\n")
    for path in (tmp, tmp / "www", tmp / "www" / "1k"):  # nginx's workers may run as nobody
        path.chmod(0o755)
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy; fastcgi_temp_path {tmp}/fcgi;
    uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{ listen 127.0.0.1:{port}; root {tmp}/www; }}
}}
"""
    )
    return ["/usr/sbin/nginx", "-c", str(conf), "-p", str(tmp), "-e", str(tmp / "nginx-error.log")]


def ab(proxy_port: int, url: str, requests: int, concurrency: int) -> float:
    """Requests per second reported by ab; RuntimeError if any request failed."""
    argv = ["ab", "-q", "-k", "-c", str(concurrency), "-n", str(requests), "-X", f"127.0.0.1:{proxy_port}", url]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout
    failed = re.search(r"Failed requests:\s+(\d+)", out)
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    rate = re.search(r"Requests per second:\s+([\d.]+)", out)
    if rate is None or failed is None or int(failed.group(1)) or non2xx:
        raise RuntimeError(f"ab failed: {out[:1500]}")
    return float(rate.group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--requests", type=int, default=20000, help="requests per proxy (default 20000)")
    parser.add_argument("-c", "--concurrency", type=int, default=50)
    parser.add_argument("--gproxy-args", default="", help="extra gproxy flags, e.g. '--workers 2'")
    parser.add_argument("--only", default="", help="comma-separated proxies to run (gproxy,squid,tinyproxy)")
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="gproxy and Squid write an access log (a file in the temp directory); tinyproxy is left out",
    )
    args = parser.parse_args()
    if shutil.which("ab") is None:
        print("ab (apache2-utils) is needed", file=sys.stderr)
        return 2
    env = procs.checkout_env(ROOT)
    proxies: dict[str, tuple[object, dict[str, object]]] = {
        "gproxy": (
            lambda tmp, port: (
                [sys.executable, "-m", "gproxy", "--http", f"127.0.0.1:{port}", "-q"]
                + (["--access-log", str(tmp / f"gproxy-{port}-access.log")] if args.access_log else [])
                + shlex.split(args.gproxy_args)
            ),
            {"env": env, "cwd": ROOT},
        ),
        "squid": (lambda tmp, port: procs.squid_argv(tmp, port, args.access_log), {}),
    }
    if shutil.which("tinyproxy") and not args.access_log:
        proxies["tinyproxy"] = (procs.tinyproxy_argv, {})
    wanted = [name for name in args.only.split(",") if name] or list(proxies)
    unknown = sorted(set(wanted) - set(proxies))
    if unknown:
        parser.error(f"--only {','.join(unknown)}: not installed, unknown, or left out with --access-log")
    rates: dict[str, float] = {}
    cpu_us: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gproxy-bench-") as tmpdir:
        tmp = Path(tmpdir)
        origin = procs.free_port()
        url = f"http://127.0.0.1:{origin}/1k"
        with running(nginx_argv(tmp, origin), origin, tmp / "nginx.out"):
            for name in wanted:
                build, kwargs = proxies[name]
                port = procs.free_port()
                try:
                    with running(build(tmp, port), port, tmp / f"{name}.out", **kwargs) as proc:  # type: ignore[operator]
                        ab(port, url, min(1000, args.requests), args.concurrency)  # warm-up
                        pids = procs.descendants(proc.pid)
                        before = procs.cpu_seconds(pids)
                        rates[name] = ab(port, url, args.requests, args.concurrency)
                        cpu_us[name] = (procs.cpu_seconds(pids) - before) / args.requests * 1e6
                except RuntimeError as exc:
                    print(f"{name}: {exc}", file=sys.stderr)
                    with contextlib.suppress(OSError):
                        print((tmp / f"{name}.out").read_text()[-800:], file=sys.stderr)
        for log in sorted(tmp.rglob("*-access.log")):  # requests + warm-up if each proxy logged every one
            with open(log, "rb") as lines:
                print(f"{log.name}: {sum(1 for _ in lines)} lines")
    squid = rates.get("squid")
    print(
        f"{'proxy':<10} {'req/s':>9} {'vs squid':>9} {'CPU us/req':>11} {'vs squid':>9}"
        f"   (ab -k -c {args.concurrency} -n {args.requests}, 1 KiB GET)"
    )
    for name, rate in rates.items():
        ratio = f"{rate / squid:.2f}x" if squid else "-"
        cpu_ratio = f"{cpu_us[name] / cpu_us['squid']:.2f}x" if squid and cpu_us["squid"] else "-"
        print(f"{name:<10} {rate:>9.0f} {ratio:>9} {cpu_us[name]:>11.1f} {cpu_ratio:>9}")
    return 0 if rates else 1


if __name__ == "__main__":
    sys.exit(main())
