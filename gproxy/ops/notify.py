"""systemd's notify protocol (``Type=notify``): READY, RELOADING, STOPPING, WATCHDOG.

One datagram per state change to ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the
abstract namespace). Without ``NOTIFY_SOCKET`` every call does nothing, so the
CLI calls it unconditionally. Never raises: a vanished socket costs one warning.
"""

from __future__ import annotations

import _socket
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from gproxy.core.log import logger


class Notifier:
    """Tells the service manager what gproxy is doing (sd_notify(3), without libsystemd)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_interval = _watchdog_interval(env)
        self._datagram_socket: _socket.socket | None = None
        self._watchdog: Any = None  # a libev timer watcher while the watchdog runs
        self._next_ping = 0.0  # tick(): when the next WATCHDOG=1 is due
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *states: str) -> None:
        """One datagram of ``KEY=VALUE`` lines; errors become one warning, never an exception."""
        if self.address is None:
            return
        try:
            if self._datagram_socket is None:  # the C socket: never gevent's, which could try to yield in a callback
                self._datagram_socket = _socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._datagram_socket.sendto("\n".join(states).encode(), socket.MSG_DONTWAIT, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("cannot notify the service manager at NOTIFY_SOCKET: %s", exc.strerror or exc)

    def ready(self, status: str = "serving") -> None:
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def reloading(self) -> None:
        # MONOTONIC_USEC lets Type=notify-reload (systemd 253+) match the reload to this message
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "draining") -> None:
        self.send("STOPPING=1", f"STATUS={status}")

    def start_watchdog(self) -> None:
        """``WATCHDOG=1`` at half of ``WATCHDOG_USEC``, from the event loop: a stuck hub stops the pings."""
        if self.address is None or self.watchdog_interval is None or self._watchdog is not None:
            return
        from gevent.hub import get_hub

        interval = self.watchdog_interval / 2
        self._watchdog = get_hub().loop.timer(interval, interval)
        self._watchdog.start(self.send, "WATCHDOG=1")

    def tick(self) -> None:
        """For a loop without gevent (the --workers supervisor): ``WATCHDOG=1`` when due."""
        if self.address is None or self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now >= self._next_ping:
            self._next_ping = now + self.watchdog_interval / 2
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        if self._datagram_socket is not None:
            self._datagram_socket.close()
            self._datagram_socket = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds from ``WATCHDOG_USEC``, when it is meant for this process (``WATCHDOG_PID``)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000
