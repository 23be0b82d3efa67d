"""``gproxy top`` and ``gproxy passwd`` end on Ctrl-C (SIGINT) and SIGTERM, promptly and
without a traceback, and give the terminal back as they found it. ``gproxy`` used to install
the server's start-up signal recorder before running them, so both ignored the signals."""

from __future__ import annotations

import fcntl
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
from typing import Any

import pytest

from tests.helpers import FakeAdmin, gproxy_env, run_gproxy, serve_http_handler, wait_for

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

    def wait_for(self, text: bytes, count: int = 1) -> None:
        """Until ``text`` has been written ``count`` times (20 s at most)."""
        wait_for(lambda: self.output.count(text) >= count, timeout=20, what=f"{text!r} on the terminal")

    def everything(self) -> bytes:
        """All the child wrote, once it has exited: the reader stops, the rest is read here."""
        self._closing.set()
        self._reader.join(5)
        while True:
            try:
                self.output += os.read(self.master, 65536)
            except OSError:  # BlockingIOError: nothing left; EIO: the other side is closed
                return self.output

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
        ended(proc)


def ended(proc: subprocess.Popen[bytes] | None) -> None:
    """Killed if it still runs (a failed test), waited for, its pipes closed."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


def reading_stdin(pid: int) -> bool:
    """Whether the process is in a read() of descriptor 0 (``/proc/PID/syscall``: number 0, fd 0x0)."""
    try:
        with open(f"/proc/{pid}/syscall") as file:
            return file.read().startswith("0 0x0 ")
    except OSError:
        return False


@pytest.fixture
def admin() -> Iterator[int]:
    yield from serve_http_handler(FakeAdmin)


@pytest.mark.parametrize("stop", list(STOPS.values()), ids=list(STOPS))
def test_top_ends_on_a_signal_and_gives_the_terminal_back(admin, stop):
    signum, code = stop
    terminal = Terminal()
    cooked = terminal.local_modes()
    top = None
    try:
        top = gproxy(
            "top", str(admin), "--token", "s3cret", "--interval", "0.2",
            stdin=terminal.slave, stdout=terminal.slave, stderr=subprocess.PIPE,
        )  # fmt: skip
        terminal.wait_for(b"busy.example:443", count=2)  # drawn, then drawn again: in its loop
        assert not terminal.local_modes() & termios.ICANON  # keys one at a time (cbreak)
        top.send_signal(signum)
        assert top.wait(PROMPTLY) == code
        stderr = top.communicate(timeout=5)[1]
        assert stderr == b"", stderr  # no traceback, and nothing to say
        assert b"\x1b[?1049l" in terminal.everything()  # the alternate screen was left
        assert terminal.local_modes() == cooked  # and the keyboard mode restored
    finally:
        ended(top)
        terminal.close()


def test_top_live_view_needs_a_terminal_and_once_does_not(admin):
    """Without a terminal the live view drew nothing, polling until killed."""
    started = time.monotonic()
    live = run_gproxy("top", str(admin), "--token", "s3cret")
    assert live.returncode == 2 and live.stdout == "" and time.monotonic() - started < 20
    assert live.stderr.startswith("gproxy top: ") and live.stderr.count("\n") == 1 and "--once" in live.stderr
    once = run_gproxy("top", str(admin), "--token", "s3cret", "--once")
    assert once.returncode == 0 and "busy.example:443" in once.stdout, once.stderr


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
        output = terminal.everything()
        assert b"Traceback" not in output and b"KeyboardInterrupt" not in output
        if signum == signal.SIGINT:
            assert output.endswith(b"Password: \r\ngproxy passwd: interrupted\r\n"), output
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
        wait_for(lambda: reading_stdin(passwd.pid), what="passwd waiting for its line")
        assert ends_promptly(passwd, signum) == code
        stderr = passwd.communicate(timeout=5)[1]
    finally:
        os.close(read_end)
        os.close(write_end)
    assert b"Traceback" not in stderr and stderr.count(b"\n") <= 1, stderr
    assert stderr == (b"gproxy passwd: interrupted\n" if signum == signal.SIGINT else b"")
    assert not path.exists()
