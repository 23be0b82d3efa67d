"""Stopping is visible: SIGINT/SIGTERM print how many sessions drain and for how long, then
``gproxy: stopped``; a second signal ends every session at once (single process and --workers)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.helpers import echo_through, ipv4_dest, recv_all, socks5_connect, start_gproxy, wait_for

SINGLE = ("--socks", "127.0.0.1:0")
WORKERS = ("--socks", "127.0.0.1:0", "--workers", "2")


def lines_starting(running, prefix: str) -> list[str]:
    return [line for line in running.stderr_lines if line.startswith(prefix)]


@pytest.mark.parametrize(
    ("args", "draining"),
    [
        (SINGLE, "gproxy: draining 1 sessions (up to 30 s; Ctrl-C again to stop now)\n"),
        (WORKERS, "gproxy: draining sessions of 2 workers (up to 30 s; Ctrl-C again to stop now)\n"),
    ],
    ids=["single", "workers"],
)
def test_a_second_sigint_ends_an_open_tunnel_at_once(echo_tcp, args, draining):
    running = start_gproxy(*args, "--drain-timeout", "30")
    try:
        sock, reply = socks5_connect(("127.0.0.1", running.port()), ipv4_dest("127.0.0.1", echo_tcp.port))
        with sock:
            assert reply[1] == 0
            assert echo_through(sock, b"kept open") == b"kept open"
            running.proc.send_signal(signal.SIGINT)
            wait_for(lambda: lines_starting(running, "gproxy: draining"), what="the draining line")
            assert lines_starting(running, "gproxy: draining") == [draining]
            assert echo_through(sock, b"still draining") == b"still draining"  # the first signal only drains
            started = time.monotonic()
            running.proc.send_signal(signal.SIGINT)
            code = running.proc.wait(10)  # the drain would last 30 s
            assert time.monotonic() - started < 10
            assert recv_all(sock) == b""  # the tunnel was ended
        assert code == 0, "".join(running.stderr_lines)
        running.follower.join(5)
        assert lines_starting(running, "gproxy: stopped") == ["gproxy: stopped\n"]
        assert len(lines_starting(running, "gproxy: draining")) == 1  # the second signal prints nothing more
        assert not any("Traceback" in line for line in running.stderr_lines)
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("args", "draining"),
    [
        (SINGLE, "gproxy: draining 0 sessions (up to 10 s; Ctrl-C again to stop now)\n"),
        (WORKERS, "gproxy: draining sessions of 2 workers (up to 10 s; Ctrl-C again to stop now)\n"),
    ],
    ids=["single", "workers"],
)
def test_sigterm_without_sessions_says_draining_then_stopped(args, draining):
    running = start_gproxy(*args)
    try:
        running.proc.send_signal(signal.SIGTERM)
        assert running.proc.wait(15) == 0
        running.follower.join(5)
        said = [line for line in running.stderr_lines if not line.startswith("gproxy: listening")]
        assert said == [draining, "gproxy: stopped\n"]
    finally:
        running.stop()
