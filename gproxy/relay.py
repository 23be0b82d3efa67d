"""The relay: copy bytes both ways between two connected sockets.

One greenlet per direction, half-close on EOF, an idle timer over both
directions, and byte counts. This is the hot path: per chunk it does one
recv_into into a buffer shared by the hub's greenlets and one non-blocking
send; only a partial send copies the rest out and waits.
"""

from __future__ import annotations

import contextlib
import socket
import weakref
from dataclasses import dataclass

import gevent
from gevent import socket as gsocket
from gevent.hub import Hub, get_hub

CHUNK = 65536

_buffers: weakref.WeakKeyDictionary[Hub, memoryview] = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class RelayStats:
    """Payload bytes from the client (up) and to it (down), and how it ended."""

    up: int = 0
    down: int = 0
    outcome: str = "ok"


def _hub_buffer() -> memoryview:
    """One receive buffer per hub (thread): a greenlet never yields between
    filling it and handing its contents to the kernel or to a private copy."""
    hub = get_hub()
    buf = _buffers.get(hub)
    if buf is None:
        buf = _buffers[hub] = memoryview(bytearray(CHUNK))
    return buf


def _raw(sock: socket.socket) -> socket.socket | None:
    """The kernel socket under a plain gevent socket (None for TLS sockets)."""
    raw = getattr(sock, "_sock", None)
    if raw is None or hasattr(sock, "_sslobj"):
        return None
    return raw  # type: ignore[no-any-return]


class _Tunnel:
    __slots__ = ("a", "b", "stats", "ended", "_last_total", "_idle_ticks", "_ticks_allowed")

    def __init__(self, a: socket.socket, b: socket.socket, idle_timeout: float) -> None:
        self.a = a
        self.b = b
        self.stats = RelayStats()
        self.ended = False
        self._last_total = 0
        self._idle_ticks = 0
        self._ticks_allowed = 4

    def on_tick(self) -> None:
        """Idle check, run by the hub's timer (no per-chunk clock reads)."""
        total = self.stats.up + self.stats.down
        if total != self._last_total:
            self._last_total = total
            self._idle_ticks = 0
            return
        self._idle_ticks += 1
        if self._idle_ticks >= self._ticks_allowed:
            self.abort("idle_timeout")

    def abort(self, outcome: str) -> None:
        """Stop both directions: their blocked recv() calls wake with EOF."""
        if self.stats.outcome == "ok":
            self.stats.outcome = outcome
        for sock in (self.a, self.b):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        """Copy src -> dst until EOF, then half-close dst."""
        stats = self.stats
        raw_dst = _raw(dst)
        # A TLS destination may yield inside sendall with our bytes pending,
        # so only a plain one can use the hub's shared buffer.
        shared = raw_dst is not None
        buf = _hub_buffer() if shared else memoryview(bytearray(CHUNK))
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                if upward:
                    stats.up += n
                else:
                    stats.down += n
                if shared:
                    try:
                        sent = raw_dst.send(buf[:n])  # type: ignore[union-attr]
                    except BlockingIOError:
                        sent = 0
                    if sent < n:
                        dst.sendall(buf[sent:n].tobytes())
                else:
                    dst.sendall(buf[:n])
            if hasattr(dst, "_sslobj"):
                self.end_tls(dst)
            else:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
        except (OSError, ValueError) as exc:  # ValueError: a TLS socket ended under us
            if not self.ended:
                self.abort(_describe(exc) if isinstance(exc, OSError) else "error")

    def end_tls(self, tls: socket.socket) -> None:
        """TLS cannot half-close here (``ssl`` drops its state on shutdown):
        send close_notify, then end both directions with the outcome kept."""
        self.ended = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            tls._sslobj.shutdown()  # type: ignore[attr-defined]  # sends close_notify; does not wait
        for sock in (self.a, self.b):
            with contextlib.suppress(OSError):
                gsocket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket under any TLS


def _describe(exc: OSError) -> str:
    if isinstance(exc, ConnectionResetError):
        return "reset"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    return "error"


def relay(
    client: socket.socket,
    upstream: socket.socket,
    *,
    idle_timeout: float,
    first_up: bytes = b"",
    first_down: bytes = b"",
) -> RelayStats:
    """Relay until both directions are done; never closes the sockets.

    ``first_up`` are bytes the client sent early (already read from it);
    ``first_down`` bytes read early from the upstream. Returns the stats.
    """
    tunnel = _Tunnel(client, upstream, idle_timeout)
    stats = tunnel.stats
    try:
        if first_up:
            upstream.sendall(first_up)
            stats.up += len(first_up)
        if first_down:
            client.sendall(first_down)
            stats.down += len(first_down)
    except OSError as exc:
        tunnel.abort(_describe(exc))
        return stats
    timer = None
    if idle_timeout > 0:
        tick = idle_timeout / tunnel._ticks_allowed
        timer = get_hub().loop.timer(tick, tick)
        timer.start(tunnel.on_tick)
    downward = gevent.spawn(tunnel.pump, upstream, client, False)
    try:
        tunnel.pump(client, upstream, True)
        downward.join()
    except BaseException:
        tunnel.abort("shutdown")
        downward.kill()
        raise
    finally:
        if timer is not None:
            timer.close()
    return stats
