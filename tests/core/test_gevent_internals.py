"""One test per private gevent internal gproxy relies on (all behind gproxy/core/_gevent.py):
a gevent upgrade that drops or changes one fails the test that names it."""

from __future__ import annotations

import socket
import ssl

import gevent
import pytest
from gevent import socket as gsocket
from gevent.server import StreamServer

from gproxy.core import _gevent
from tests.helpers import make_cert


def test_gevent_socket_has__sock():
    """raw_socket(): the non-blocking kernel socket under a plain gevent socket, same descriptor."""
    a, b = gsocket.socketpair()
    with a, b:
        raw = _gevent.raw_socket(a)
        assert raw is a._sock
        assert raw.fileno() == a.fileno() and raw.gettimeout() == 0.0
        assert raw.send(b"x") == 1  # sends without yielding
        assert b.recv(1) == b"x"


def test_take_kernel_socket_leaves_the_gevent_socket_detached():
    """take_kernel_socket(): _sock, _read_event and _write_event, and gevent._socket3._closedsocket
    as the placeholder: the gevent socket's close() then leaves the descriptor alone."""
    a, b = gsocket.socketpair()
    with b:
        kernel, own_reader = a._sock, a._read_event
        fd = a.fileno()
        taken, reader = _gevent.take_kernel_socket(a)
        try:
            assert taken is kernel and taken.fileno() == fd and taken.gettimeout() == 0.0
            assert reader is own_reader and reader.fd == fd and not reader.active  # the caller's now
            assert a._read_event is None and a._write_event is None
            assert not a._sock  # gevent's falsy placeholder
            a.close()  # what StreamServer does when the handler returns
            assert taken.send(b"x") == 1  # the descriptor is still open, and still the tunnel's
            assert b.recv(1) == b"x"
            with pytest.raises(OSError):
                a.send(b"y")
        finally:
            reader.close()
            taken.close()
        assert b.recv(1) == b""


def test_take_kernel_socket_refuses_what_is_not_a_gevent_socket():
    with _gevent._STDLIB_PLAIN() as plain, pytest.raises(TypeError):
        _gevent.take_kernel_socket(plain)


def test_raw_socket_of_a_datagram_socket_connects_and_sends():
    """What udp_upstream does with a SOCKS5 upstream's relay: connect the kernel UDP socket, sendmsg on it."""
    with (
        gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer,
    ):
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        raw = _gevent.raw_socket(udp)
        assert raw is not udp and raw.fileno() == udp.fileno()
        raw.connect(peer.getsockname())
        assert udp.getpeername() == peer.getsockname()
        assert raw.sendmsg([b"head", b"er"]) == 6
        assert peer.recvfrom(16) == (b"header", udp.getsockname())


def test_raw_socket_refuses_what_is_not_plain():
    class Wrapped(gsocket.socket):  # e.g. gevent's SSLSocket
        pass

    with Wrapped() as wrapped:
        with pytest.raises(TypeError):
            _gevent.raw_socket(wrapped)
        assert not _gevent.is_plain(wrapped)


def test_a_missing__sock_fails_loudly(monkeypatch):
    """No silent fallback to the cooperative socket (udp.py's shared-buffer rule depends on it)."""

    class WithoutSock:
        pass

    monkeypatch.setattr(_gevent, "PLAIN", WithoutSock)
    with pytest.raises(_gevent.GeventInternalsMissing, match="_sock"):
        _gevent.raw_socket(WithoutSock())  # type: ignore[arg-type]


