"""Origin connections kept alive between forwarded requests: each request still reaches its
own origin, a kept connection the origin dropped is retried only for idempotent requests,
idle connections expire, the pool is bounded, and each request keeps its access-log line."""

from __future__ import annotations

import shutil
import socket
from contextlib import closing

import gevent
import gevent.event
import pytest
from gevent.server import StreamServer

from tests.helpers import curl, wait_for
from tests.integration.test_access_log import lines_of
from tests.integration.test_http_proxy import RawClient, get


class CountingOrigin:
    """A keep-alive HTTP/1.1 origin answering ``NAME conn=N path=P``; ``drop_second`` closes a
    connection, unanswered, when its second request arrives (an origin's idle close racing a
    kept-alive request); ``together`` holds every answer until that many requests came, or
    release() is called (10 s at most);
    ``no_content`` answers 204 with no Content-Length instead."""

    def __init__(self, name: str, *, drop_second: bool = False, together: int = 0, no_content: bool = False) -> None:
        self.name, self.drop_second, self.together = name, drop_second, together
        self.no_content = no_content
        self._all_in = gevent.event.Event()
        self.connections = 0
        self.open = 0
        self.requests: list[tuple[int, bytes, bytes]] = []  # (connection, method, path)
        self.server = StreamServer(("127.0.0.1", 0), self._serve)

    def __enter__(self) -> CountingOrigin:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)

    def release(self) -> None:
        """Answer the requests held for ``together`` now."""
        self._all_in.set()

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def url(self, path: str = "/id") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def _serve(self, sock: socket.socket, _addr: object) -> None:
        self.connections += 1
        self.open += 1
        number, served, buf = self.connections, 0, b""
        try:
            for _ in range(1000):
                while b"\r\n\r\n" not in buf:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(buf) < length:
                    buf += sock.recv(65536)
                buf = buf[length:]
                if self.drop_second and served == 1:
                    return
                self.requests.append((number, method, path))
                served += 1
                if self.together:  # no answer before ``together`` requests are in (10 s at most)
                    if len(self.requests) >= self.together:
                        self.release()
                    self._all_in.wait(10)
                if self.no_content:
                    sock.sendall(b"HTTP/1.1 204 No Content\r\nX-Conn: %d\r\n\r\n" % number)
                    continue
                body = b"%s conn=%d path=%s" % (self.name.encode(), number, path)
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        finally:
            self.open -= 1
            sock.close()


@pytest.fixture
def origin_a():
    with CountingOrigin("a") as origin:
        yield origin


@pytest.fixture
def origin_b():
    with CountingOrigin("b") as origin:
        yield origin


def _http(proxy, **settings):
    running = proxy(http=["127.0.0.1:0"], **settings)
    address = running.address("http")
    return running, (address.host, address.port)


def test_two_origins_alternating_on_one_client_connection_each_get_their_own(proxy, origin_a, origin_b):
    running, address = _http(proxy)
    with closing(RawClient(address)) as client:
        bodies = [client.request(get(origin.url(f"/{i}")))[1] for i, origin in enumerate([origin_a, origin_b] * 3)]
    assert bodies == [
        b"a conn=1 path=/0",
        b"b conn=1 path=/1",
        b"a conn=1 path=/2",  # the kept connection to a, not b's
        b"b conn=1 path=/3",
        b"a conn=1 path=/4",
        b"b conn=1 path=/5",
    ]
    assert [path for _, _, path in origin_a.requests] == [b"/0", b"/2", b"/4"]
    assert len(running.origin_pool) == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_two_urls_through_one_proxy_connection(proxy, origin_a, origin_b):
    _, (host, port) = _http(proxy)
    out = curl("-x", f"http://{host}:{port}", origin_a.url(), origin_b.url(), max_time=20)
    assert out.stdout == b"a conn=1 path=/id" + b"b conn=1 path=/id", out.stderr


def test_get_on_a_dropped_kept_connection_is_retried_once_on_a_new_one(proxy):
    with CountingOrigin("a", drop_second=True) as origin:
        _, address = _http(proxy)
        with closing(RawClient(address)) as client:
            assert client.request(get(origin.url("/1")))[1] == b"a conn=1 path=/1"
            response, body = client.request(get(origin.url("/2")))  # conn 1 is dropped: retried on conn 2
        assert (response.status_code, body) == (200, b"a conn=2 path=/2")
        assert origin.connections == 2


def test_post_never_rides_a_kept_connection(proxy):
    with CountingOrigin("a", drop_second=True) as origin:
        running, address = _http(proxy)
        with closing(RawClient(address)) as client:
            assert client.request(get(origin.url("/1")))[1] == b"a conn=1 path=/1"
            assert len(running.origin_pool) == 1
            post = b"POST " + origin.url("/p").encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            response, body = client.request(post, "POST")
        # on the kept connection it would be dropped; it went on a new one, sent once
        assert (response.status_code, body) == (200, b"a conn=2 path=/p")
        assert [(method, path) for _, method, path in origin.requests] == [(b"GET", b"/1"), (b"POST", b"/p")]


