"""Every codec read through Conn.read_message costs linear time in the bytes received.

A client may trickle its handshake one byte per read; a parser that rescans the
whole buffer on each call then costs quadratic CPU (issue #13, item 4). These
tests feed each codec byte by byte and count the buffer bytes each call may
examine (the ranges of find/startswith and the slices taken).
"""

from __future__ import annotations

import gevent
import pytest
from gevent import socket as gsocket

from gproxy.codec import http, proxy_protocol, socks4, socks5
from gproxy.core.addr import Address
from gproxy.core.stream import Conn

#: the longest name a resolver takes: 253 bytes, labels of at most 63
LONGEST_NAME = ".".join(["h" * 63] * 3 + ["h" * 61])

#: the most bytes one incomplete-parse call may examine, whatever the buffer size: the
#: small handshakes (SOCKS4a's 520 bytes at most) may be re-read whole, a 64 KiB HTTP head not
PER_CALL_BOUND = 2 * socks4.MAX_REQUEST


class CountingBuffer(bytearray):
    """A bytearray that adds up how many bytes its search and slice methods may touch."""

    scanned = 0

    def _span(self, start: int | None, end: int | None) -> int:
        first, last, _ = slice(start, end).indices(len(self))
        return max(0, last - first)

    def find(self, sub, start=None, end=None):  # type: ignore[no-untyped-def,override]
        self.scanned += self._span(start, end)
        return super().find(sub, start, end)

    def index(self, sub, start=None, end=None):  # type: ignore[no-untyped-def,override]
        self.scanned += self._span(start, end)
        return super().index(sub, start, end)

    def startswith(self, prefix, start=None, end=None):  # type: ignore[no-untyped-def,override]
        self.scanned += len(prefix) if isinstance(prefix, bytes) else max(map(len, prefix))
        return super().startswith(prefix, start, end)

    def __getitem__(self, key):  # type: ignore[no-untyped-def,override]
        self.scanned += self._span(key.start, key.stop) if isinstance(key, slice) else 1
        return super().__getitem__(key)


