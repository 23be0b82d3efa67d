"""The command line as users run it: a subprocess, its stderr and exit code."""

from __future__ import annotations

import re
import signal
import socket

import gevent
import pytest
from gevent.server import StreamServer

from tests.helpers import GproxyProcess, ipv4_dest, recv_all, recv_exact, run_gproxy, socks5_connect


def test_listening_lines_name_the_real_ports(echo_tcp):
    with GproxyProcess("--socks", "127.0.0.1:0", "--socks", "[::1]:0", "--user", "u:p", listeners=2) as gp:
        lines = [line for line in gp.stderr_lines if line.startswith("gproxy: listening")]
        assert re.fullmatch(r"gproxy: listening socks5 127\.0\.0\.1:[1-9]\d*\n", lines[0])
        assert re.fullmatch(r"gproxy: listening socks5 \[::1\]:[1-9]\d*\n", lines[1])
        sock, reply = socks5_connect(("127.0.0.1", gp.port()), ipv4_dest("127.0.0.1", echo_tcp.port), auth=(b"u", b"p"))
        with sock:
            assert reply[1] == 0
            sock.sendall(b"hi")
            assert recv_exact(sock, 2) == b"hi"
        assert gp.stop() == 0


def test_console_script_entry_point_module():
    result = run_gproxy("--version")
    assert result.returncode == 0 and result.stdout.startswith("gproxy ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--socks"], "expected one argument"),
        (["--socks", "0", "--idle-timeout", "soon"], "takes a number"),
        ([], "nothing to serve"),
        (["--socks", "0.0.0.0:0"], "refusing to run an open proxy"),
        (["--socks", "abc"], "is not PORT, HOST:PORT or [IPV6]:PORT"),
        (["--socks", "192.0.2.1:0", "--user", "u:p"], "cannot listen on 192.0.2.1:0"),
        (["--socks", "0", "--users-file", "/nonexistent/users"], "No such file"),
        (["--config", "/nonexistent.toml"], "--config /nonexistent.toml"),
        (["--socks", "0", "--rate", "fast"], "--rate: expected a rate such as 500k, 1M or 0"),
        (["--socks", "0", "--workers", "0"], "--workers must be a number from 1 to 1024"),
        # a bad --upstream-strategy, checked right after --workers, fails a start that would try 10**20 workers
        (["--socks", "0", "--workers", "1" + "0" * 20, "--upstream-strategy", "x"], "--workers must be a number from"),
        (["--socks", "0", "--users-file", "", "--workers", "0"], "--users-file may not be empty"),
        (["--socks", "0", "--access-log", "", "--workers", "0"], "--access-log may not be empty"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(args, message):
    result = run_gproxy(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--socks", "²"], "--socks: '²' is not PORT, HOST:PORT or [IPV6]:PORT"),
        (["--socks", "127.0.0.1:²"], "--socks: port '²' is not a number from 0 to 65535"),
        (["--forward", "0=example.com:²"], "--forward: port '²' is not a number"),
        (["--socks", "0", "--deny-dest", "example.com:²"], "--deny-dest: 'example.com:²' is not CIDR"),
        # with --workers 0, checked after the listeners and rules parse: read as 123 or 1-2, these fail on it instead
        (["--socks", "0", "--bypass", "10.0.0.0/8:१-२", "--workers", "0"], "--bypass: '10.0.0.0/8:१-२' is not"),
        (["--socks", "१२३", "--workers", "0"], "--socks: '१२३' is not PORT"),
    ],
)
def test_a_port_in_digits_other_than_ascii_is_exit_2(args, message):
    """str.isdigit() is true for '²' (which int() refuses: a traceback) and '१' (which it reads)."""
    result = run_gproxy(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    "flag",
    ["--connect-timeout", "--idle-timeout", "--handshake-timeout", "--drain-timeout", "--upstream-cooldown"],
)
def test_nan_seconds_is_exit_2(flag, tmp_path):
    """float('nan') passed every range check ('draining ... up to nan s'); --workers 0, checked after
    the seconds, makes a start without the check fail at once instead of serving."""
    result = run_gproxy("--socks", "0", flag, "nan", "--workers", "0")
    assert (result.returncode, result.stderr) == (2, f"gproxy: {flag} must be a number of seconds, not nan\n")
    config = tmp_path / "gproxy.toml"
    config.write_text(f'socks = ["0"]\n{flag[2:]} = nan\nworkers = 0\n')
    result = run_gproxy("--config", str(config))
    assert (result.returncode, result.stderr) == (2, f"gproxy: {flag} must be a number of seconds, not nan\n")


def test_port_in_use_exits_2():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    try:
        result = run_gproxy("--socks", f"127.0.0.1:{taken.getsockname()[1]}")
    finally:
        taken.close()
    assert result.returncode == 2
    assert "cannot listen on" in result.stderr and "Address already in use" in result.stderr
    assert result.stderr.count("\n") == 1


def test_config_file_and_flags_win(tmp_path, echo_tcp):
    config = tmp_path / "gproxy.toml"
    config.write_text('socks = ["127.0.0.1:0"]\nuser = ["u:file"]\nhandshake-timeout = 3\n')
    with GproxyProcess("--config", str(config), "--user", "u:flag") as gp:
        sock, reply = socks5_connect(
            ("127.0.0.1", gp.port()), ipv4_dest("127.0.0.1", echo_tcp.port), auth=(b"u", b"flag")
        )
        sock.close()
        assert reply[1] == 0
        gp.stop()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_open_transfer_then_exits_0(sig):
    """A transfer in flight at SIGTERM completes; new clients are refused; exit 0."""
    release = gevent.event.Event()

    def slow_source(conn, _addr):
        conn.sendall(b"first;")
        release.wait(10)
        conn.sendall(b"rest of the data")

    server = StreamServer(("127.0.0.1", 0), slow_source)
    server.start()
    try:
        with GproxyProcess("--socks", "127.0.0.1:0", "--drain-timeout", "10") as gp:
            port = gp.port()
            sock, reply = socks5_connect(("127.0.0.1", port), ipv4_dest("127.0.0.1", server.server_port))
            assert reply[1] == 0
            assert recv_exact(sock, 6) == b"first;"
            gp.proc.send_signal(sig)
            _wait_until_refused(port)
            release.set()
            assert recv_all(sock) == b"rest of the data"
            sock.close()
            assert gp.proc.wait(10) == 0
    finally:
        server.stop(timeout=1)


def test_drain_timeout_closes_stuck_sessions(echo_tcp):
    with GproxyProcess("--socks", "127.0.0.1:0", "--drain-timeout", "0.2") as gp:
        sock, reply = socks5_connect(("127.0.0.1", gp.port()), ipv4_dest("127.0.0.1", echo_tcp.port))
        assert reply[1] == 0
        gp.proc.send_signal(signal.SIGTERM)
        assert gp.proc.wait(10) == 0
        assert recv_all(sock) == b""
        sock.close()


def _wait_until_refused(port: int, attempts: int = 200) -> None:
    for _ in range(attempts):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except ConnectionRefusedError:
            return
        gevent.sleep(0.02)
    raise AssertionError("gproxy still accepts after the stop signal")
