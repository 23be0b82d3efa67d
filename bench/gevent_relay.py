"""The floor of gproxy's design, as a benchmark reference: a minimal SOCKS5 relay on gevent.

What gproxy does per connection, and nothing else: a StreamServer hands each client to a
greenlet, which reads the greeting (no auth), answers it, reads a CONNECT to an IPv4
address, connects (no wait when the kernel completes the connect within the call),
answers with the bound address, then hands both kernel sockets to event-loop callbacks
that copy with one recv_into and one send through a shared buffer (a short send waits
for the destination to drain), pass EOF on with shutdown, and close both sockets when
both directions are done. No rules, users, limits, timeouts, metrics,
access log, names, IPv6, splice or error replies beyond closing: not a proxy to run.

    python bench/gevent_relay.py PORT      # prints "listening PORT" once it accepts

bench/run.py measures it as the column "gevent-min": gproxy's CPU per connection against
it says how much of gproxy's cost is its own code and how much is Python and gevent.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import errno  # noqa: E402
import gc  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

from gevent._socket3 import _closedsocket  # noqa: E402
from gevent.hub import get_hub  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

LOOP = get_hub().loop
BUF = bytearray(65536)
VIEW = memoryview(BUF)


class _Direction:
    """One way of a tunnel: a read watcher on ``src``; a write watcher while ``dst`` is full."""

    __slots__ = ("tunnel", "src", "dst", "reader", "writer", "pending", "done")

    def __init__(self, tunnel: _Tunnel, src: socket.socket, dst: socket.socket) -> None:
        self.tunnel, self.src, self.dst = tunnel, src, dst
        self.reader: Any = LOOP.io(src.fileno(), 1)
        self.writer: Any = None
        self.pending = b""
        self.done = False
        self.reader.start(self.on_readable)

    def on_readable(self) -> None:
        try:
            n = self.src.recv_into(BUF)
        except BlockingIOError:
            return
        except OSError:
            self.tunnel.close()
            return
        if not n:
            self.reader.stop()
            self.done = True
            if self.tunnel.up.done and self.tunnel.down.done:
                self.tunnel.close()
                return
            try:  # noqa: SIM105 (as gproxy's relay: no context manager per EOF)
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        try:
            sent = self.dst.send(VIEW[:n])
        except BlockingIOError:
            sent = 0
        except OSError:
            self.tunnel.close()
            return
        if sent < n:
            self.pending = bytes(VIEW[sent:n])
            self.reader.stop()
            if self.writer is None:
                self.writer = LOOP.io(self.dst.fileno(), 2)
            self.writer.start(self.on_writable)

    def on_writable(self) -> None:
        try:
            sent = self.dst.send(self.pending)
        except BlockingIOError:
            return
        except OSError:
            self.tunnel.close()
            return
        self.pending = self.pending[sent:]
        if not self.pending:
            self.writer.stop()
            self.reader.start(self.on_readable)

    def stop(self) -> None:
        self.reader.close()
        if self.writer is not None:
            self.writer.close()


class _Tunnel:
    __slots__ = ("client", "upstream", "up", "down")

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.up = _Direction(self, client, upstream)
        self.down = _Direction(self, upstream, client)

    def close(self) -> None:
        self.up.stop()
        self.down.stop()
        self.client.close()
        self.upstream.close()


_DETACHED = _closedsocket(socket.AF_INET, socket.SOCK_STREAM, 0, -1, "detached")


def _kernel_socket(sock: Any) -> socket.socket:
    """Take the kernel socket out of a gevent socket, which is left closed without closing
    it (gevent's own stand-in for a detached socket: no system call)."""
    raw = sock._sock
    sock._sock = _DETACHED
    sock.close()
    return raw  # type: ignore[no-any-return]


def serve(client: Any, _peer: object) -> None:
    """One SOCKS5 client: greeting, CONNECT, then the callbacks relay it."""
    if client.recv(257)[:1] != b"\x05":
        return
    client.sendall(b"\x05\x00")
    request = client.recv(262)
    if request[:4] != b"\x05\x01\x00\x01" or len(request) != 10:
        return
    upstream = socket.socket()
    target = (socket.inet_ntoa(request[4:8]), int.from_bytes(request[8:10], "big"))
    try:
        # as gproxy: a connect the kernel completes within the call needs no wait on the loop
        started = upstream._sock.connect_ex(target)
        if started and upstream._sock.connect_ex(target) not in (0, errno.EISCONN):
            upstream.connect(target)
    except OSError:
        upstream.close()
        client.sendall(b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
        return
    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    host, port = upstream.getsockname()[:2]
    client.sendall(b"\x05\x00\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
    _Tunnel(_kernel_socket(client), _kernel_socket(upstream))


def main() -> None:
    gc.set_threshold(10000)  # as gproxy does
    server = StreamServer(("127.0.0.1", int(sys.argv[1])), serve, backlog=4096)
    server.init_socket()
    server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it, as gproxy's
    print(f"listening {server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