class Trickle:
    """A socket that hands out its data one byte per recv()."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def recv(self, size: int) -> bytes:
        chunk = self.data[self.at : self.at + 1]
        self.at += len(chunk)
        return chunk


def read_trickled(parse, data: bytes, limit: int):  # type: ignore[no-untyped-def]
    """Read one message byte by byte; (message, bytes examined by each call that found none)."""
    conn = Conn(Trickle(data))  # type: ignore[arg-type]
    conn.buf = CountingBuffer()
    idle_calls: list[int] = []

    def counted(buf: CountingBuffer):  # type: ignore[no-untyped-def]
        before = buf.scanned
        parsed = parse(buf)
        if parsed is None:
            idle_calls.append(buf.scanned - before)
        return parsed

    return conn.read_message(counted, limit), idle_calls


def long_head() -> bytes:
    fields = b"".join(b"X-Field-%05d: %s\r\n" % (i, b"v" * 80) for i in range(600))
    return b"GET http://example.com/" + b"p" * 4000 + b" HTTP/1.1\r\nHost: example.com\r\n" + fields + b"\r\n"


CASES = {
    "http head": (lambda: http.HeadParser(), long_head(), http.MAX_HEAD + http.MAX_REQUEST_LINE),
    "socks5 greeting": (lambda: socks5.parse_greeting, bytes([5, 255, *range(255)]), 257),
    "socks5 auth": (lambda: socks5.parse_auth, socks5.encode_auth(b"u" * 255, b"p" * 255), 513),
    "socks5 request": (lambda: socks5.parse_request, socks5.encode_request(1, Address(LONGEST_NAME, 80)), 262),
    "socks4a request": (
        lambda: socks4.parse_request,
        socks4.encode_request(1, Address(LONGEST_NAME, 80), b"u" * 255),
        socks4.MAX_REQUEST,
    ),
    "proxy v1": (
        lambda: proxy_protocol.parse_header,
        proxy_protocol.encode_v1(Address("2001:db8::1", 65535), Address("2001:db8::2", 65535)),
        proxy_protocol.MAX_HEADER,
    ),
    "proxy v2": (
        lambda: proxy_protocol.parse_header,
        proxy_protocol.encode_v2(Address("192.0.2.1", 1), Address("192.0.2.2", 2), tlvs=b"\x04\x0f\xf1" + b"t" * 4081),
        proxy_protocol.MAX_HEADER,
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_trickled_message_costs_linear_work(name: str) -> None:
    make_parser, data, limit = CASES[name]
    message, idle_calls = read_trickled(make_parser(), data + b"early", limit)
    assert message is not None
    assert len(idle_calls) == len(data) - 1  # one call per byte, the last one completes it
    assert max(idle_calls) <= PER_CALL_BOUND, f"one call examined {max(idle_calls)} bytes"


def test_flood_of_empty_lines_is_refused_early() -> None:
    data = b"\r\n" * 5000 + b"GET http://a/ HTTP/1.1\r\n\r\n"
    conn = Conn(Trickle(data))  # type: ignore[arg-type]
    with pytest.raises(http.HttpError) as info:
        conn.read_message(http.HeadParser(), http.MAX_HEAD + http.MAX_REQUEST_LINE)
    assert info.value.status == 400
    assert conn.sock.at <= 2 * (http.MAX_EMPTY_LINES + 1)  # type: ignore[attr-defined]


def test_trickled_head_equals_the_one_shot_parse() -> None:
    data = b"\r\n\n" + long_head()
    message, _ = read_trickled(http.HeadParser(), data, http.MAX_HEAD + http.MAX_REQUEST_LINE)
    assert message == http.HeadParser()(bytearray(data))[0] == long_head()  # type: ignore[index]


def test_conn_sendall_on_plain_and_wrapped_sockets():
    class Wrapped(gsocket.socket):
        pass

    a, b = gsocket.socketpair()
    with a, b:
        Conn(a).sendall(b"plain")
        assert b.recv(16) == b"plain"
        wrapped = Wrapped(fileno=a.detach())
        with wrapped:
            Conn(wrapped).sendall(b"wrapped")
            assert b.recv(16) == b"wrapped"


def test_the_read_after_a_reply_waits_on_the_sockets_own_watcher(monkeypatch):
    """After sendall(), the next read of an empty buffer waits for readability on the
    socket's own read watcher (no recv() that fails with EAGAIN) and then gets the
    answer; the read after that (nothing replied in between) reads at once."""
    from gproxy.core import stream

    waited_on = []
    monkeypatch.setattr(stream, "read_watcher", lambda sock: waited_on.append(sock) or sock._read_event)
    a, b = gsocket.socketpair()
    with a, b:
        conn = Conn(a)
        conn.sendall(b"\x05\x00")
        gevent.spawn_later(0.05, b.sendall, b"abc")
        with gevent.Timeout(5):
            assert conn.read_exact(3) == b"abc"
        assert waited_on == [a]
        b.sendall(b"d")
        with gevent.Timeout(5):
            assert conn.read_exact(1) == b"d"
        assert waited_on == [a]


def test_a_socket_timeout_still_bounds_the_read_after_a_reply():
    """A socket with a timeout of its own (an upstream handshake) is read through gevent's
    recv, which honours it: a peer that never answers is a TimeoutError, not a hang."""
    a, b = gsocket.socketpair()
    with a, b:
        a.settimeout(0.2)
        conn = Conn(a)
        conn.sendall(b"hello")
        with gevent.Timeout(10), pytest.raises(TimeoutError):
            conn.read_exact(1)


def test_a_read_after_a_reply_on_a_socket_closed_meanwhile_is_an_os_error():
    """Closed between the reply and the next read (by another greenlet): recv()'s
    OSError, as before, not an AttributeError from a watcher gevent has dropped."""
    a, b = gsocket.socketpair()
    with a, b:  # closing a twice is harmless
        conn = Conn(a)
        conn.sendall(b"reply")
        a.close()
        with pytest.raises(OSError):
            conn.read_exact(1)
