"""``--workers N``: SO_REUSEPORT workers under a supervisor (subprocess, as users run it)."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from tests.helpers import (
    echo_through,
    ipv4_dest,
    metric,
    scrape_metrics,
    socks5_connect,
    start_gproxy,
    wait_for,
)

AUTH = (b"u", b"p")


@pytest.fixture
def workers2(tmp_path):
    """gproxy --workers 2 with users from a file, a SOCKS and a metrics listener."""
    users = tmp_path / "users"
    users.write_text("u:p\n")
    running = start_gproxy("--socks", "0", "--metrics", "0", "--workers", "2", "--users-file", str(users), listeners=2)
    running.users_file = users  # type: ignore[attr-defined]
    yield running
    running.__exit__()


def worker_pids(running) -> set[int]:
    from tests.helpers import child_pids

    return child_pids(running.proc.pid)


def tunnel(running, echo, auth=AUTH):
    sock, reply = socks5_connect(("127.0.0.1", running.port("socks5")), ipv4_dest(echo.host, echo.port), auth=auth)
    assert reply[1] == 0
    return sock


def test_two_workers_both_accept(workers2, echo_tcp):
    pids = wait_for(lambda: len(worker_pids(workers2)) == 2 and worker_pids(workers2), what="two workers")
    held = [tunnel(workers2, echo_tcp) for _ in range(24)]
    samples = scrape_metrics(workers2.port("metrics"))
    per_worker = {
        int(dict(labels)["pid"]): value
        for (name, labels), value in samples.items()
        if name == "gproxy_worker_connections_active"
    }
    # 24 connections hashed over two listening sockets: both workers get some
    assert set(per_worker) == pids
    assert all(count > 0 for count in per_worker.values()), per_worker
    assert metric(samples, "gproxy_connections_accepted_total") == 24  # added up across workers
    assert metric(samples, "gproxy_connections_active") == 24
    for sock in held:
        assert echo_through(sock, b"hi") == b"hi"
        sock.close()
    listening = [line for line in workers2.stderr_lines if line.startswith("gproxy: listening")]
    assert len(listening) == 2  # printed once, by the supervisor


def test_a_killed_worker_is_replaced(workers2, echo_tcp):
    pids = wait_for(lambda: len(worker_pids(workers2)) == 2 and worker_pids(workers2), what="two workers")
    for _ in range(4):
        tunnel(workers2, echo_tcp).close()
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    new = wait_for(
        lambda: len(worker_pids(workers2)) == 2 and victim not in worker_pids(workers2) and worker_pids(workers2),
        what="a replacement worker",
    )
    assert len(new & pids) == 1
    assert any(f"(pid {victim}) killed by SIGKILL" in line for line in workers2.stderr_lines)

    def restarted_and_serving():
        samples = scrape_metrics(workers2.port("metrics"))
        return samples if metric(samples, "gproxy_worker_restarts_total") == 1 else None

    wait_for(restarted_and_serving, what="the restart counter")
    for _ in range(8):  # every connection is served, whichever worker it lands on
        sock = tunnel(workers2, echo_tcp)
        assert echo_through(sock, b"again") == b"again"
        sock.close()
    samples = scrape_metrics(workers2.port("metrics"))
    assert metric(samples, "gproxy_connections_accepted_total") >= 12  # the dead worker's count stays
    assert workers2.proc.poll() is None

    # a worker that dies young again waits twice as long: a crash loop backs off
    (replacement,) = new - pids
    os.kill(replacement, signal.SIGKILL)
    wait_for(lambda: any(f"(pid {replacement})" in line for line in workers2.stderr_lines), what="the second death")
    delays = [line.rsplit(" ", 1)[1].strip() for line in workers2.stderr_lines if "restarting in" in line]
    assert delays == ["0.1s", "0.2s"]
    wait_for(lambda: len(worker_pids(workers2)) == 2 and replacement not in worker_pids(workers2), what="another")


def test_sigterm_drains_an_open_transfer(workers2, echo_tcp):
    sock = tunnel(workers2, echo_tcp)
    assert echo_through(sock, b"a" * 100_000) == b"a" * 100_000
    workers2.proc.send_signal(signal.SIGTERM)
    port = workers2.port("socks5")

    def refusing() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        return False

    wait_for(refusing, what="the workers to stop accepting")
    assert workers2.proc.poll() is None  # still draining our tunnel
    assert echo_through(sock, b"b" * 300_000) == b"b" * 300_000
    sock.close()
    assert workers2.proc.wait(30) == 0
    assert not any("Traceback" in line for line in workers2.stderr_lines)


def test_sighup_adds_a_user_without_dropping_a_tunnel(workers2, echo_tcp):
    sock = tunnel(workers2, echo_tcp)
    workers2.users_file.write_text("u:p\nnew:pw\n")
    workers2.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: sum("INFO: reloaded" in line for line in workers2.stderr_lines) == 2, what="both workers")
    for _ in range(6):
        tunnel(workers2, echo_tcp, auth=(b"new", b"pw")).close()
    assert echo_through(sock, b"still open") == b"still open"

    # a broken file: one error line, the old users stay
    workers2.users_file.write_text("no colon here\n")
    workers2.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: any("reload failed" in line for line in workers2.stderr_lines), what="the error")
    tunnel(workers2, echo_tcp, auth=(b"new", b"pw")).close()
    assert echo_through(sock, b"and still") == b"and still"
    sock.close()
    assert sum("reload failed" in line for line in workers2.stderr_lines) == 1


def test_bind_error_is_exit_2_before_any_worker():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    from tests.helpers import GproxyProcess

    running = GproxyProcess("--socks", str(taken.getsockname()[1]), "--workers", "2", wait=False)
    try:
        assert running.proc.wait(30) == 2
        assert running.proc.stderr is not None
        err = running.proc.stderr.read().decode()
        assert err.startswith("gproxy: cannot listen on 127.0.0.1:") and err.count("\n") == 1
    finally:
        running.stop()
        taken.close()
