"""``--access-log``: one logfmt line per finished session, reopened on SIGHUP."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
from pathlib import Path

from tests.helpers import (
    access_lines,
    echo_through,
    ipv4_dest,
    logfmt_fields,
    recv_all,
    socks5_connect,
    start_gproxy,
    wait_for,
)

FIELDS = ["ts", "client", "user", "proto", "cmd", "dest", "up", "down", "dur", "outcome"]
TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def lines_of(path: Path) -> list[dict[str, str]]:
    return [logfmt_fields(line) for line in access_lines(path)]


def test_lines_match_sessions(proxy, echo_tcp, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], user=["alice:pw"], access_log=str(log))
    addr = (running.address("socks5").host, running.address("socks5").port)
    dest = ipv4_dest(echo_tcp.host, echo_tcp.port)

    sock, reply = socks5_connect(addr, dest, auth=(b"alice", b"pw"))
    client_port = sock.getsockname()[1]
    assert echo_through(sock, b"u" * 1234) == b"u" * 1234
    sock.close()
    with socket.create_connection(addr, timeout=10) as bad:
        bad.sendall(b"\x05\x01\x02\x01\x03bob\x05wrong")
        assert recv_all(bad) == b"\x05\x02\x01\x01"

    entries = wait_for(lambda: len(lines_of(log)) >= 2 and lines_of(log), what="two access-log lines")
    assert len(entries) == 2
    ok = next(e for e in entries if e["outcome"] == "ok")
    failed = next(e for e in entries if e["outcome"] != "ok")
    assert list(ok) == [*FIELDS[:6], "via", *FIELDS[6:]]  # via= only when the session dialled
    assert list(failed) == FIELDS
    assert ok["via"] == "direct"
    assert TS.fullmatch(ok["ts"])
    assert ok["client"] == f"127.0.0.1:{client_port}"
    assert (ok["user"], ok["proto"], ok["cmd"]) == ("alice", "socks5", "connect")
    assert ok["dest"] == f"{echo_tcp.host}:{echo_tcp.port}"
    assert (ok["up"], ok["down"]) == ("1234", "1234")
    assert float(ok["dur"]) >= 0
    assert (failed["user"], failed["outcome"], failed["up"]) == ("bob", "auth_failed", "0")
    assert "wrong" not in log.read_text()  # passwords never logged


def test_reopened_on_reload_after_rename(proxy, echo_tcp, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], access_log=str(log))
    addr = (running.address("socks5").host, running.address("socks5").port)

    def session() -> None:
        sock, _ = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port))
        sock.close()

    session()
    wait_for(lambda: len(lines_of(log)) == 1, what="the first line")
    log.rename(tmp_path / "access.log.1")
    running.reload()
    session()
    wait_for(lambda: len(lines_of(log)) == 1, what="a line in the new file")
    assert len(lines_of(tmp_path / "access.log.1")) == 1


def test_sighup_reopens_the_log_in_the_cli(echo_tcp, tmp_path):
    log = tmp_path / "access.log"
    running = start_gproxy("--socks", "0", "--access-log", str(log))
    try:
        addr = ("127.0.0.1", running.port())
        sock, _ = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port))
        sock.close()
        wait_for(lambda: len(lines_of(log)) == 1, what="the first line")
        os.rename(log, tmp_path / "rotated")
        running.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: any("reloaded" in line for line in running.stderr_lines), what="the reload")
        sock, _ = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port))
        sock.close()
        wait_for(lambda: len(lines_of(log)) == 1, what="a line in the new file")
        assert len(lines_of(tmp_path / "rotated")) == 1
        assert running.stop() == 0
    finally:
        running.__exit__()


def test_stop_ends_an_open_tunnel_with_its_bytes(proxy, echo_tcp, tmp_path):
    """An idle tunnel outlives its session greenlet: stop() still drains it, then ends
    it (client closed, outcome=shutdown, bytes counted, logged once)."""
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], access_log=str(log))
    addr = (running.address("socks5").host, running.address("socks5").port)
    sock, _ = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port))
    assert echo_through(sock, b"d" * 321) == b"d" * 321
    running.stop(0.2)
    assert recv_all(sock) == b""
    sock.close()
    (entry,) = lines_of(log)
    assert (entry["outcome"], entry["up"], entry["down"]) == ("shutdown", "321", "321")
    assert float(entry["dur"]) >= 0.2  # drained for the whole timeout first


def test_an_open_tunnel_holds_no_greenlet_and_ends_logged(proxy, echo_tcp, tmp_path):
    """A running plain tunnel lives on the event loop alone (its session greenlet has ended);
    when the client closes, the session is counted down, logged once and its sockets closed."""
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], access_log=str(log))
    addr = (running.address("socks5").host, running.address("socks5").port)
    sock, _ = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port))
    assert echo_through(sock, b"a" * 100) == b"a" * 100
    wait_for(lambda: len(running._sessions) == 0)
    assert running._active == 1 and len(running.tunnels) == 1
    assert echo_through(sock, b"b" * 50) == b"b" * 50  # still relaying without a greenlet
    sock.shutdown(socket.SHUT_WR)
    assert recv_all(sock) == b""  # half-close passed on; the echo server closed its side
    sock.close()
    wait_for(lambda: running._active == 0)
    assert not running.tunnels and not running._active_by_ip
    (entry,) = lines_of(log)
    assert (entry["outcome"], entry["up"], entry["down"]) == ("ok", "150", "150")


def _reset(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): the proxy's next read gets ECONNRESET."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_reset_has_one_name_in_the_handshake_and_in_the_relay(proxy, echo_tcp, tmp_path):
    """ECONNRESET was ``econnreset`` in the handshake and ``reset`` in the relay: now ``reset`` in both."""
    log = tmp_path / "access.log"
    running = proxy(socks=["127.0.0.1:0"], access_log=str(log))
    addr = (running.address("socks5").host, running.address("socks5").port)

    in_handshake = socket.create_connection(addr, timeout=10)
    in_handshake.sendall(b"\x05")  # half a greeting: the proxy waits for the rest
    wait_for(lambda: running.open_sessions == 1, what="the session")
    _reset(in_handshake)
    wait_for(lambda: len(lines_of(log)) == 1, what="the handshake's line")

    in_relay, _ = socks5_connect(addr, ipv4_dest(echo_tcp.host, echo_tcp.port))
    assert echo_through(in_relay, b"r" * 100) == b"r" * 100
    _reset(in_relay)
    entries = wait_for(lambda: len(lines_of(log)) == 2 and lines_of(log), what="the relay's line")

    assert [(e["cmd"], e["outcome"]) for e in entries] == [("-", "reset"), ("connect", "reset")]
