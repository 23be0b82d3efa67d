"""Conn: a client socket with a small read buffer for handshakes.

Reads whole protocol messages with a size cap (never assuming one recv() is
one message) and hands bytes the client sent early on to the relay.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

from gevent import socket as gsocket
from gevent.hub import get_hub

from gproxy.core._gevent import raw_socket, read_watcher
from gproxy.core.errors import ClientClosed, ClientProtocolError

T = TypeVar("T")
Parser = Callable[[bytearray], "tuple[T, int] | None"]

#: gevent's plain socket class (the one the server hands out when monkey-patched)
_PLAIN = gsocket.socket
#: how much one handshake recv() asks for; pipelined messages arrive together
_RECV_SIZE = 4096


class Conn:
    """A socket plus the bytes read from it but not yet consumed.

    After a reply goes out (sendall), the peer's next message cannot be there yet
    unless it came early: the next read of an empty buffer waits for the socket to
    become readable first, on the socket's own watcher, instead of a recv() that
    fails with EAGAIN (a system call and an exception per handshake step).
    """

    __slots__ = ("sock", "buf", "replied")

    def __init__(self, sock: socket.socket, initial: bytes = b"") -> None:
        self.sock = sock
        self.buf = bytearray(initial)
        self.replied = False

    def read_message(self, parse: Callable[[bytearray], tuple[T, int] | None], limit: int) -> T:
        """Read until ``parse`` yields a message of at most ``limit`` bytes.

        ``parse`` runs after every read (a client may send one byte at a time), so
        one call must cost O(new bytes), not O(buffer): a parser that searches for
        a terminator remembers where it stopped (see ``codec.http.HeadParser``).

        Raises:
            ClientProtocolError: the message would exceed ``limit``.
            ClientClosed: EOF before a whole message.
        """
        while True:
            if self.buf:
                parsed = parse(self.buf)
                if parsed is not None:
                    message, used = parsed
                    del self.buf[:used]
                    return message
                if len(self.buf) >= limit:
                    raise ClientProtocolError(f"message larger than {limit} bytes")
            self._fill(min(_RECV_SIZE, max(1, limit - len(self.buf))))

    def read_exact(self, n: int) -> bytes:
        """Read exactly ``n`` bytes."""
        while len(self.buf) < n:
            self._fill(n - len(self.buf))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def peek_byte(self) -> int:
        """The next byte without consuming it."""
        if not self.buf:
            self._fill(_RECV_SIZE)
        return self.buf[0]

    def take_buffered(self) -> bytes:
        """Everything read but not consumed (the client's early bytes)."""
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def sendall(self, data: bytes) -> None:
        """Send it all; a short reply on a plain socket goes out in one direct send()."""
        send_all(self.sock, data)
        self.replied = True

    def close_politely(self, linger: float = 0.5) -> None:
        """Shut down our sending half and drain for at most ``linger`` seconds in all,
        so the client reads our last reply instead of a RST (pywsgi and h11 do the
        same); a client that keeps trickling bytes cannot stretch the drain."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
            end = time.monotonic() + linger
            for _ in range(16):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self.sock.settimeout(left)
                if not self.sock.recv(4096):
                    break
        except OSError:
            pass

    def _fill(self, size: int) -> None:
        sock = self.sock
        if self.replied:
            self.replied = False
            # only without a socket timeout (the caller's deadline bounds the wait), as gevent's recv would wait
            if type(sock) is _PLAIN and sock.gettimeout() is None:
                watcher = read_watcher(sock)
                if watcher is not None:  # None once the socket is closed: recv() below says so
                    get_hub().wait(watcher)
        data = sock.recv(size)
        if not data:
            raise ClientClosed("client closed the connection")
        self.buf += data


def send_now(sock: socket.socket, data: bytes | memoryview) -> int:
    """What one send() on a plain gevent socket's kernel socket takes of ``data`` at once,
    without gevent's Python layers (its sendall costs a getsockopt and several frames);
    0 for any other socket, or when the kernel's buffer is full."""
    if type(sock) is not _PLAIN:  # TLS or socket-like (an exact check: hasattr would raise inside gevent)
        return 0
    try:
        return int(raw_socket(sock).send(data))
    except BlockingIOError:
        return 0


def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    """``sock.sendall(data)``, first trying send_now(): only a rest waits for the peer
    (gevent's sendall, under the socket's timeout)."""
    sent = send_now(sock, data)
    if sent < len(data):
        sock.sendall(data[sent:])
