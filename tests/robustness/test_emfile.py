"""Running out of file descriptors: gproxy under a low RLIMIT_NOFILE is
flooded until accept() fails with EMFILE, then the flood is released. The
accept loop must not spin or die: gproxy serves again, and its fds return."""

from __future__ import annotations

import dataclasses
import socket
import time

import gevent
import pytest

from gproxy.core.addr import Address
from tests.helpers import EchoServer
from tests.robustness.live import PROBES, DrainedGproxy, fd_count, good_session

LIMIT = 64
NO_AUTH = dataclasses.replace(PROBES[0], auth=False)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


@pytest.fixture(scope="module")
def emfile_run() -> dict[str, object]:
    """Drive gproxy into EMFILE, hold it there 2 s, release; report what happened."""
    result: dict[str, object] = {}
    with (
        EchoServer() as echo,
        DrainedGproxy("--socks", "127.0.0.1:0", "--handshake-timeout", "30", limit=LIMIT) as gproxy,
    ):
        pid = gproxy.proc.pid
        address = ("127.0.0.1", gproxy.port("socks5"))
        dest = Address("127.0.0.1", echo.port)
        good_session(address, NO_AUTH, dest, b"before")
        result["fds_before"] = baseline = fd_count(pid)
        # connections that sit in their handshake hold one gproxy fd each
        flood = []
        deadline = time.monotonic() + 30
        while fd_count(pid) < LIMIT and time.monotonic() < deadline:
            for _ in range(8):
                flood.append(socket.create_connection(address, timeout=10))
            gevent.sleep(0.05)
        result["fds_at_limit"] = fd_count(pid)
        for _ in range(20):  # queued in the backlog; accept() now fails with EMFILE
            flood.append(socket.create_connection(address, timeout=10))
        cpu_before = cpu_seconds(pid)
        gevent.sleep(2)
        result["cpu_at_emfile"] = cpu_seconds(pid) - cpu_before
        result["alive_at_emfile"] = gproxy.proc.poll() is None
        for sock in flood:
            sock.close()
        # recovers: new clients are served (the backlog drains first), fds come back
        deadline = time.monotonic() + 30
        result["recovered"] = False
        while time.monotonic() < deadline:
            try:
                good_session(address, NO_AUTH, dest, b"after", wait=5)
            except (AssertionError, OSError):
                gevent.sleep(0.2)
                continue
            result["recovered"] = True
            break
        deadline = time.monotonic() + 30
        while fd_count(pid) > baseline and time.monotonic() < deadline:
            gevent.sleep(0.2)
        result["fds_after"] = fd_count(pid)
        result["exit"], result["stderr"] = gproxy.stop_and_read()
    print({k: v for k, v in result.items() if k != "stderr"})
    return result


def test_emfile_backs_off_and_recovers(emfile_run):
    assert emfile_run["fds_at_limit"] >= LIMIT - 1, "could not drive gproxy to its fd limit"
    assert emfile_run["alive_at_emfile"], "gproxy died at EMFILE"
    # a spinning accept loop burns a whole core; a backing-off one next to nothing
    assert emfile_run["cpu_at_emfile"] < 1.0, f"accept loop used {emfile_run['cpu_at_emfile']:.2f}s CPU in 2 s"
    assert emfile_run["recovered"], "gproxy did not serve again after the fds were freed"
    assert emfile_run["fds_after"] <= emfile_run["fds_before"]
    assert emfile_run["exit"] == 0


def test_emfile_prints_no_traceback(emfile_run):
    stderr = str(emfile_run["stderr"])
    assert "Traceback" not in stderr, f"{stderr.count('Traceback')} tracebacks: {stderr[-1500:]}"
