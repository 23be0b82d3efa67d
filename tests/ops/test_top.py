"""``gproxy top``: the view's arithmetic, and the real program under tmux against a
stand-in admin listener whose sessions move."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gproxy.ops.top import Row, admin_url, build_view, human, parse_sessions
from tests.helpers import ROOT, gproxy_env


def row(id: str, user: str, up: int, down: int) -> Row:
    return Row(id, user, "127.0.0.1:1", "socks5", "connect", f"{id}.example:443", "direct", up, down, 1.0)


def test_rates_sort_sessions_and_users():
    previous = {"a": 1000, "b": 0, "c": 500}
    rows = [row("a", "alice", 1000, 1000), row("b", "bob", 100, 0), row("c", "alice", 500, 4500), row("d", "-", 9, 9)]
    view = build_view(rows, previous, elapsed=2.0)
    assert [r.id for r in view.rows] == ["c", "a", "b", "d"]  # 2250/s, 500/s, 50/s, new (0/s)
    assert view.rows[0].rate == 2250
    assert view.users[0] == ("alice", 2, 1500, 5500, 2750.0)
    assert view.rate == 2800


def test_parse_sessions_skips_malformed_entries():
    rows = parse_sessions([{"id": 1, "user": None, "up": 5, "down": 6}, {"user": "x"}, "junk", {"id": 2, "up": "z"}])
    assert [(r.id, r.user, r.up, r.down) for r in rows] == [("1", "-", 5, 6)]
    with pytest.raises(ValueError):
        parse_sessions({"not": "a list"})


def test_units_and_addresses():
    assert [human(n) for n in (0, 1023, 1536, 3 << 20)] == ["0", "1023", "1.5K", "3.0M"]
    assert admin_url("9180") == "http://127.0.0.1:9180"
    assert admin_url("[::1]:9180") == "http://[::1]:9180"
    with pytest.raises(ValueError):
        admin_url("nonsense")


class _Admin(BaseHTTPRequestHandler):
    """A stand-in for gproxy's admin listener: one busy and one quiet session, moving."""

    started = time.monotonic()
    token = "s3cret"

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(401)
            self.end_headers()
            return
        t = time.monotonic() - self.started
        sessions = [
            {"id": 7, "user": "alice", "client": "127.0.0.1:5000", "proto": "socks5", "cmd": "connect",
             "dest": "quiet.example:22", "via": "direct", "up": 10, "down": 10, "age": t},
            {"id": 9, "user": "bob", "client": "127.0.0.1:5001", "proto": "http", "cmd": "connect",
             "dest": "busy.example:443", "via": "direct", "up": 100, "down": int(t * 5_000_000), "age": t},
        ]  # fmt: skip
        body = json.dumps(sessions).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Admin)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(5)


def _tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=20, check=True).stdout


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (.ci/run installs it)")
def test_top_under_tmux_shows_the_busiest_first_and_quits_on_q(admin, tmp_path):
    name = f"gproxy-top-{id(admin)}"
    env = gproxy_env()
    top = f"PYTHONPATH={env['PYTHONPATH']} {sys.executable} -m gproxy top 127.0.0.1:{admin} --token s3cret"
    command = f"cd {ROOT} && unset COLUMNS LINES && {top}; echo EXIT=$? > {tmp_path}/code"
    socket_name = str(tmp_path / "tmux.sock")
    _tmux("-S", socket_name, "new-session", "-d", "-s", name, "-x", "150", "-y", "30", command)
    try:
        screen = ""
        for _ in range(60):  # two polls give a rate; bounded wait
            time.sleep(0.25)
            screen = _tmux("-S", socket_name, "capture-pane", "-p", "-t", name)
            if "busy.example" in screen and "M" in screen.split("busy.example")[0].splitlines()[-1]:
                break
        assert "gproxy top" in screen, screen
        lines = screen.splitlines()
        assert "busy.example:443" in screen, screen
        busy = next(i for i, line in enumerate(lines) if "busy.example:443" in line)
        quiet = next(i for i, line in enumerate(lines) if "quiet.example:22" in line)
        assert busy < quiet, screen  # sorted by current throughput
        assert "bob" in lines[busy] and "/s" not in lines[busy]
        assert any(line.strip().startswith("bob") and "1" in line for line in lines[quiet + 1 :]), screen
        _tmux("-S", socket_name, "send-keys", "-t", name, "q")
        for _ in range(40):
            if (tmp_path / "code").exists():
                break
            time.sleep(0.25)
        assert (tmp_path / "code").read_text().strip() == "EXIT=0"
    finally:
        subprocess.run(["tmux", "-S", socket_name, "kill-server"], capture_output=True, timeout=20)


def test_top_once_and_errors(admin):
    env = gproxy_env()
    run = [sys.executable, "-m", "gproxy", "top"]
    ok = subprocess.run(
        [*run, str(admin), "--token", "s3cret", "--once"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=30
    )
    assert ok.returncode == 0 and "busy.example:443" in ok.stdout, ok.stderr
    denied = subprocess.run([*run, str(admin), "--once"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)
    assert denied.returncode == 1 and "HTTP 401" in denied.stderr and "Traceback" not in denied.stderr
    bad = subprocess.run([*run, "not an address"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=30)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
