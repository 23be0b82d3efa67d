"""Audit #13: a signal that arrives while gproxy starts (listeners being announced)
is handled as it would be once serving: SIGINT/SIGTERM stop cleanly (exit 0, no
traceback), SIGHUP reloads instead of killing."""

from __future__ import annotations

import signal

import pytest

from tests.helpers import FollowedGproxy, wait_for

LISTENERS = 150  # a wide window between the first and the last "listening" line
ROUNDS = 4


def start_and_signal_at_first_line(signum: int) -> FollowedGproxy:
    args = [arg for _ in range(LISTENERS) for arg in ("--socks", "127.0.0.1:0")]
    running = FollowedGproxy(*args, wait=False)
    running.wait_listening(30)
    running.proc.send_signal(signum)
    running.follow()
    return running


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stop_signal_during_start_exits_cleanly(signum):
    """Guards every stop signal at every point of the start (handlers come first)."""
    for _ in range(ROUNDS):
        running = start_and_signal_at_first_line(signum)
        try:
            code = running.proc.wait(30)
        finally:
            running.stop()
        assert code == 0, "".join(running.stderr_lines)
        assert not any("Traceback" in line or "KeyboardInterrupt" in line for line in running.stderr_lines)


def test_sighup_during_start_reloads_instead_of_killing():
    for _ in range(ROUNDS):
        running = start_and_signal_at_first_line(signal.SIGHUP)
        try:
            wait_for(lambda: sum(l.startswith("gproxy: listening") for l in running.stderr_lines) >= LISTENERS - 1)  # noqa: B023, E741
            wait_for(lambda: any("reloaded" in line for line in running.stderr_lines), what="the reload")  # noqa: B023
            assert running.proc.poll() is None
        finally:
            code = running.stop()
        assert code == 0, "".join(running.stderr_lines)
