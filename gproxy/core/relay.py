"""The relay: copy bytes both ways between two connected sockets.

Two engines, picked in one place (engine_for()). Plain sockets are relayed
by callbacks on the event loop, with no greenlet per direction: relay()
starts them and sleeps until both directions are done, start_relay() returns
at once (the session's greenlet ends), so an idle tunnel holds only its two
sockets, their watchers and a small state object. The engine takes the
sockets over (a gevent socket hands over its kernel socket, a standard one
is detached): nobody else can close them under its watchers, and it closes
them when the tunnel ends. Per chunk a direction does one ``recv_into`` into
a buffer shared by the hub and one non-blocking ``send``; only a partial send
copies the rest out and waits for the destination to drain.

A direction that moves bulk data (a read fills the whole buffer) switches to
``os.splice`` through a pipe of its own: the bytes never enter user space.
The pipe is created on that switch and given back once the direction has
been quiet for a sweep interval, so idle tunnels hold no pipes.

TLS sockets (which cannot be spliced or polled on their raw descriptor)
take the greenlet engine: one greenlet per direction with ``sendall``.

A rate-limited tunnel (``limits``: a TokenBucket per direction, shared by all
of its owner's tunnels) gets limited directions, chosen once at its start: an
unlimited tunnel runs the very same code as without the feature. A limited
event direction reads or splices no more than its bucket grants; an empty
bucket stops its read watcher until a loop timer says enough has come back.
A limited greenlet direction sleeps while its bucket is in debt.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import gevent
from gevent import socket as gsocket
from gevent.hub import Hub, Waiter, get_hub

from gproxy.core._gevent import READ, WRITE, io_watcher, is_plain, is_tls, send_close_notify, take_kernel_socket
from gproxy.core.errors import Outcome, outcome_of
from gproxy.core.later import call_soon
from gproxy.core.limits import TokenBucket
from gproxy.core.per_hub import PerHub
from gproxy.core.stream import send_all

CHUNK = 65536
#: pipe capacity asked for a spliced direction, and the most one splice() moves
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
#: a direction switches to splice() after one read of this many bytes (None: never)
SPLICE_AFTER: int | None = CHUNK
#: seconds a spliced direction must stay quiet before its pipe is released
PIPE_SWEEP = 1.0
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_HAVE_SPLICE = hasattr(os, "splice")

_SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
#: the kernel socket class itself (C: no Python __init__/close per tunnel; gevent never patches it)
_PlainSocket: Any = _socket.socket

#: a tunnel's (upload, download) buckets, or None: no rate limit
Limits = tuple[TokenBucket, TokenBucket] | None

#: one receive buffer per hub (thread): callbacks never yield between filling it
#: and handing its contents to the kernel or to a private copy
_BUFFERS: PerHub[memoryview] = PerHub(lambda hub: memoryview(bytearray(CHUNK)))


@dataclass(slots=True)
class RelayStats:
    """Payload bytes from the client (up) and to it (down), and how it ended."""

    up: int = 0
    down: int = 0
    outcome: Outcome = Outcome.OK


class Engine(StrEnum):
    """How a tunnel is relayed (see engine_for())."""

    EVENTS = "events"  # event-loop callbacks + splice(): plain sockets
    GREENLETS = "greenlets"  # a greenlet per direction: anything else (TLS)


def engine_for(client: socket.socket, upstream: socket.socket) -> Engine:
    """The one place that picks the engine for a tunnel, and why.

    EVENTS when both sockets are plain: their descriptors can be watched by the
    loop and spliced, so no greenlet waits (the tunnel may even outlive its
    session's greenlet: start_relay()). GREENLETS otherwise: a TLS socket
    buffers decrypted bytes the loop cannot see, and splice() would bypass TLS.
    """
    if is_plain(client) and is_plain(upstream):
        return Engine.EVENTS
    return Engine.GREENLETS


def _take_over(sock: socket.socket) -> tuple[socket.socket, Any]:
    """The caller's socket object gives up its descriptor; a non-blocking kernel socket
    that only the relay holds owns it from now on, and a read watcher on it. A gevent
    socket hands over the kernel socket it wraps and its own read watcher
    (take_kernel_socket()); a standard library one is detached (public ``detach()``)
    into a new kernel socket object, with a new watcher."""
    if type(sock) is gsocket.socket:
        return take_kernel_socket(sock)
    if sock.gettimeout() != 0.0:
        sock.setblocking(False)
    # a relayed socket is always a TCP stream (engine_for() checked it is plain)
    raw = _PlainSocket(sock.family, socket.SOCK_STREAM | _SOCK_NONBLOCK, 0, sock.detach())
    return raw, io_watcher(raw.fileno(), READ)


def _take_over_both(
    client: socket.socket, upstream: socket.socket
) -> tuple[tuple[socket.socket, Any], tuple[socket.socket, Any]]:
    """_take_over() of both, or of neither: when the upstream's fails, the client's kernel
    socket and watcher (no longer the caller's to close) are closed before it raises."""
    taken = _take_over(client)
    try:
        return taken, _take_over(upstream)
    except BaseException:
        taken[1].close()
        taken[0].close()
        raise


class _Periodic:
    """Members of one hub that need the same periodic check, on one repeating timer
    (a timer per tunnel would cost its watcher and a heap insert and removal each)."""

    def __init__(self, hub: Hub, interval: float, check: Callable[[Any], object]) -> None:
        self.members: set[Any] = set()
        self.check = check
        self.timer = hub.loop.timer(interval, interval)

    def add(self, member: object) -> None:
        if not self.members:
            self.timer.start(self.tick)
        self.members.add(member)

    def discard(self, member: object) -> None:
        self.members.discard(member)
        if not self.members:
            self.timer.stop()

    def tick(self) -> None:
        for member in list(self.members):  # a check may end its member (discard)
            self.check(member)


_periodic: PerHub[dict[tuple[Callable[[Any], object], float], _Periodic]] = PerHub(lambda hub: {})


def _every(interval: float, check: Callable[[Any], object]) -> _Periodic:
    """This hub's _Periodic for ``check`` every ``interval`` seconds (one per pair)."""
    mine = _periodic.get()
    periodic = mine.get((check, interval))
    if periodic is None:
        periodic = mine[check, interval] = _Periodic(get_hub(), interval, check)
    return periodic


def _sweep_pipe(direction: _Direction) -> None:
    """Give back the pipe of a spliced direction that has been quiet for a whole interval."""
    if direction.moved:
        direction.moved = False
    elif not direction.in_pipe:
        direction.release_pipe()


def _pipe_sweeper() -> _Periodic:
    return _every(PIPE_SWEEP, _sweep_pipe)


class _Direction:
    """One way of a plain tunnel, driven by a read watcher on its source's descriptor."""

    __slots__ = (
        "tunnel",
        "src",
        "dst",
        "reader",
        "writer",
        "upward",
        "pending",
        "pipe",
        "pipe_size",
        "in_pipe",
        "moved",
        "done",
        "can_splice",
        "stats",
        "buf",
    )

    def __init__(self, tunnel: _EventTunnel, src: tuple[socket.socket, Any], dst: socket.socket, upward: bool) -> None:
        self.tunnel = tunnel
        self.stats = tunnel.stats  # counted per chunk (one attribute hop less)
        self.buf = _BUFFERS.get()  # a direction runs on the hub that made it
        # kernel sockets the tunnel owns, and the read watcher on src (see _take_over)
        self.src, self.reader = src
        self.dst = dst
        self.writer: Any = None  # made on the first wait for the destination to drain
        self.upward = upward
        self.pending: bytes | memoryview = b""  # bytes a partial send left (plain mode)
        self.pipe: tuple[int, int] | None = None  # (read end, write end) in splice mode
        self.pipe_size = CHUNK
        self.in_pipe = 0
        self.moved = False
        self.done = False
        self.can_splice = _HAVE_SPLICE

    def start(self) -> None:
        self.reader.start(self.on_readable)

    def stop(self) -> None:
        """Stop and close the watchers (before the descriptors are closed) and give back the pipe."""
        self.reader.close()
        if self.writer is not None:
            self.writer.close()
        self.release_pipe()

    def count(self, n: int) -> None:
        if self.upward:
            self.stats.up += n
        else:
            self.stats.down += n

    def on_readable(self) -> None:
        try:
            if self.pipe is not None:
                self._splice_chunk()
            else:
                self._copy(CHUNK)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        if exc.errno == errno.EINVAL and self.pipe is not None and not self.in_pipe:
            self.can_splice = False  # a socket type splice() does not take: copy instead
            self.release_pipe()
            return
        self.tunnel.abort(outcome_of(exc))

    def _copy(self, size: int) -> int:
        """One recv of at most ``size`` bytes and one send; what the destination does not
        take waits for it to become writable (never dropped). Returns the bytes read, 0 at EOF."""
        buf = self.buf
        n = self.src.recv_into(buf, size)
        if not n:
            self._eof()
            return 0
        if self.upward:  # count(), inlined: once per chunk
            self.stats.up += n
        else:
            self.stats.down += n
        try:  # noqa: SIM105 (the hot path: no context manager per chunk)
            sent = self.dst.send(buf[:n])
        except BlockingIOError:  # the destination's buffer is full: the chunk waits, never dropped
            sent = 0
        if sent < n:
            self.pending = buf[sent:n].tobytes()
            self._wait_writable()
        elif SPLICE_AFTER is not None and n >= SPLICE_AFTER and self.can_splice:
            self._take_pipe()
        return n

    def on_writable(self) -> None:
        try:
            if self.pipe is not None:
                self.in_pipe -= os.splice(self.pipe[0], self.dst.fileno(), self.in_pipe, flags=_SPLICE_FLAGS)
                if self.in_pipe:
                    return
            else:
                sent = self.dst.send(self.pending)
                self.pending = self.pending[sent:]
                if self.pending:
                    return
            self.writer.stop()
            self.reader.start(self.on_readable)
        except BlockingIOError:
            return
        except OSError as exc:
            self.tunnel.abort(outcome_of(exc))

    def _splice_chunk(self) -> None:
        """A few socket -> pipe -> socket steps per wake-up while data keeps coming."""
        size = self.pipe_size
        for _ in range(4):
            if self._splice_once(size) < size or self.in_pipe:
                return

    def _splice_once(self, size: int) -> int:
        """Up to ``size`` bytes socket -> pipe -> socket; what stays in the pipe waits for the
        destination to become writable. Returns the bytes read, 0 at EOF."""
        read_end, write_end = self.pipe  # type: ignore[misc]
        n = os.splice(self.src.fileno(), write_end, size, flags=_SPLICE_FLAGS)
        if not n:
            self._eof()
            return 0
        self.count(n)
        self.moved = True
        self.in_pipe = n
        try:  # noqa: SIM105 (the hot path: no context manager per chunk)
            self.in_pipe -= os.splice(read_end, self.dst.fileno(), n, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            pass
        if self.in_pipe:
            self._wait_writable()
        return n

    def _wait_writable(self) -> None:
        self.reader.stop()
        if self.writer is None:
            self.writer = io_watcher(self.dst.fileno(), WRITE)
        self.writer.start(self.on_writable)

    def _take_pipe(self) -> None:
        try:
            self.pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # out of descriptors: keep copying
            return
        try:
            self.pipe_size = fcntl.fcntl(self.pipe[1], _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # above /proc/sys/fs/pipe-max-size or the user's pipe quota
            self.pipe_size = CHUNK
        self.moved = True
        _pipe_sweeper().add(self)

    def release_pipe(self) -> None:
        if self.pipe is not None:
            _pipe_sweeper().discard(self)
            os.close(self.pipe[0])
            os.close(self.pipe[1])
            self.pipe = None
            self.in_pipe = 0

    def _eof(self) -> None:
        self.reader.stop()
        self.release_pipe()
        self.done = True
        tunnel = self.tunnel
        if tunnel.up.done and tunnel.down.done:
            # both ends have sent their FIN and nothing is left unread: close() sends
            # ours to both, no shutdown() needed first
            tunnel.finish()
            return
        try:  # noqa: SIM105 (once per direction: no context manager object)
            self.dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _LimitedDirection(_Direction):
    """A direction held to a TokenBucket: each wake-up moves at most what the bucket
    grants (one read or one splice); an empty bucket pauses the read watcher and a
    loop timer resumes it once a quantum of tokens is back."""

    __slots__ = ("bucket", "timer")

    def __init__(
        self,
        tunnel: _EventTunnel,
        src: tuple[socket.socket, Any],
        dst: socket.socket,
        upward: bool,
        bucket: TokenBucket,
    ) -> None:
        super().__init__(tunnel, src, dst, upward)
        self.bucket = bucket
        self.timer: Any = None  # the resume timer while paused

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        super().stop()

    def on_readable(self) -> None:
        bucket = self.bucket
        allowed = bucket.take(self.pipe_size if self.pipe is not None else CHUNK, bucket.quantum)
        if not allowed:
            self._pause()
            return
        moved = 0
        try:
            moved = self._splice_once(allowed) if self.pipe is not None else self._copy(allowed)
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(exc)
        finally:
            if moved < allowed:
                bucket.give_back(allowed - moved)

    def _pause(self) -> None:
        self.reader.stop()
        timer = self.timer = get_hub().loop.timer(self.bucket.delay(self.bucket.quantum))
        timer.start(self._resume)

    def _resume(self) -> None:
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        self.reader.start(self.on_readable)


class _IdleClock:
    """What both tunnel kinds share: the idle check and shutting both sockets down.

    The idle timeout is checked every quarter of it by one hub timer shared by
    every tunnel with that timeout (no per-chunk clock reads, no timer per
    tunnel): a tunnel whose byte total did not move for four ticks ends. Its
    first tick (which may come at once) does not count: it ends after at least
    the timeout, at most 1.25 times it.
    """

    __slots__ = ("a", "b", "stats", "_last_total", "_idle_ticks", "_clock")

    TICKS = 4

    def __init__(self, a: socket.socket, b: socket.socket, stats: RelayStats) -> None:
        self.a = a
        self.b = b
        self.stats = stats
        self._last_total = 0
        self._idle_ticks = -1
        self._clock: _Periodic | None = None

    def start_clock(self, idle_timeout: float) -> None:
        """Tick every quarter of ``idle_timeout`` (0: never idle) until stop_clock()."""
        if idle_timeout > 0:
            clock = self._clock = _every(idle_timeout / self.TICKS, _IdleClock.on_tick)
            clock.add(self)

    def stop_clock(self) -> None:
        if self._clock is not None:
            self._clock.discard(self)
            self._clock = None

    def on_tick(self) -> None:
        total = self.stats.up + self.stats.down
        if total != self._last_total:
            self._last_total = total
            self._idle_ticks = 0
            return
        self._idle_ticks += 1
        if self._idle_ticks >= self.TICKS:
            self.abort(Outcome.IDLE_TIMEOUT)

    def abort(self, outcome: Outcome) -> None:
        """Keep the first reason it ended and shut both sockets down."""
        if self.stats.outcome == Outcome.OK:
            self.stats.outcome = outcome
        for sock in (self.a, self.b):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class _EventTunnel(_IdleClock):
    """Both directions of a plain tunnel plus its idle clock, on the sockets it owns.

    When done it closes them, then wakes the relay() caller or runs
    ``on_done(stats)`` in a greenlet (start_relay(), through later.call_soon()): never
    inside a watcher callback, where a user's Metrics or log handler that yields would fail.
    """

    __slots__ = ("up", "down", "waiter", "on_done", "finished")

    def __init__(
        self, a: tuple[socket.socket, Any], b: tuple[socket.socket, Any], stats: RelayStats, limits: Limits = None
    ) -> None:
        """``a`` and ``b``: (kernel socket, its read watcher), as _take_over() gives them."""
        super().__init__(a[0], b[0], stats)
        self.up: _Direction
        self.down: _Direction
        if limits is None:
            self.up = _Direction(self, a, b[0], True)
            self.down = _Direction(self, b, a[0], False)
        else:
            self.up = _LimitedDirection(self, a, b[0], True, limits[0])
            self.down = _LimitedDirection(self, b, a[0], False, limits[1])
        self.waiter: Waiter[None] | None = None
        self.on_done: Callable[[RelayStats], object] | None = None
        self.finished = False

    def start(self, idle_timeout: float) -> None:
        self.start_clock(idle_timeout)
        self.up.start()
        self.down.start()

    def wait(self) -> None:
        """Sleep until the tunnel is done; a kill (or any exception) aborts it with ``shutdown``."""
        if self.finished:
            return
        self.waiter = Waiter()
        try:
            self.waiter.get()
        except BaseException:
            self.waiter = None
            self.abort(Outcome.SHUTDOWN)
            raise

    def abort(self, outcome: Outcome) -> None:
        """An error, the idle timeout, a drain or a kill: shut both sockets down and finish.

        The first outcome is kept; once finished, nothing changes.
        """
        if self.finished:
            return
        super().abort(outcome)
        self.finish()

    def finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.up.stop()
        self.down.stop()
        self.stop_clock()
        self.a.close()
        self.b.close()
        if self.waiter is not None:
            self.waiter.switch(None)
        elif self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            call_soon(on_done, self.stats)


class _Tunnel(_IdleClock):
    """The greenlet engine (TLS sockets): one greenlet per direction; abort() wakes
    their blocked recv() calls with EOF."""

    __slots__ = ("ended", "limits")

    def __init__(self, a: socket.socket, b: socket.socket, stats: RelayStats, limits: Limits = None) -> None:
        super().__init__(a, b, stats)
        self.ended = False
        self.limits = limits

    def pump(self, src: socket.socket, dst: socket.socket, upward: bool) -> None:
        """Copy src -> dst until EOF, then half-close dst. Reads are sized for ``dst``
        (its ``write_size``: a Shadowsocks stream wants whole chunks), else CHUNK."""
        stats = self.stats
        buf = memoryview(bytearray(CHUNK))[: getattr(dst, "write_size", CHUNK)]
        try:
            if self.limits is None:
                while True:
                    n = src.recv_into(buf)
                    if not n:
                        break
                    if upward:
                        stats.up += n
                    else:
                        stats.down += n
                    send_all(dst, buf[:n])
            else:
                self._pump_limited(src, dst, upward, buf, self.limits[0 if upward else 1])
            if is_tls(dst):
                self.end_tls(dst)
            else:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
        except (OSError, ValueError) as exc:  # ValueError: a TLS socket ended under us
            if not self.ended:
                self.abort(outcome_of(exc) if isinstance(exc, OSError) else Outcome.ERROR)

    def _pump_limited(
        self, src: socket.socket, dst: socket.socket, upward: bool, buf: memoryview, bucket: TokenBucket
    ) -> None:
        """The copy loop held to ``bucket``: sleep while it is in debt, then read up to
        a chunk and spend it (a read may block: holding granted tokens meanwhile
        would starve the owner's other tunnels, so it spends after, into debt)."""
        stats = self.stats
        view = buf[: bucket.quantum]  # reads of a quantum: the debt stays below 1/16 s
        while True:
            wait = bucket.delay(1)
            if wait > 0:
                gevent.sleep(wait)
                continue
            n = src.recv_into(view)
            if not n:
                return
            bucket.spend(n)
            if upward:
                stats.up += n
            else:
                stats.down += n
            send_all(dst, view[:n])

    def end_tls(self, tls: socket.socket) -> None:
        """TLS cannot half-close here (``ssl`` drops its state on shutdown):
        send close_notify, then end both directions with the outcome kept."""
        self.ended = True
        with contextlib.suppress(OSError, ValueError):
            send_close_notify(tls)
        for sock in (self.a, self.b):
            with contextlib.suppress(OSError):
                gsocket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket under any TLS

    def run(self, idle_timeout: float) -> None:
        self.start_clock(idle_timeout)
        downward = gevent.spawn(self.pump, self.b, self.a, False)
        try:
            self.pump(self.a, self.b, True)
            downward.join()
        except BaseException:
            self.abort(Outcome.SHUTDOWN)
            downward.kill()
            raise
        finally:
            self.stop_clock()


def _send_first(
    client: socket.socket,
    upstream: socket.socket,
    first_up: bytes,
    first_down: bytes,
    limits: Limits,
    stats: RelayStats | None = None,
) -> RelayStats:
    """Send the bytes read early (from this greenlet), spent from the buckets if any;
    on failure the outcome says why. Counts into ``stats`` (a new one if None)."""
    stats = RelayStats() if stats is None else stats
    if limits is not None:
        limits[0].spend(len(first_up))
        limits[1].spend(len(first_down))
    try:
        if first_up:
            upstream.sendall(first_up)
            stats.up += len(first_up)
        if first_down:
            client.sendall(first_down)
            stats.down += len(first_down)
    except OSError as exc:
        stats.outcome = outcome_of(exc)
    return stats


def _close_both(client: socket.socket, upstream: socket.socket) -> None:
    for sock in (client, upstream):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def relay(
    client: socket.socket,
    upstream: socket.socket,
    *,
    idle_timeout: float,
    first_up: bytes = b"",
    first_down: bytes = b"",
    limits: Limits = None,
    stats: RelayStats | None = None,
) -> RelayStats:
    """Relay until both directions are done (start + wait); takes both sockets over
    and closes them before it returns.

    ``first_up`` are bytes the client sent early (already read from it);
    ``first_down`` bytes read early from the upstream. ``limits``: the
    (upload, download) buckets that hold the tunnel to its owner's rate. ``stats``:
    where to count (readable while it runs, e.g. by the admin listener). Returns the stats.
    """
    stats = _send_first(client, upstream, first_up, first_down, limits, stats)
    if stats.outcome != Outcome.OK:
        _close_both(client, upstream)
        return stats
    if engine_for(client, upstream) is Engine.EVENTS:
        tunnel = _EventTunnel(*_take_over_both(client, upstream), stats, limits)
        tunnel.start(idle_timeout)
        tunnel.wait()
        return stats
    try:
        _Tunnel(client, upstream, stats, limits).run(idle_timeout)
    finally:
        _close_both(client, upstream)
    return stats


class Relay(Protocol):
    """A tunnel running on the event loop alone (what start_relay() returns)."""

    @property
    def stats(self) -> RelayStats: ...

    def abort(self, outcome: Outcome) -> None:
        """End it now (both sockets shut down) unless it has ended; the first outcome is kept."""


def start_relay(
    client: socket.socket,
    upstream: socket.socket,
    *,
    idle_timeout: float,
    on_done: Callable[[RelayStats], object],
    first_up: bytes = b"",
    limits: Limits = None,
) -> Relay | None:
    """relay() without blocking the caller, for the EVENTS engine; None (and nothing
    done) when engine_for() picks another.

    The sockets are taken over (the caller's objects are detached and may be
    dropped or closed: that no longer touches the tunnel). An idle tunnel holds
    no greenlet (a parked greenlet's stack costs more memory than the rest of
    the tunnel). Once both directions are done, or the returned Relay is
    aborted, the sockets are closed and ``on_done(stats)`` runs in a greenlet (later.call_soon()).
    """
    if engine_for(client, upstream) is not Engine.EVENTS:
        return None
    stats = _send_first(client, upstream, first_up, b"", limits)
    tunnel = _EventTunnel(*_take_over_both(client, upstream), stats, limits)
    tunnel.on_done = on_done
    if stats.outcome != Outcome.OK:
        tunnel.abort(stats.outcome)
    else:
        tunnel.start(idle_timeout)
    return tunnel
