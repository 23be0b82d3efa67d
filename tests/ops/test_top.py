"""``gproxy top``: the view's arithmetic, and the real program under tmux against a
stand-in admin listener whose sessions move."""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from gproxy.ops.top import (
    MAX_INTERVAL,
    MIN_INTERVAL,
    Row,
    admin_url,
    build_view,
    human,
    interval,
    parse_sessions,
    render,
)
from tests.helpers import ROOT, FakeAdmin, gproxy_env, run_gproxy, serve_http_handler


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


@pytest.mark.parametrize("addr", ["99999", "127.0.0.1:99999", "127.0.0.1:0", "²", "127.0.0.1:²", "127.0.0.1:१२३"])
def test_an_address_with_no_real_port_is_exit_2(addr):
    """It was tried as given: exit 1, 'Connection refused' for 99999 and 'InvalidURL' for '²'."""
    result = run_gproxy("top", "--once", addr)
    message = f"gproxy top: {addr!r} is not PORT, HOST:PORT or [IPV6]:PORT (a port from 1 to 65535)\n"
    assert (result.returncode, result.stderr) == (2, message)


#: user names an unauthenticated client can give (RFC 1929), which rich would take as markup
#: or the terminal as a command
HOSTILE_NAMES = ["[/oops]", "[red]x[/red]", "\x1b[2J", "[link=http://evil]y", "\u202etxt.exe"]


def hostile_sessions(t: float) -> list[dict[str, object]]:
    """Sessions whose user, dest, cmd and via are markup and escape sequences."""
    return [
        {"id": n, "user": name, "client": "127.0.0.1:5000", "proto": "socks5", "cmd": "[bold]",
         "dest": f"{name}.example:443", "via": "[/]", "up": n, "down": 0, "age": t}
        for n, name in enumerate(HOSTILE_NAMES)
    ]  # fmt: skip


class _HostileAdmin(FakeAdmin):
    def sessions(self, t: float) -> list[dict[str, object]]:
        return hostile_sessions(t)


@pytest.fixture
def admin():
    yield from serve_http_handler(FakeAdmin)


@pytest.fixture
def hostile_admin():
    yield from serve_http_handler(_HostileAdmin)


def _spelled_out(name: str) -> str:
    return name.replace("\x1b", "\\x1b").replace("\u202e", "\\u202e")


def test_text_from_the_proxy_is_shown_literally_never_as_markup_or_escapes():
    from rich.console import Console

    rows = parse_sessions(hostile_sessions(3.0))
    for width in (150, 80):  # the wide layout has client/proto/cmd/via too
        console = Console(file=io.StringIO(), width=width, height=40, color_system=None, legacy_windows=False)
        console.print(render(build_view(rows, {}, 0.0), "http://127.0.0.1:1", width, 40))
        screen = console.file.getvalue()  # type: ignore[attr-defined]
        assert "\x1b" not in screen and "\u202e" not in screen
        for name in HOSTILE_NAMES:
            assert _spelled_out(name) in screen, screen
        if width == 150:
            assert "[bold]" in screen and "[/]" in screen


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
    ok = run_gproxy("top", str(admin), "--token", "s3cret", "--once")
    assert ok.returncode == 0 and "busy.example:443" in ok.stdout, ok.stderr
    denied = run_gproxy("top", str(admin), "--once")
    assert denied.returncode == 1 and "HTTP 401" in denied.stderr and "Traceback" not in denied.stderr
    bad = run_gproxy("top", "not an address")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_top_once_shows_markup_in_user_names_as_text(hostile_admin):
    result = run_gproxy("top", str(hostile_admin), "--token", "s3cret", "--once", env={"COLUMNS": "150", "LINES": "40"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "\x1b" not in result.stdout
    for name in HOSTILE_NAMES:
        assert _spelled_out(name) in result.stdout, result.stdout


def test_interval_takes_finite_seconds_within_bounds():
    assert [interval(text) for text in ("1", "0.25", "1e1", str(MIN_INTERVAL), str(MAX_INTERVAL))] == [
        1.0, 0.25, 10.0, MIN_INTERVAL, MAX_INTERVAL
    ]  # fmt: skip
    for text in ("nan", "inf", "-inf", "1e999", "0", "-1", "1e-300", "0.01", "3601", "1e300", "abc", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            interval(text)


@pytest.mark.parametrize("text", ["nan", "inf", "1e-300", "1e300", "x"])
def test_a_bad_interval_is_exit_2_with_one_line(text):
    """nan ended in a ValueError and inf in an OverflowError traceback; 1e-300 polled nonstop."""
    result = run_gproxy("top", "--interval", text, "127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("gproxy top: ") and result.stderr.count("\n") == 1, result.stderr
    assert "--interval" in result.stderr and repr(text) in result.stderr


def test_keys_at_end_of_input_quit_instead_of_spinning():
    """A terminal that hung up reads as end of input at once, forever: that was a busy loop.
    Run in a plain Python (this test process is monkey-patched by gevent); /dev/null stands in."""
    code = "import time; from gproxy.ops.top import _wait_for_quit as w; t = time.monotonic(); "
    code += "print(w(5.0, interactive=True), time.monotonic() - t < 2)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=gproxy_env(),
        stdin=subprocess.DEVNULL,
        timeout=30,
    )
    assert result.stdout.split() == ["True", "True"], result.stderr


def test_an_answer_that_is_not_http_is_exit_1_with_one_line():
    """http.client.BadStatusLine is no OSError: it was a traceback (e.g. top pointed at an SSH port)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(20)

    def answer_once() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-\x1b[2Jbanner\r\n")

    thread = threading.Thread(target=answer_once, daemon=True)
    thread.start()
    try:
        result = run_gproxy("top", str(server.getsockname()[1]), "--once")
    finally:
        thread.join(25)
        server.close()
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "not an HTTP answer" in result.stderr, result.stderr
    assert "banner" not in result.stderr
