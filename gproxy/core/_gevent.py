"""The one door to gevent's private internals (and the public calls that replace them).

Every private attribute gproxy relies on is named here, checked once at import
(an upgrade that drops one fails loudly, not a tunnel that never ends), and
tested one by one in tests/core/test_gevent_internals.py. Imports nothing of gproxy.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from gevent import monkey
from gevent import socket as gsocket
from gevent.hub import Hub, get_hub
from gevent.server import StreamServer

#: libev/libuv event masks (gevent.core.READ / WRITE)
READ = 1
WRITE = 2

#: gevent's plain socket class (what the server hands out when monkey-patched)
PLAIN = gsocket.socket
#: the standard library's own socket class, whatever monkey-patching did to the module
_STDLIB_PLAIN: type[socket.socket] = monkey.get_original("socket", "socket")


class GeventInternalsMissing(ImportError):
    """A private gevent attribute gproxy relies on is gone (a gevent upgrade): see _gevent.py."""


def _require(owner: type, name: str) -> None:
    if not hasattr(owner, name):
        raise GeventInternalsMissing(f"gevent {owner.__module__}.{owner.__qualname__}.{name} is missing")


# Checked at import: a plain gevent socket keeps its kernel socket in _sock (a slot or
# set in __init__: checked on an instance by the tests), StreamServer its retry hook.
_require(StreamServer, "_start_accepting_if_started")


def is_plain(sock: object) -> bool:
    """A plain (not TLS) socket whose descriptor can be polled and spliced directly.

    An exact type check: ``hasattr(sock, "_sslobj")`` on a plain gevent socket
    raises and catches an AttributeError inside gevent's ``__getattr__``.
    """
    return type(sock) is PLAIN or type(sock) is _STDLIB_PLAIN


def raw_socket(sock: socket.socket) -> socket.socket:
    """The non-blocking kernel socket under a plain gevent socket (a stdlib socket is its own).

    Raises:
        TypeError: not a plain socket (a TLS socket has no usable kernel socket).
        GeventInternalsMissing: gevent no longer keeps it in ``_sock``.
    """
    if type(sock) is PLAIN:
        try:
            return sock._sock  # type: ignore[attr-defined,no-any-return]
        except AttributeError:
            raise GeventInternalsMissing("gevent.socket.socket._sock is missing") from None
    if type(sock) is _STDLIB_PLAIN:
        return sock
    raise TypeError(f"not a plain socket: {type(sock).__name__}")


def _detached_placeholder() -> Any:
    """gevent's own stand-in for a detached socket's kernel socket (falsy: its close() does nothing)."""
    from gevent import _socket3

    closed = getattr(_socket3, "_closedsocket", None)
    if closed is None:
        raise GeventInternalsMissing("gevent._socket3._closedsocket is missing")
    return closed(socket.AF_INET, socket.SOCK_STREAM, 0, -1, "detached")


_DETACHED = _detached_placeholder()


def take_kernel_socket(sock: socket.socket) -> tuple[socket.socket, Any]:
    """Take the kernel socket out of a plain gevent socket, which is left detached: its
    ``close()`` no longer touches the descriptor. What ``detach()`` does (the public
    way), without its cost per tunnel: no family/type/proto reads, no new kernel socket
    object for the descriptor (and its ``getsockname``), no wait cancelling (the caller
    has no wait pending on it). Returns the kernel socket and the gevent socket's read
    watcher, now the caller's (stopped; a watcher made anew would cost an ``fcntl``);
    the write watcher is closed.

    Raises:
        TypeError: not a plain gevent socket.
        GeventInternalsMissing: gevent no longer keeps ``_sock``, ``_read_event``, ``_write_event``.
    """
    if type(sock) is not PLAIN:
        raise TypeError(f"not a plain gevent socket: {type(sock).__name__}")
    try:
        raw = sock._sock  # type: ignore[attr-defined]
        reader, writer = sock._read_event, sock._write_event  # type: ignore[attr-defined]
    except AttributeError as exc:
        raise GeventInternalsMissing(f"gevent.socket.socket internals are missing: {exc}") from None
    if writer is not None:
        writer.close()
    sock._read_event = sock._write_event = None  # type: ignore[attr-defined]
    sock._sock = _DETACHED  # type: ignore[attr-defined]
    sock.close()  # marks it closed; with the placeholder, touches nothing
    if reader is None:  # not expected of a socket that was open: make one
        reader = io_watcher(raw.fileno(), READ)
    return raw, reader


def read_watcher(sock: socket.socket) -> Any:
    """The read watcher a plain gevent socket made for itself (``_read_event``, what its
    own recv() waits on): waiting on it before a read that cannot be ready yet skips
    the recv() that fails with EAGAIN, and no new watcher is made.

    Raises:
        TypeError: not a plain gevent socket.
        GeventInternalsMissing: gevent no longer keeps ``_read_event``.
    """
    return _own_watcher(sock, "_read_event")


def write_watcher(sock: socket.socket) -> Any:
    """The write watcher a plain gevent socket made for itself (``_write_event``): what
    waiting for its connect() to finish needs, without a watcher made for it."""
    return _own_watcher(sock, "_write_event")


def _own_watcher(sock: socket.socket, name: str) -> Any:
    if type(sock) is not PLAIN:
        raise TypeError(f"not a plain gevent socket: {type(sock).__name__}")
    try:
        return getattr(sock, name)
    except AttributeError:
        raise GeventInternalsMissing(f"gevent.socket.socket.{name} is missing") from None


def is_tls(sock: object) -> bool:
    """A TLS socket (stdlib or gevent SSLSocket). ``ssl`` is only looked up if
    already imported: gproxy imports it lazily so that gevent can patch it first."""
    ssl = sys.modules.get("ssl")
    gssl = sys.modules.get("gevent.ssl")
    return (ssl is not None and isinstance(sock, ssl.SSLSocket)) or (
        gssl is not None and isinstance(sock, gssl.SSLSocket)
    )


def send_close_notify(tls: socket.socket) -> None:
    """Send a TLS close_notify without waiting for the peer's (``unwrap()`` waits).

    Raises OSError/ValueError as ``ssl`` does; GeventInternalsMissing without ``_sslobj``.
    """
    try:
        sslobj = tls._sslobj  # type: ignore[attr-defined]
    except AttributeError:
        raise GeventInternalsMissing(f"{type(tls).__name__}._sslobj is missing") from None
    if sslobj is None:  # the TLS session is already gone
        return
    try:
        sslobj.shutdown()
    except sys.modules["ssl"].SSLWantReadError:  # sent; the peer's close_notify is not awaited
        pass


def io_watcher(fd: int, events: int) -> Any:
    """A new (stopped) event-loop watcher on a raw descriptor: the public ``loop.io``."""
    return get_hub().loop.io(fd, events)


def accept_fd(listener: socket.socket) -> int:
    """Accept one waiting client on a listening socket without blocking; its descriptor.

    Uses the kernel socket's ``_accept()`` (the C call under ``socket.accept``): no
    socket object, no wait. Raises OSError (BlockingIOError when nobody waits).
    """
    # a started StreamServer keeps the kernel socket itself (gevent's _wrefsocket) in ``.socket``
    raw = raw_socket(listener) if type(listener) is PLAIN else listener
    try:
        accept = raw._accept  # type: ignore[attr-defined]
    except AttributeError:
        raise GeventInternalsMissing("socket._accept is missing") from None
    fd, _ = accept()
    return int(fd)


def retry_accepting_later(server: StreamServer, delay: float) -> None:
    """After ``server.stop_accepting()``: accept again in ``delay`` seconds if still started.

    StreamServer's own backoff timer (``_timer``, cleared by ``stop_accepting``) and
    hook (``_start_accepting_if_started``), so that close() cancels it too.
    """
    if not hasattr(server, "_timer"):
        raise GeventInternalsMissing("gevent StreamServer._timer is missing")
    timer = server._timer = server.loop.timer(delay)
    timer.start(server._start_accepting_if_started)


def end_hub_helpers(hub: Hub) -> None:
    """End the hub's resolver and threadpool now (what ``destroy()`` does first, where
    ending them switches back into a loop that has already run out of work and the
    hub's greenlet is left suspended). ``_resolver`` and ``_threadpool``: the hub's
    own, made on first use, None if never used.

    Raises:
        GeventInternalsMissing: gevent no longer keeps them there.
    """
    try:
        resolver, pool = hub._resolver, hub._threadpool
    except AttributeError:
        raise GeventInternalsMissing("gevent Hub._resolver / Hub._threadpool are missing") from None
    if resolver is not None:
        resolver.close()
        hub._resolver = None
    if pool is not None:
        pool.kill()
        hub._threadpool = None
