"""Audit #13: a users file never turns authentication off, a reload never stops the
proxy (access log it cannot reopen) nor freezes it (a big users file)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys

import gevent
import pytest
from gevent import monkey
from gevent.event import Event

import gproxy.server.proxy as proxy_module
from gproxy import Config
from gproxy.core.access import Users
from tests.helpers import (
    ROOT,
    echo_through,
    free_port,
    gproxy_env,
    ipv4_dest,
    recv_exact,
    socks5_connect,
    start_gproxy,
    wait_for,
)

EMPTY_USERS_FILES = {"empty": "", "comments_only": "# nobody yet\n\n   \n# still nobody\n"}


# -- an empty users file is never "no authentication" ------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("content", list(EMPTY_USERS_FILES.values()), ids=list(EMPTY_USERS_FILES))
def test_an_empty_users_file_is_a_start_error(tmp_path, content, workers):
    """Guards: every way a users file can yield no users (empty, comments, blank lines),
    on both start paths (one process, supervisor): exit 2 with one line, no listener."""
    users = tmp_path / "users"
    users.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "gproxy", "--socks", "0.0.0.0:0", "--users-file", str(users), "--workers", workers],
        capture_output=True,
        env=gproxy_env(),
        cwd=ROOT,
        timeout=20,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert err.count("\n") == 1 and err.startswith("gproxy: --users-file ") and "no users" in err, err
    assert "listening" not in err


def socks4_connect_reply(addr: tuple[str, int], dest_port: int) -> bytes:
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"\x04\x01" + dest_port.to_bytes(2, "big") + socket.inet_aton("127.0.0.1") + b"\x00")
        return recv_exact(sock, 8)


def no_auth_offer_answer(addr: tuple[str, int]) -> bytes:
    with socket.create_connection(addr, timeout=10) as sock:
        sock.sendall(b"\x05\x01\x00")
        return recv_exact(sock, 2)


@pytest.mark.parametrize("content", list(EMPTY_USERS_FILES.values()), ids=list(EMPTY_USERS_FILES))
def test_emptying_the_users_file_and_reloading_keeps_authentication(proxy, echo_tcp, tmp_path, caplog, capfd, content):
    """Guards: a reload that would leave no users, for SOCKS5 (no-auth offer) and SOCKS4
    (no password at all): refused with one error, the old users kept."""
    users = tmp_path / "users"
    users.write_text("u:p\n")
    running = proxy(socks=["127.0.0.1:0"], users_file=str(users))
    addr = (running.address().host, running.address().port)
    users.write_text(content)
    assert not running.reload(Config.build(socks=["127.0.0.1:0"], users_file=str(users)))
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "no users" in errors[0].getMessage()
    assert "Traceback" not in capfd.readouterr().err
    assert no_auth_offer_answer(addr) == b"\x05\xff"  # still only user/password
    assert socks4_connect_reply(addr, echo_tcp.port)[1] == 0x5B
    sock, reply = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port), auth=(b"u", b"p"))
    assert reply[1] == 0
    sock.close()


def test_authentication_follows_the_configuration_not_the_table(proxy, echo_tcp):
    """Guards the class: whatever empties the users table (a future source of users, a
    bug), a proxy configured with users refuses everyone rather than opening."""
    assert Users([], required=True) and not Users([], required=True).check(b"", b"")
    running = proxy(socks=["127.0.0.1:0"], user=["u:p"])
    running.users.replace(Users.table([]), required=True)
    addr = (running.address().host, running.address().port)
    assert no_auth_offer_answer(addr) == b"\x05\xff"
    assert socks4_connect_reply(addr, echo_tcp.port)[1] == 0x5B


# -- a reload is checked against the listeners still bound -------------------------------


def test_a_reload_cannot_open_a_listener_that_stays_exposed(proxy, caplog):
    """The new settings name a loopback listener and no users, but the running one stays
    on 0.0.0.0 (listeners need a restart): refused with one error, users kept."""
    running = proxy(socks=["0.0.0.0:0"], user=["u:p"])
    addr = ("127.0.0.1", running.address().port)
    assert not running.reload(Config.build(socks=["127.0.0.1:0"]))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "open proxy" in errors[0] and "0.0.0.0" in errors[0], errors
    assert no_auth_offer_answer(addr) == b"\x05\xff"
    assert running.reload(Config.build(socks=["127.0.0.1:0"], user=["u:p"]))  # with users: fine
    assert no_auth_offer_answer(addr) == b"\x05\xff"


def _started_from_file(path, text: str, workers: str):
    """gproxy started with --config ``path`` (written with ``text``) and --workers."""
    path.write_text(text)
    return start_gproxy("--config", str(path), "--workers", workers)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_with_a_file_that_would_open_the_bound_listener_keeps_the_users(tmp_path, workers):
    path, port = tmp_path / "gproxy.toml", free_port()
    running = _started_from_file(path, f'socks = ["0.0.0.0:{port}"]\nuser = ["u:p"]\n', workers)
    try:
        path.write_text(f'socks = ["127.0.0.1:{port}"]\n')  # users gone, "now on loopback"
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload failed" in line for line in running.stderr_lines), what="the error")
        failed = [line for line in running.stderr_lines if "reload failed" in line]
        assert len(failed) == 1 and "open proxy" in failed[0], running.stderr_lines
        for _ in range(32):  # new connections, spread by the kernel: all on one worker 1 time in 2**31
            assert no_auth_offer_answer(("127.0.0.1", port)) == b"\x05\xff"
        assert running.stop() == 0
    finally:
        running.__exit__()


# -- SIGHUP with an access log that cannot be reopened -------------------------------------


def _move_directory(logs):
    logs.rename(logs.with_name("logs.old"))
    return logs.with_name("logs.old") / "access.log"


def _directory_in_its_place(logs):
    (logs / "access.log").rename(logs / "access.log.1")
    (logs / "access.log").mkdir()
    return logs / "access.log.1"


@pytest.mark.parametrize("rotate", [_move_directory, _directory_in_its_place], ids=["dir_moved", "path_is_a_dir"])
def test_sighup_with_an_access_log_it_cannot_reopen_keeps_serving(tmp_path, echo_tcp, rotate):
    """Guards: any reopen failure (directory gone, a directory in the way, no permission)
    is one error line and the old file, never a dead process."""
    logs = tmp_path / "logs"
    logs.mkdir()
    running = start_gproxy("--socks", "0", "--access-log", str(logs / "access.log"))
    try:
        addr = ("127.0.0.1", running.port())
        dest = ipv4_dest(echo_tcp.host, echo_tcp.port)
        open_tunnel, reply = socks5_connect(addr, dest)
        assert reply[1] == 0
        first, _ = socks5_connect(addr, dest)
        first.close()
        wait_for(lambda: (logs / "access.log").read_text().count("\n") == 1, what="the first access-log line")
        old_file = rotate(logs)
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("cannot reopen" in line for line in running.stderr_lines), what="the error line")
        assert running.proc.poll() is None
        assert echo_through(open_tunnel, b"kept") == b"kept"
        second, reply = socks5_connect(addr, dest)
        assert reply[1] == 0 and echo_through(second, b"new") == b"new"
        second.close()
        wait_for(lambda: old_file.read_text().count("\n") == 2, what="the next line, in the old file")
        open_tunnel.close()
        assert sum("cannot reopen" in line for line in running.stderr_lines) == 1
    finally:
        assert running.stop() == 0
    assert not any("Traceback" in line for line in running.stderr_lines)


def test_the_access_log_is_created_not_world_readable(proxy, tmp_path):
    path = tmp_path / "access.log"
    old_umask = os.umask(0o022)
    try:
        proxy(socks=["127.0.0.1:0"], access_log=str(path))
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) & 0o007 == 0


# -- a big users file is parsed off the event loop ---------------------------------------------

_native_get_ident = monkey.get_original("threading", "get_ident")


def test_reload_reads_the_users_file_off_the_event_loop(proxy, tmp_path, monkeypatch):
    """Guards: the parse (and anything slow it grows into) runs outside the hub's thread."""
    users = tmp_path / "users"
    users.write_text("u:p\n")
    running = proxy(socks=["127.0.0.1:0"], users_file=str(users))
    threads = []
    parse = proxy_module.read_users_file

    def recording(path: str):  # type: ignore[no-untyped-def]
        threads.append(_native_get_ident())
        return parse(path)

    monkeypatch.setattr(proxy_module, "read_users_file", recording)
    assert running.reload()
    assert threads and _native_get_ident() not in threads