def test_idle_origin_connections_expire(proxy, origin_a):
    running, address = _http(proxy)
    running.origin_pool.idle_expiry = 0.2
    with closing(RawClient(address)) as client:
        assert client.request(get(origin_a.url("/1")))[1] == b"a conn=1 path=/1"
        wait_for(lambda: origin_a.open == 0, timeout=5, what="the idle origin connection closed")
        assert len(running.origin_pool) == 0
        assert client.request(get(origin_a.url("/2")))[1] == b"a conn=2 path=/2"


def test_the_pool_keeps_at_most_per_origin_connections(proxy):
    with CountingOrigin("a", together=4) as origin:
        running, address = _http(proxy)
        running.origin_pool.per_origin = 2
        clients = [RawClient(address) for _ in range(4)]
        try:
            jobs = [gevent.spawn(client.request, get(origin.url(f"/{i}"))) for i, client in enumerate(clients)]
            gevent.joinall(jobs, timeout=10, raise_error=True)
            assert sorted(job.value[0].status_code for job in jobs) == [200] * 4
            assert origin.connections == 4  # all at once: four connections
            assert len(running.origin_pool) == 2
            wait_for(lambda: origin.open == 2, timeout=5, what="the two connections beyond the bound closed")
        finally:
            for client in clients:
                client.close()


def test_one_access_log_line_per_pooled_request(proxy, origin_a, origin_b, tmp_path):
    log = tmp_path / "access.log"
    _, address = _http(proxy, access_log=str(log))
    with closing(RawClient(address)) as client:
        for origin in (origin_a, origin_a, origin_b, origin_a):
            assert client.request(get(origin.url()))[0].status_code == 200
    entries = wait_for(lambda: len(lines_of(log)) >= 4 and lines_of(log), what="four access-log lines")
    assert [(e["cmd"], e["dest"], e["status"], e["down"]) for e in entries] == [
        ("get", f"127.0.0.1:{origin_a.port}", "200", "17"),
        ("get", f"127.0.0.1:{origin_a.port}", "200", "17"),
        ("get", f"127.0.0.1:{origin_b.port}", "200", "17"),
        ("get", f"127.0.0.1:{origin_a.port}", "200", "17"),
    ]


def test_each_connections_read_watcher_is_started_once_for_all_its_requests(proxy, origin_a, monkeypatch):
    """A kept-alive client and its pooled origin connection each keep one started watcher
    across requests (a watcher started again per wait costs libev a failing epoll_ctl)."""
    from gproxy.core import readable
    from gproxy.frontends import http as http_front

    starts: list[int] = []

    class CountingReadWaiter(readable.ReadWaiter):
        __slots__ = ()

        def wait(self) -> None:
            if not self.started:
                starts.append(id(self))
            super().wait()

    monkeypatch.setattr(http_front, "ReadWaiter", CountingReadWaiter)
    running, address = _http(proxy)
    with closing(RawClient(address)) as client:
        for i in range(6):
            assert client.request(get(origin_a.url(f"/{i}")))[1] == b"a conn=1 path=/%d" % i
    assert len(running.origin_pool) == 1
    # the origin's reader started on the first request, the client's on the second: once each
    assert len(starts) == len(set(starts)) == 2, starts


def test_a_drain_closes_an_idle_kept_alive_connection_at_once(proxy, origin_a):
    # nginx and Go's Shutdown do the same: an idle kept-alive client is not held to the drain's end
    running, address = _http(proxy, drain_timeout=30)
    with closing(RawClient(address)) as client, gevent.Timeout(15):
        assert client.request(get(origin_a.url()))[1] == b"a conn=1 path=/id"
        stopping = gevent.spawn(running.stop)
        assert client.sock.recv(1) == b""  # closed by the proxy, not after 30 s
        stopping.join()
    assert stopping.successful()


def test_a_drain_lets_a_request_in_progress_finish_then_closes(proxy):
    with CountingOrigin("slow", together=2) as origin:  # holds its answer until released
        running, address = _http(proxy, drain_timeout=30)
        with closing(RawClient(address)) as client, gevent.Timeout(15):
            client.sock.sendall(get(origin.url("/first")))
            wait_for(lambda: origin.requests, what="the request at the origin")
            stopping = gevent.spawn(running.stop)
            wait_for(lambda: running.draining, what="the drain")  # the request still waits for its answer
            origin.release()
            response, body = client.response()
            assert (response.status_code, body) == (200, b"slow conn=1 path=/first")
            assert (b"connection", b"close") in response.headers  # the client sends nothing more
            assert client.sock.recv(1) == b""  # then closed, no wait for a next request
            stopping.join()


def test_a_204_without_a_length_keeps_its_origin_connection(proxy):
    with CountingOrigin("empty", no_content=True) as origin:
        _, address = _http(proxy)
        with closing(RawClient(address)) as client:
            for _ in range(3):
                response, body = client.request(get(origin.url()))
                assert (response.status_code, body) == (204, b"")
        assert origin.connections == 1
