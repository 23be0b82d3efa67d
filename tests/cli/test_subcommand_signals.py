"""``gproxy top`` and ``gproxy passwd`` end on Ctrl-C (SIGINT) and SIGTERM, promptly and
without a traceback, and give the terminal back as they found it. ``gproxy`` used to install
the server's start-up signal recorder before running them, so both ignored the signals."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.helpers import gproxy_env, serve_http_handler

#: a coarse bound: the signal is acted on at once, this only keeps a hang from hanging the suite
PROMPTLY = 5.0
STOPS = {"SIGINT": (signal.SIGINT, 130), "SIGTERM": (signal.SIGTERM, 143), "SIGHUP": (signal.SIGHUP, 129)}


class Terminal:
    """A pty for a child to run on; a thread drains what the child writes into ``output``."""

    def __init__(self, rows: int = 30, columns: int = 120) -> None:
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self.output = b""
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        """Polls a non-blocking read: no select, which gevent (patched into the test process)
        can leave waiting forever on an fd number reused from an earlier test."""
        os.set_blocking(self.master, False)
        while not self._closing.is_set():
            try:
                self.output += os.read(self.master, 65536)
            except BlockingIOError:
                time.sleep(0.02)
            except OSError:
                return

    def wait_for(self, text: bytes, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert time.monotonic() < deadline, f"no {text!r} on the terminal: {self.output[-2000:]!r}"
            time.sleep(0.05)

    def local_modes(self) -> int:
        return termios.tcgetattr(self.slave)[3]

    def close(self) -> None:
        self._closing.set()
        self._reader.join(5)
        os.close(self.master)
        os.close(self.slave)


def _default_sigint() -> None:
    """In the child: a SIGINT that a shell's background job ignores is not ignored here."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def gproxy(*args: str, **streams: Any) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in gproxy_env().items() if key not in ("COLUMNS", "LINES")}
    return subprocess.Popen(
        [sys.executable, "-m", "gproxy", *args],
        env=env,
        start_new_session=True,  # no controlling terminal: the pty is only its stdin/stdout
        preexec_fn=_default_sigint,
        **streams,
    )


def ends_promptly(proc: subprocess.Popen[bytes], signum: int) -> int:
    """Send ``signum``; the exit code, which must come within PROMPTLY seconds."""
    proc.send_signal(signum)
    try:
        return proc.wait(PROMPTLY)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


class _Admin(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps([{"id": 1, "user": "alice", "dest": "example.com:443", "up": 1, "down": 2}]).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def admin() -> Iterator[int]:
    yield from serve_http_handler(_Admin)


@pytest.mark.parametrize("stop", list(STOPS.values()), ids=list(STOPS))
def test_top_ends_on_a_signal_and_gives_the_terminal_back(admin, stop):
    signum, code = stop
    terminal = Terminal()
    cooked = terminal.local_modes()
    try:
        top = gproxy(
            "top", str(admin), "--interval", "0.2", stdin=terminal.slave, stdout=terminal.slave, stderr=subprocess.PIPE
        )
        terminal.wait_for(b"example.com:443")
        assert not terminal.local_modes() & termios.ICANON  # keys one at a time (cbreak)
        time.sleep(0.5)  # a few refreshes
        assert ends_promptly(top, signum) == code
        stderr = top.communicate(timeout=5)[1]
        assert stderr == b"", stderr  # no traceback, and nothing to say
        time.sleep(0.2)  # the last bytes reach the reader
        assert b"\x1b[?1049l" in terminal.output  # the alternate screen was left
        assert terminal.local_modes() == cooked  # and the keyboard mode restored
    finally:
        terminal.close()


def test_top_live_view_needs_a_terminal_and_once_does_not(admin):
    """Without a terminal the live view drew nothing, polling until killed."""
    started = time.monotonic()
    live = subprocess.run(
        [sys.executable, "-m", "gproxy", "top", str(admin)],
        capture_output=True, env=gproxy_env(), stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip
    assert live.returncode == 2 and live.stdout == b"" and time.monotonic() - started < 20
    assert live.stderr.startswith(b"gproxy top: ") and live.stderr.count(b"\n") == 1 and b"--once" in live.stderr
    once = subprocess.run(
        [sys.executable, "-m", "gproxy", "top", str(admin), "--once"],
        capture_output=True, env=gproxy_env(), stdin=subprocess.DEVNULL, timeout=30,
    )  # fmt: skip
    assert once.returncode == 0 and b"example.com:443" in once.stdout, once.stderr


@pytest.mark.parametrize("stop", list(STOPS.values()), ids=list(STOPS))
def test_passwd_at_the_prompt_ends_on_a_signal_and_restores_echo(tmp_path, stop):
    signum, code = stop
    path = tmp_path / "users"
    path.write_text("alice:old\n")
    terminal = Terminal()
    cooked = terminal.local_modes()
    try:
        passwd = gproxy(
            "passwd", str(path), "alice", stdin=terminal.slave, stdout=terminal.slave, stderr=terminal.slave
        )
        terminal.wait_for(b"Password: ")
        assert not terminal.local_modes() & termios.ECHO
        assert ends_promptly(passwd, signum) == code
        time.sleep(0.2)
        assert b"Traceback" not in terminal.output and b"KeyboardInterrupt" not in terminal.output
        if signum == signal.SIGINT:
            assert terminal.output.endswith(b"Password: \r\ngproxy passwd: interrupted\r\n"), terminal.output
        assert terminal.local_modes() == cooked  # echo is back on
    finally:
        terminal.close()
    assert path.read_text() == "alice:old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["users"]


@pytest.mark.parametrize("stop", list(STOPS.values()), ids=list(STOPS))
def test_passwd_waiting_for_a_piped_line_ends_on_a_signal(tmp_path, stop):
    signum, code = stop
    path = tmp_path / "users"
    read_end, write_end = os.pipe()
    try:
        passwd = gproxy("passwd", str(path), "alice", stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)  # started, and blocked reading the line that does not come
        assert passwd.poll() is None
        assert ends_promptly(passwd, signum) == code
        stderr = passwd.communicate(timeout=5)[1]
    finally:
        os.close(read_end)
        os.close(write_end)
    assert b"Traceback" not in stderr and stderr.count(b"\n") <= 1, stderr
    assert stderr == (b"gproxy passwd: interrupted\n" if signum == signal.SIGINT else b"")
    assert not path.exists()
