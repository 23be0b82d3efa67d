"""The systemd notify protocol against a datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket

import pytest

from gproxy.ops.notify import Notifier


@pytest.fixture
def systemd(tmp_path):
    """A datagram socket where systemd's notify socket would be; yields (path, receive())."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)

    def receive() -> dict[str, str]:
        data = sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    yield path, receive
    sock.close()


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier({})
    assert not notifier.enabled
    notifier.ready()
    notifier.stopping()
    notifier.close()


def test_ready_reloading_stopping(systemd):
    path, receive = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.ready()
    assert receive()["READY"] == "1"
    notifier.reloading()
    message = receive()
    assert message["RELOADING"] == "1" and int(message["MONOTONIC_USEC"]) > 0
    notifier.stopping()
    assert receive()["STOPPING"] == "1"
    notifier.close()


def test_abstract_socket_name():
    name = f"gproxy-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        assert b"READY=1" in sock.recv(4096)
        notifier.close()
    finally:
        sock.close()


def test_watchdog_pings_at_half_the_interval(systemd):
    path, receive = systemd
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 0.2
    notifier.start_watchdog()
    try:  # receive() waits (bounded) for each ping the loop's timer sends
        assert receive() == {"WATCHDOG": "1"}
        assert receive() == {"WATCHDOG": "1"}
    finally:
        notifier.close()


def test_watchdog_meant_for_another_process_is_ignored():
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent", "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None


def test_a_missing_socket_is_one_warning_not_an_exception(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    notifier.ready()
    notifier.stopping()
    assert len([r for r in caplog.records if "NOTIFY_SOCKET" in r.getMessage()]) == 1
    notifier.close()
