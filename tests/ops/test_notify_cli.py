"""``Type=notify`` end to end: a gproxy subprocess with NOTIFY_SOCKET pointing at a datagram
socket standing in for systemd's. The socket takes SO_PASSCRED, as systemd's does, so every
message comes with its sender's PID: with --workers only the supervisor may talk."""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import time

import pytest

from gproxy.ops.workers import worker_env
from tests.helpers import FollowedGproxy

SINGLE = ("--socks", "127.0.0.1:0")
WORKERS = ("--socks", "127.0.0.1:0", "--workers", "2")
UCRED = struct.Struct("iII")  # pid, uid, gid


class FakeSystemd:
    """Receives notify datagrams: (sender pid, {KEY: VALUE})."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(30)
        self.messages: list[tuple[int, dict[str, str]]] = []

    def receive(self) -> dict[str, str]:
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        pid = next(
            UCRED.unpack(cmsg[: UCRED.size])[0]
            for level, kind, cmsg in ancillary
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS
        )
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.messages.append((pid, message))
        return message

    def next_state(self, key: str) -> dict[str, str]:
        """The next message that is not a watchdog ping; it must carry ``key``."""
        for _ in range(200):
            message = self.receive()
            if "WATCHDOG" not in message:
                assert message.get(key) == "1", message
                return message
        raise AssertionError(f"only watchdog pings, no {key}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path, monkeypatch):
    fake = FakeSystemd(str(tmp_path / "notify"))
    monkeypatch.setenv("NOTIFY_SOCKET", fake.path)
    monkeypatch.setenv("WATCHDOG_USEC", "400000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)  # the PID is only known after the spawn
    yield fake
    fake.close()


def stderr_ready_now(running: FollowedGproxy) -> bytes:
    """What gproxy has written to stderr so far, without waiting for more."""
    assert running.proc.stderr is not None
    fd = running.proc.stderr.fileno()
    data = b""
    while select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.mark.parametrize("args", [SINGLE, WORKERS], ids=["single", "workers"])
def test_ready_reloading_stopping_and_watchdog(systemd, args):
    running = FollowedGproxy(*args, wait=False)
    try:
        ready = systemd.next_state("READY")
        assert "gproxy: listening socks5 127.0.0.1:" in stderr_ready_now(running).decode()  # announced first
        assert ready["MAINPID"] == str(running.proc.pid)
        running.follow()

        deadline = time.monotonic() + 10
        while "WATCHDOG" not in systemd.receive():  # every 0.2 s: half of WATCHDOG_USEC
            assert time.monotonic() < deadline, "no watchdog ping"

        running.proc.send_signal(signal.SIGHUP)
        assert int(systemd.next_state("RELOADING")["MONOTONIC_USEC"]) > 0
        systemd.next_state("READY")

        running.proc.send_signal(signal.SIGTERM)
        systemd.next_state("STOPPING")
        assert running.proc.wait(15) == 0
    finally:
        running.stop()
    senders = {pid for pid, _ in systemd.messages}
    assert senders == {running.proc.pid}, "only the main process talks to NOTIFY_SOCKET"


def test_workers_never_see_notify_socket():
    env = worker_env({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"})
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & env.keys()
