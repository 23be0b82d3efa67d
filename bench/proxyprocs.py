"""Helpers shared by the benchmark scripts: free loopback ports, waiting for a listener, a SOCKS5
tunnel, a process's CPU time (with its workers), and temp configs for the reference HTTP proxies
(Squid, tinyproxy).

Both proxies are configured to serve only 127.0.0.1 clients going to 127.0.0.1 (GET
or CONNECT to any port), with no cache and no access log (unless asked: http_forward.py
--access-log), and to run in the foreground so that the caller starts and stops them by PID.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """pid and its child processes (workers), recursively."""
    pids, todo = [], [pid]
    while todo and len(pids) < 64:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
    return pids


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc); gone ones count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def checkout_env(checkout: Path) -> dict[str, str]:
    """This process's environment with ``checkout`` first on PYTHONPATH: a gproxy started with it
    runs that tree's code (not an installed copy)."""
    return dict(os.environ, PYTHONPATH=str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_connectable(port: int, proc: subprocess.Popen | None = None, timeout: float = 15) -> None:
    """Return once 127.0.0.1:port accepts; RuntimeError if proc exits first or on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout} s")


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """End a process this script started, by its PID: SIGTERM, then SIGKILL if it has not
    exited within ``timeout`` seconds; reaped either way."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def socks5_tunnel(proxy_port: int, dest_port: int, timeout: float = 30) -> socket.socket:
    """A SOCKS5 CONNECT (no auth) through 127.0.0.1:proxy_port to 127.0.0.1:dest_port (the
    request after the method reply: any server takes that); ConnectionError if the proxy
    closes or refuses. The socket has ``timeout``; it is closed on any failure."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        sock.sendall(b"\x05\x01\x00")
        if _recv_exactly(sock, 2) != b"\x05\x00":
            raise ConnectionError("SOCKS5: no-auth method refused")
        sock.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + dest_port.to_bytes(2, "big"))
        reply = _recv_exactly(sock, 10)  # a reply with an IPv4 address
        if reply[1] != 0:
            raise ConnectionError(f"SOCKS5 refused: {reply!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("proxy closed during the handshake")
        data += chunk
    return data


def squid_argv(tmp: Path, port: int, access_log: bool = False) -> list[str]:
    """Squid in the foreground (-N): no cache, cache log in tmp; an access log (its own
    stdio module, in tmp) only with ``access_log``."""
    conf = tmp / f"squid-{port}.conf"
    log_line = "access_log none"
    if access_log:  # in a directory Squid's own user (it drops root) may write to
        logs = tmp / f"squid-{port}-logs"
        logs.mkdir(exist_ok=True)
        for path in (tmp, logs):
            path.chmod(0o777 if path == logs else 0o755)
        log_line = f"access_log stdio:{logs}/squid-{port}-access.log"
    conf.write_text(
        f"""http_port 127.0.0.1:{port}
acl from_lo src 127.0.0.1/32
acl to_lo dst 127.0.0.1/32
http_access allow from_lo to_lo
http_access deny all
cache deny all
cache_mem 0 MB
{log_line}
cache_log {tmp}/squid-{port}-cache.log
pid_filename {tmp}/squid-{port}.pid
coredump_dir {tmp}
pinger_enable off
shutdown_lifetime 1 seconds
"""
    )
    return ["/usr/sbin/squid", "-N", "-f", str(conf)]


def tinyproxy_argv(tmp: Path, port: int) -> list[str]:
    """tinyproxy in the foreground (-d); no ConnectPort line, so CONNECT may go to any port."""
    conf = tmp / f"tinyproxy-{port}.conf"
    conf.write_text(
        f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 200\nLogLevel Critical\n"
        f'PidFile "{tmp}/tinyproxy-{port}.pid"\n'
    )
    return ["tinyproxy", "-d", "-c", str(conf)]