def test_tunnels_keep_relaying_while_a_big_users_file_reloads(proxy, echo_tcp, tmp_path):
    users = tmp_path / "users"
    users.write_text("u:p\n")
    running = proxy(socks=["127.0.0.1:0"], users_file=str(users))
    tunnel, reply = socks5_connect(
        (running.address().host, running.address().port), ipv4_dest(echo_tcp.host, echo_tcp.port), auth=(b"u", b"p")
    )
    assert reply[1] == 0
    users.write_text("u:p\n" + "".join(f"user{n}:password{n}\n" for n in range(500_000)))
    done = Event()
    reloading = gevent.spawn(lambda: (running.reload(), done.set()))
    gevent.sleep(0)  # the reload starts
    answered_during_reload = 0
    for _ in range(100_000):
        if done.is_set():
            break
        assert echo_through(tunnel, b"ping") == b"ping"
        answered_during_reload += not done.is_set()
    reloading.join(60)
    tunnel.close()
    assert reloading.value is not None and done.is_set()
    assert len(running.users) == 500_001
    assert answered_during_reload > 0


def test_a_defect_met_while_reloading_keeps_the_old_settings_with_one_line(proxy, echo_tcp, monkeypatch, caplog):
    """Whatever a reload meets, a value our checks missed included, the server goes on with
    the old settings and says so in one error line: re-reading the flags and file, checking
    them, or building what they name."""
    from gproxy.ops import runtime

    running = proxy(socks=["127.0.0.1:0"], user=["u:p"])

    def broken(*_args: object) -> None:
        raise OverflowError("cannot convert float infinity to integer")

    monkeypatch.setattr(runtime, "load_config", broken)
    assert runtime.reread(["--socks", "127.0.0.1:0"]) is None
    monkeypatch.setattr(proxy_module, "users_table", broken)
    assert isinstance(proxy_module.checked_users_table(running.config), proxy_module.ConfigError)
    monkeypatch.undo()
    monkeypatch.setattr(running, "_set_user_policy", broken)
    assert not running.reload(Config.build(socks=["127.0.0.1:0"]))  # applied, it would drop the users
    assert not running.reload(Config.build(socks=["127.0.0.1:0"], user=["v:q"]))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 3 and all(e.startswith("reload failed, keeping the old settings") for e in errors), errors
    assert all("OverflowError: cannot convert float infinity" in e for e in errors), errors
    assert no_auth_offer_answer(("127.0.0.1", running.address().port)) == b"\x05\xff"  # users still asked for


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sighup_says_once_what_only_a_restart_applies(tmp_path, echo_tcp, workers):
    """A file that moves the listener and the access log, and adds a user: the user applies,
    the rest keeps running as it was, and one warning line (not one per worker) names it."""
    path, log, port = tmp_path / "gproxy.toml", tmp_path / "access.log", free_port()
    running = _started_from_file(path, f'socks = ["127.0.0.1:{port}"]\naccess-log = "{log}"\n', workers)
    try:
        path.write_text(f'socks = ["127.0.0.1:{port + 1}"]\naccess-log = "{log}.new"\nuser = ["u:p"]\n')
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reload" in line and "restart" in line for line in running.stderr_lines), what="it")
        for _ in range(32):  # the user applies on every worker; the listener stays where it was
            assert no_auth_offer_answer(("127.0.0.1", port)) == b"\x05\xff"
        running.proc.send_signal(signal.SIGHUP)  # still different from what runs: said again
        wait_for(lambda: sum("restart" in line for line in running.stderr_lines) == 2, what="the second")
        assert running.stop() == 0
        warned = [line for line in running.stderr_lines if "restart" in line]
        assert len(warned) == 2, running.stderr_lines
        assert "listeners, --access-log changed" in warned[0], warned
        assert not (tmp_path / "access.log.new").exists()
    finally:
        running.__exit__()


def test_a_reload_keeps_the_shadowsocks_method_for_tcp_as_for_udp(proxy, caplog):
    """The UDP side's cipher is made at start: the TCP side does not move to another one."""
    running = proxy(ss=["127.0.0.1:0"], user=["u:long-password"])
    assert running.reload(Config.build(ss=["127.0.0.1:0"], user=["u:long-password"], ss_method="aes-256-gcm"))
    assert running.config.ss_method == "chacha20-ietf-poly1305"
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warned == ["reload: --ss-method changed, which only a restart applies; running with the old value"]
