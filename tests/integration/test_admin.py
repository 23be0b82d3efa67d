"""``gproxy --admin`` end to end: ``gproxy top --once`` reads it; --workers shows every worker's sessions."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import requests

from tests.helpers import ROOT, echo_through, gproxy_env, ipv4_dest, recv_all, socks5_connect, start_gproxy, wait_for


def _tunnels(port: int, echo, users_sizes):
    opened = []
    for user, size in users_sizes:
        sock, reply = socks5_connect(("127.0.0.1", port), ipv4_dest(echo.host, echo.port), auth=(user, b"pw"))
        assert reply[1] == 0
        assert echo_through(sock, b"z" * size) == b"z" * size
        opened.append(sock)
    return opened


def test_top_once_shows_the_open_tunnels(echo_tcp):
    running = start_gproxy(
        "--socks", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--user", "alice:pw", "--user", "bob:pw", listeners=2
    )
    try:
        held = _tunnels(running.port("socks5"), echo_tcp, [(b"alice", 3 << 20), (b"bob", 5000)])
        try:
            env = {**gproxy_env(), "COLUMNS": "200", "LINES": "40", "TERM": "dumb"}
            top = subprocess.run(
                [sys.executable, "-m", "gproxy", "top", "--once", f"127.0.0.1:{running.port('admin')}"],
                capture_output=True,
                env=env,
                cwd=ROOT,
                timeout=30,
                check=False,
            )
        finally:
            for sock in held:
                sock.close()
    finally:
        assert running.stop() == 0
    out = top.stdout.decode()
    assert top.returncode == 0, top.stderr
    assert "sessions 2" in out
    assert "alice" in out and "3.0M" in out  # 3 MiB each way
    assert "bob" in out and "4.9K" in out  # 5000 bytes each way
    assert f"127.0.0.1:{echo_tcp.port}" in out


def test_workers_show_and_end_every_workers_sessions(echo_tcp):
    running = start_gproxy(
        "--workers", "2", "--socks", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--user", "w:pw", listeners=2
    )
    try:
        held = _tunnels(running.port("socks5"), echo_tcp, [(b"w", 100 + n) for n in range(12)])
        base = f"http://127.0.0.1:{running.port('admin')}"
        try:
            for _ in range(6):  # new connections: the kernel picks the worker that answers
                rows = requests.get(base + "/sessions", headers={"Connection": "close"}, timeout=10).json()
                assert sorted(row["up"] for row in rows) == [100 + n for n in range(12)]
            workers = {row["id"].split("-")[0] for row in rows}
            assert len({row["id"] for row in rows}) == 12
            by_up = {row["up"]: row["id"] for row in rows}
            for n, sock in enumerate(held):
                answer = requests.delete(
                    f"{base}/sessions/{by_up[100 + n]}", headers={"Connection": "close"}, timeout=10
                )
                assert answer.status_code == 204
                assert recv_all(sock) == b""
            wait_for(lambda: requests.get(base + "/sessions", timeout=10).json() == [], what="no sessions left")
            for odd in ("9" * 5000 + "-1", "\u0661-1", "7-1"):  # huge, a non-ASCII digit, no such worker
                answer = requests.delete(f"{base}/sessions/{odd}", headers={"Connection": "close"}, timeout=10)
                assert answer.status_code == 404
        finally:
            for sock in held:
                sock.close()
    finally:
        assert running.stop() == 0
    assert workers <= {"0", "1"}


def test_admin_off_loopback_without_a_token_is_exit_2():
    result = subprocess.run(
        [sys.executable, "-m", "gproxy", "--socks", "127.0.0.1:0", "--admin", "0.0.0.0:0"],
        capture_output=True,
        env=gproxy_env(),
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and "--admin-token" in lines[0]


def test_the_token_stays_out_of_the_process_output(echo_tcp, tmp_path):
    token = "tok-" + os.urandom(8).hex()
    config = tmp_path / "gproxy.toml"
    config.write_text(
        f'socks = ["127.0.0.1:0"]\nadmin = ["127.0.0.1:0"]\nadmin-token = "{token}"\nlog-level = "debug"\n'
    )
    running = start_gproxy("--config", str(config), listeners=2)
    try:
        base = f"http://127.0.0.1:{running.port('admin')}"
        assert requests.get(base + "/sessions", timeout=10).status_code == 401
        ok = requests.get(base + "/sessions", headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert ok.status_code == 200 and ok.json() == []
        socket.create_connection(("127.0.0.1", running.port("admin")), timeout=10).close()
    finally:
        assert running.stop() == 0
    assert token not in "".join(running.stderr_lines)