def test_ssl_socket_has__sslobj(tmp_path):
    """send_close_notify(): _sslobj.shutdown() sends close_notify without waiting for the peer's."""
    cert, key = make_cert(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    a, b = gsocket.socketpair()
    with a, b:
        accepting = gevent.spawn(server_ctx.wrap_socket, a, server_side=True)
        client = client_ctx.wrap_socket(b, server_hostname="localhost")
        server = accepting.get(timeout=10)
        with server, client:
            assert _gevent.is_tls(server) and _gevent.is_tls(client)
            assert not _gevent.is_tls(a)
            assert server._sslobj is not None
            _gevent.send_close_notify(server)  # returns at once: the client has not answered
            assert client.recv(10) == b""  # the client saw close_notify: a clean TLS EOF


def test_loop_io_watcher_on_a_raw_descriptor():
    """The relay's watchers: public loop.io() on the descriptor, not the socket's _read_event."""
    a, b = gsocket.socketpair()
    fired = []
    with a, b:
        watcher = _gevent.io_watcher(a.fileno(), _gevent.READ)
        watcher.start(fired.append, "readable")
        try:
            gevent.sleep(0.01)
            assert fired == []
            b.sendall(b"x")
            for _ in range(100):
                if fired:
                    break
                gevent.sleep(0.01)
            assert fired[:1] == ["readable"]
        finally:
            watcher.close()


def test_read_watcher_is_the_one_the_socket_reads_with():
    """read_watcher() and write_watcher(): gevent's own _read_event (which fires when the
    socket is readable) and _write_event;
    anything but a plain gevent socket is refused."""
    a, b = gsocket.socketpair()
    with a, b:
        watcher = _gevent.read_watcher(a)
        assert watcher is a._read_event
        b.sendall(b"x")
        with gevent.Timeout(5):
            gevent.get_hub().wait(watcher)
        assert a.recv(1) == b"x"
        assert _gevent.write_watcher(a) is a._write_event
        with pytest.raises(TypeError):
            _gevent.read_watcher(_gevent.raw_socket(a))


def test_listening_socket_has__accept():
    """accept_fd(): _accept() on the listener (plain gevent socket or the kernel socket a started
    StreamServer keeps in .socket) returns a descriptor without blocking."""
    server = StreamServer(("127.0.0.1", 0), lambda sock, addr: None)
    server.init_socket()
    try:
        with pytest.raises(BlockingIOError):
            _gevent.accept_fd(server.socket)  # nobody waiting: no wait, no greenlet switch
        with socket.create_connection(server.address[:2], timeout=5) as client:
            fd = _gevent.accept_fd(server.socket)
            accepted = socket.socket(fileno=fd)
            accepted.close()
            client.settimeout(5)
            assert client.recv(1) == b""
    finally:
        server.close()


def test_stream_server_has__timer_and__start_accepting_if_started():
    """retry_accepting_later(): StreamServer's own backoff timer resumes accepting, and
    stop_accepting() (close) cancels it."""
    served = []
    server = StreamServer(("127.0.0.1", 0), lambda sock, addr: served.append(addr))
    server.start()
    try:
        server.stop_accepting()
        _gevent.retry_accepting_later(server, 0.05)
        assert server._timer is not None
        with socket.create_connection(server.address[:2], timeout=5):
            for _ in range(200):
                if served:
                    break
                gevent.sleep(0.01)
        assert served  # accepting again after the delay
        server.stop_accepting()
        _gevent.retry_accepting_later(server, 10)
        server.stop_accepting()
        assert server._timer is None  # cancelled with the rest of the accept machinery
    finally:
        server.close()


def test_hub_keeps_its_resolver_and_threadpool_in__resolver_and__threadpool():
    """end_hub_helpers(): a thread's hub ends its threadpool (and resolver) before its loop is
    joined and destroyed (ops/threaded: else the hub's greenlet stays suspended forever)."""

    def in_a_thread() -> tuple[bool, bool, bool]:
        hub = gevent.get_hub()
        pool, resolver = hub.threadpool, hub.resolver  # each made on first use
        had = hub._threadpool is pool and hub._resolver is resolver
        _gevent.end_hub_helpers(hub)
        ended = hub._threadpool is None and hub._resolver is None
        joined = hub.join(timeout=5)  # nothing left to keep its loop busy
        hub.destroy(destroy_loop=True)
        return had, ended, bool(joined)

    assert in_a_real_thread(in_a_thread) == (True, True, True)


def in_a_real_thread(fn):  # type: ignore[no-untyped-def]
    """fn() on a new native thread (this process is monkey-patched: threading makes greenlets)."""
    from gevent import monkey

    start = monkey.get_original("_thread", "start_new_thread")
    lock = monkey.get_original("_thread", "allocate_lock")()
    lock.acquire()
    result: list[object] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # raised in the caller, below
            error.append(exc)
        finally:
            lock.release()

    start(run, ())
    assert gevent.get_hub().threadpool.apply(lock.acquire, (True, 10))  # wait without blocking this hub
    if error:
        raise error[0]
    return result[0]
