"""Audit #13: ``--workers`` workers import nothing from the current directory, and a
SIGHUP that reaches a worker still starting waits for it instead of killing it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.helpers import (
    ROOT,
    FollowedGproxy,
    child_pids,
    echo_through,
    gproxy_env,
    ipv4_dest,
    socks5_connect,
    wait_for,
)

PLANTED = ("gproxy/__init__.py", "gevent/__init__.py", "h11.py", "prometheus_client/__init__.py")


def plant(directory):
    """Modules that, if imported, leave a marker file next to themselves."""
    for relative in PLANTED:
        path = directory / relative
        path.parent.mkdir(exist_ok=True)
        marker = directory / ("IMPORTED-" + relative.split("/")[0].removesuffix(".py"))
        path.write_text(f"open({str(marker)!r}, 'w').close()\nraise ImportError('planted')\n")


def markers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("IMPORTED-"))


class GproxyIn(FollowedGproxy):
    """gproxy started from ``cwd`` as its console script starts it: no current directory on sys.path."""

    def __init__(self, cwd, *args: str) -> None:  # type: ignore[no-untyped-def]
        self.proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "gproxy", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=gproxy_env(),
            cwd=cwd,
        )
        self.listening = {}
        self.stderr_lines = []


def test_workers_started_from_a_hostile_directory_import_nothing_from_it(tmp_path, echo_tcp):
    plant(tmp_path)
    running = GproxyIn(tmp_path, "--socks", "0", "--workers", "2")
    try:
        running.wait_listening(30)
        running.follow()
        for _ in range(6):  # whichever worker each lands on
            sock, reply = socks5_connect(("127.0.0.1", running.port()), ipv4_dest(echo_tcp.host, echo_tcp.port))
            assert reply[1] == 0 and echo_through(sock, b"safe") == b"safe"
            sock.close()
    finally:
        running.stop()
    assert markers(tmp_path) == []


def test_a_worker_path_has_no_relative_or_empty_entries(tmp_path):
    """Guards the siblings of ``-m``'s current directory: '' or '.' in PYTHONPATH."""
    from gproxy.ops.workers import worker_command, worker_env

    plant(tmp_path)
    env = dict(gproxy_env(), PYTHONPATH=os.pathsep.join(["", ".", "gevent", str(ROOT), ""]))
    probe = subprocess.run(
        [*worker_command()[:2], "-c", "import sys, h11, gevent, gproxy; print(sys.path)"],
        env=worker_env(env),
        cwd=tmp_path,
        capture_output=True,
        timeout=30,
    )
    assert probe.returncode == 0, probe.stderr.decode()
    assert markers(tmp_path) == []
    assert worker_command()[1:] == ["-P", "-m", "gproxy.ops.workers"]


def test_a_sighup_storm_right_after_a_restart_kills_no_worker(tmp_path, echo_tcp):
    """Guards every signal a starting worker may get (HUP, and TERM/INT from a terminal):
    held until the worker can handle it."""
    users = tmp_path / "users"
    users.write_text("u:p\n")
    running = FollowedGproxy("--socks", "0", "--workers", "2", "--users-file", str(users), wait=False)
    try:
        running.wait_listening(30)
        running.follow()
        pids = wait_for(lambda: len(child_pids(running.proc.pid)) == 2 and child_pids(running.proc.pid))
        os.kill(min(pids), signal.SIGKILL)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:  # the replacement starts 0.1 s after the death, mid-storm
            running.proc.send_signal(signal.SIGHUP)
            time.sleep(0.02)
        wait_for(lambda: len(child_pids(running.proc.pid)) == 2, what="two workers")
        time.sleep(0.5)  # a worker that died of the last HUPs would show up here
        assert not any("killed by SIGHUP" in line for line in running.stderr_lines), "".join(running.stderr_lines)
        assert sum("restarting in" in line for line in running.stderr_lines) == 1
        for _ in range(6):
            sock, reply = socks5_connect(
                ("127.0.0.1", running.port()), ipv4_dest(echo_tcp.host, echo_tcp.port), auth=(b"u", b"p")
            )
            assert reply[1] == 0
            sock.close()
    finally:
        assert running.stop() == 0
