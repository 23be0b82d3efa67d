"""The HTTP proxy end to end: curl, requests and raw sockets against a real origin."""

from __future__ import annotations

import base64
import gzip
import hashlib
import shutil
import socket

import gevent
import h11
import pytest
import requests

from gproxy import Config, Proxy
from gproxy.core.context import Metrics
from tests.helpers import (
    CannedOrigin,
    RecordingOrigin,
    TcpServer,
    big_body_sha256,
    curl,
    recv_all,
    recv_exact,
    recv_head,
    wait_for,
)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
BASIC = b"Basic " + base64.b64encode(b"u:p")


class Sessions(Metrics):
    """Records every finished session (what the access log would print)."""

    def __init__(self) -> None:
        self.closed = []

    def session_closed(self, session) -> None:
        self.closed.append(session)


@pytest.fixture
def sessions():
    return Sessions()


@pytest.fixture
def start():
    """``start(resolver=..., metrics=..., **settings)`` -> (host, port) of a running --http listener."""
    running = []

    def factory(*, metrics=None, resolver=None, **settings):
        settings.setdefault("http", ["127.0.0.1:0"])
        settings.setdefault("handshake_timeout", 5)
        settings.setdefault("connect_timeout", 5)
        extra = {"resolver": resolver} if resolver else {}
        proxy = Proxy(Config.build(**settings), metrics=metrics, **extra).start()
        running.append(proxy)
        address = proxy.address("http")
        return address.host, address.port

    yield factory
    for proxy in running:
        proxy.stop(0)


@pytest.fixture
def origin():
    with RecordingOrigin() as server:
        yield server


@pytest.fixture
def origin2():
    with RecordingOrigin(body=b"the other origin") as server:
        yield server


class RawClient:
    """A plain socket to the proxy; responses are read with h11 (an independent framer)."""

    def __init__(self, address) -> None:
        self.sock = socket.create_connection(address, timeout=10)
        self.leftover = b""

    def request(self, raw: bytes, method: str = "GET"):
        self.sock.sendall(raw)
        return self.response(method)

    def response(self, method: str = "GET"):
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        if self.leftover:
            conn.receive_data(self.leftover)  # b"" would mean EOF to h11
        response, body = None, b""
        for _ in range(100_000):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        self.leftover = conn.trailing_data[0]
        return response, body

    def close(self) -> None:
        self.sock.close()


def get(url: str, *extra: bytes) -> bytes:
    return b"GET " + url.encode() + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(extra) + b"\r\n"


# -- real clients -----------------------------------------------------------------------


@needs_curl
def test_curl_forwarding_with_credentials(start, origin):
    host, port = start(user=["u:p"])
    result = curl("-x", f"http://u:p@{host}:{port}", origin.url("/path?q=1", "localhost"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"
    seen = origin.requests[-1]
    assert seen["path"] == "/path?q=1"
    assert seen["headers"]["host"] == f"localhost:{origin.port}"
    assert "proxy-authorization" not in seen["headers"] and "proxy-connection" not in seen["headers"]


@needs_curl
def test_curl_connect_tunnel(start, origin):
    host, port = start(user=["u:p"])
    result = curl("-p", "-x", f"http://u:p@{host}:{port}", "-v", origin.url("/tunnelled"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello from origin"
    assert b"200 Connection established" in result.stderr
    assert origin.requests[-1]["path"] == "/tunnelled"


def test_requests_with_credentials_in_the_proxy_url(start, origin, sessions):
    host, port = start(user=["u:p"], metrics=sessions)
    proxies = {"http": f"http://u:p@{host}:{port}"}
    response = requests.get(origin.url("/r"), proxies=proxies, timeout=10)
    assert response.status_code == 200 and response.content == b"hello from origin"
    response = requests.post(origin.url("/p"), data=b"x" * 1000, proxies=proxies, timeout=10)
    assert response.content == b"x" * 1000
    wrong = {"http": f"http://u:nope@{host}:{port}"}
    assert requests.get(origin.url("/r"), proxies=wrong, timeout=10).status_code == 407
    session = wait_for_sessions(sessions, 2)[0]
    assert (session.proto, session.user, session.outcome) == ("http", "u", "ok")
    assert session.dest == f"127.0.0.1:{origin.port}" and session.cmd in ("get", "post")


# -- keep-alive -------------------------------------------------------------------------------


def wait_for_sessions(sessions: Sessions, count: int) -> list:
    """The closed sessions once there are ``count`` (TimeoutError after 10 s)."""
    return wait_for(lambda: len(sessions.closed) >= count and sessions.closed, what=f"{count} closed sessions")


def test_two_requests_to_two_origins_over_one_connection(start, origin, origin2, sessions):
    host, port = start(metrics=sessions)
    client = RawClient((host, port))
    try:
        response, body = client.request(get(origin.url("/one")))
        assert response.status_code == 200 and body == b"hello from origin"
        response, body = client.request(get(origin2.url("/two")))
        assert response.status_code == 200 and body == b"the other origin"
        # pipelined: two requests in one segment, answered in order
        client.sock.sendall(get(origin.url("/three")) + get(origin2.url("/four")))
        assert client.response()[1] == b"hello from origin"
        assert client.response()[1] == b"the other origin"
    finally:
        client.close()
    assert [r["path"] for r in origin.requests + origin2.requests] == ["/one", "/three", "/two", "/four"]
    (session,) = wait_for_sessions(sessions, 1)  # one client connection, one session, four requests
    assert (session.proto, session.cmd, session.outcome) == ("http", "get", "ok")
    assert (session.up, session.down) == (0, 2 * len(b"hello from origin") + 2 * len(b"the other origin"))


@needs_curl
def test_curl_reuses_the_proxy_connection(start, origin, origin2):
    host, port = start()
    result = curl(
        "-x", f"http://{host}:{port}", "-w", " connects=%{num_connects}\n", origin.url("/a"), origin2.url("/b")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [b"hello from origin connects=1", b"the other origin connects=0"]


# -- authentication -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "credentials",
    [None, b"Basic " + base64.b64encode(b"u:wrong"), b"Basic " + base64.b64encode(b"nobody:p"), b"Basic !!"],
    ids=["missing", "wrong-password", "unknown-user", "malformed"],
)
@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_407_with_the_basic_challenge(start, origin, credentials, method):
    host, port = start(user=["u:p"])
    extra = [b"Proxy-Authorization: " + credentials + b"\r\n"] if credentials else []
    if method == "GET":
        raw = get(origin.url(), *extra)
    else:
        raw = f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: x\r\n".encode() + b"".join(extra) + b"\r\n"
    client = RawClient((host, port))
    try:
        response, _ = client.request(raw)
        assert response.status_code == 407
        assert (b"proxy-authenticate", b'Basic realm="gproxy"') in response.headers
        if credentials is None:  # a challenge: the connection stays open for the retry
            assert client.request(raw)[0].status_code == 407
        else:
            assert recv_all(client.sock) == b""  # wrong credentials: closed
    finally:
        client.close()
    assert origin.requests == []


@needs_curl
def test_curl_sees_407_without_credentials(start, origin):
    host, port = start(user=["u:p"])
    result = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://{host}:{port}", origin.url())
    assert result.stdout == b"407"


# -- bodies ----------------------------------------------------------------------------------------


def test_post_with_content_length_is_forwarded_intact(start, origin):
    host, port = start()
    body = bytes(range(256)) * 400
    client = RawClient((host, port))
    try:
        head = f"POST {origin.url('/cl')} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        client.sock.sendall(head + body[:1000])
        client.sock.sendall(body[1000:])
        response, echoed = client.response("POST")
    finally:
        client.close()
    assert response.status_code == 200 and echoed == body
    seen = origin.requests[-1]
    assert seen["body"] == body and seen["headers"]["content-length"] == str(len(body))
    assert "transfer-encoding" not in seen["headers"]


def test_post_with_chunked_body_is_forwarded_intact(start, origin):
    host, port = start()
    parts = [b"first part,", b"x" * 70000, b"", b"last"]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\n\r\n"
    client = RawClient((host, port))
    try:
        head = f"POST {origin.url('/chunked')} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        for i in range(0, len(chunked), 7000):  # in pieces that cut through chunk headers
            client.sock.sendall((head if i == 0 else b"") + chunked[i : i + 7000])
        response, echoed = client.response("POST")
    finally:
        client.close()
    assert echoed == b"".join(parts)
    seen = origin.requests[-1]
    assert seen["body"] == b"".join(parts)
    assert seen["headers"]["transfer-encoding"] == "chunked" and "content-length" not in seen["headers"]


@needs_curl
def test_curl_chunked_upload(start, origin, tmp_path):
    host, port = start()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(bytes(range(256)) * 4096)
    result = curl(
        "-x", f"http://{host}:{port}", "-H", "Transfer-Encoding: chunked", "--data-binary", f"@{upload}", origin.url()
    )
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(upload.read_bytes()).digest()
    assert origin.requests[-1]["headers"]["transfer-encoding"] == "chunked"


@pytest.mark.parametrize("kind", ["big", "big-chunked"])
def test_50mb_response_streams_through(start, origin, kind):
    size = 50 * 1024 * 1024
    host, port = start()
    response = requests.get(
        origin.url(f"/{kind}/{size}"), proxies={"http": f"http://{host}:{port}"}, stream=True, timeout=30
    )
    digest, total = hashlib.sha256(), 0
    for chunk in response.iter_content(1 << 20):
        digest.update(chunk)
        total += len(chunk)
    response.close()
    assert total == size
    assert digest.hexdigest() == big_body_sha256(size)


def test_head_and_http10_clients(start, origin):
    host, port = start()
    client = RawClient((host, port))
    try:
        response, body = client.request(b"HEAD " + origin.url().encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n", "HEAD")
        assert response.status_code == 200 and body == b""
        assert (b"content-length", b"17") in response.headers
        response, body = client.request(get(origin.url("/after-head")))
        assert body == b"hello from origin"
    finally:
        client.close()
    # HTTP/1.0 without keep-alive: answered, then closed; a chunked origin body is close-delimited
    sock = socket.create_connection((host, port), timeout=10)
    with sock:
        sock.sendall(b"GET " + origin.url("/big-chunked/5").encode() + b" HTTP/1.0\r\n\r\n")
        raw = recv_all(sock)
    assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(
        b"\r\n\r\n" + b"\x00" + hashlib.sha256(b"gproxy").digest()[1:5]
    )


def test_hop_by_hop_headers_are_not_forwarded(start, origin):
    host, port = start(user=["u:p"])
    client = RawClient((host, port))
    try:
        response, _ = client.request(
            get(
                origin.url("/h"),
                b"Proxy-Authorization: " + BASIC + b"\r\n",
                b"Connection: keep-alive, X-Private\r\n",
                b"X-Private: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\n",
                b"X-Kept: yes\r\n",
            )
        )
        assert response.status_code == 200
    finally:
        client.close()
    headers = origin.requests[-1]["headers"]
    assert headers["x-kept"] == "yes"
    assert headers["host"] == f"127.0.0.1:{origin.port}"  # the URI's authority, not the client's Host: x
    for name in ("proxy-authorization", "x-private", "keep-alive", "te", "upgrade"):
        assert name not in headers, name


def test_expect_100_continue_is_answered_by_the_proxy(start, origin):
    host, port = start()
    sock = socket.create_connection((host, port), timeout=10)
    with sock:
        sock.sendall(
            f"POST {origin.url('/e')} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n".encode()
        )
        head = b""
        while not head.endswith(b"\r\n\r\n") and len(head) < 1000:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 100 ")  # before the body is sent: the proxy said go on
        sock.sendall(b"hello")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock).endswith(b"\r\n\r\nhello")
    assert "expect" not in origin.requests[-1]["headers"]


# -- CONNECT ---------------------------------------------------------------------------------------


def test_connect_relays_bytes_sent_right_after_the_head(start, echo_tcp):
    host, port = start()
    sock = socket.create_connection((host, port), timeout=10)
    with sock:
        sock.sendall(f"CONNECT 127.0.0.1:{echo_tcp.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + b"\x16\x03\x01hello")
        assert recv_exact(sock, 39) == b"HTTP/1.1 200 Connection established\r\n\r\n"
        assert recv_exact(sock, 8) == b"\x16\x03\x01hello"
        sock.sendall(b"more")
        assert recv_exact(sock, 4) == b"more"


def test_connect_ipv6_literal(start, echo_tcp6):
    host, port = start()
    sock = socket.create_connection((host, port), timeout=10)
    with sock:
        sock.sendall(f"CONNECT [::1]:{echo_tcp6.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_exact(sock, 39).startswith(b"HTTP/1.1 200 ")
        sock.sendall(b"v6")
        assert recv_exact(sock, 2) == b"v6"


# -- failures ---------------------------------------------------------------------------------------


def status_and_close(address, raw: bytes) -> int:
    sock = socket.create_connection(address, timeout=10)
    with sock:
        sock.sendall(raw)
        answer = recv_all(sock)  # also proves the connection is closed
    assert answer.startswith(b"HTTP/1.1 ") and b"\r\nConnection: close\r\n" in answer, answer
    return int(answer[9:12])


def _no_such_name(host, port):
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def _slow_name(host, port):
    gevent.sleep(30)
    raise AssertionError("not reached")


@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_dial_failures_map_to_502_504_403(start, closed_port, method):
    def ask(address, dest):
        if method == "GET":
            return status_and_close(address, get(f"http://{dest}/"))
        return status_and_close(address, f"CONNECT {dest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())

    plain = start()
    assert ask(plain, f"127.0.0.1:{closed_port}") == 502  # refused
    assert ask(plain, "127.0.0.1:0") in (400, 403)  # port 0 is never dialled
    assert ask(plain, f"{plain[0]}:{plain[1]}") == 403  # itself: no loops
    assert ask(start(resolver=_no_such_name), "nowhere.test:80") == 502
    assert ask(start(resolver=_slow_name, connect_timeout=0.3), "slow.test:80") == 504


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
        (
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            400,
        ),
        (b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (
            b"POST http://a/ HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            b"GET http://a/ HTTP/1.0\r\n\r\n",
            400,
        ),
        (b"GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n folded: x\r\n\r\n", 400),
        (b"GET /origin-form HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host (h11)
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # TLS to a plain port
        (b"GET http://a/" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET http://a/ HTTP/1.1\r\n" + b"X-Big: " + b"v" * 70000 + b"\r\n\r\n", 431),
    ],
    ids=[
        "two-content-lengths",
        "cl-and-te",
        "cl-and-empty-te",
        "te-twice",
        "te-not-chunked",
        "http10-te",
        "space-before-colon",
        "obs-fold",
        "origin-form",
        "https-uri",
        "connect-no-port",
        "no-host",
        "tls-bytes",
        "414",
        "431",
    ],
)
def test_bad_requests(start, raw, status):
    assert status_and_close(start(), raw) == status


def test_handshake_timeout_drops_a_slow_client(start):
    host, port = start(handshake_timeout=0.3)
    sock = socket.create_connection((host, port), timeout=10)
    with sock:
        sock.sendall(b"GET http://a/ HTTP/1.1\r\nHost:")  # and then nothing
        assert recv_all(sock) == b""


def test_idle_keep_alive_connection_is_closed(start, origin):
    host, port = start(idle_timeout=0.3)
    client = RawClient((host, port))
    try:
        assert client.request(get(origin.url()))[0].status_code == 200
        assert recv_all(client.sock) == b""  # nothing more asked: closed after the idle timeout
    finally:
        client.close()


def test_an_early_answer_from_the_origin_reaches_the_client(start):
    """The origin answers 413 after the head and closes without reading the body."""
    from gevent.server import StreamServer

    def refuse_upload(sock, _addr):
        recv_head(sock)
        sock.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!")
        sock.close()

    server = StreamServer(("127.0.0.1", 0), refuse_upload)
    server.start()
    try:
        host, port = start()
        sock = socket.create_connection((host, port), timeout=10)
        size = 8 * 1024 * 1024
        target = f"http://127.0.0.1:{server.server_port}/"
        sock.sendall(f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode())

        def upload():
            try:
                for _ in range(size // 65536):
                    sock.sendall(b"u" * 65536)
            except OSError:
                pass  # the proxy stops reading once the origin has answered

        uploader = gevent.spawn(upload)
        answer = b""
        try:
            while b"too big!" not in answer and len(answer) < 65536:
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
        uploader.kill()
        sock.close()
        assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b"too big!")
    finally:
        server.stop(timeout=1)


def test_a_silent_origin_gets_504_after_the_idle_timeout(start, sessions):
    """The origin reads the request and never answers: 504 (origin_timeout) once --idle-timeout
    passes, on a fresh origin connection and on one kept alive from an earlier request."""
    import time

    from gevent.server import StreamServer

    def answer_once_then_hang(sock, _addr):
        with sock:
            for _ in range(2):
                head = recv_head(sock)
                if b"\r\n\r\n" not in head:
                    return
                if b"/silent" in head:
                    gevent.sleep(30)  # killed when the server stops
                    return
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = StreamServer(("127.0.0.1", 0), answer_once_then_hang)
    server.start()
    try:
        host, port = start(idle_timeout=0.5, metrics=sessions)
        base = f"http://127.0.0.1:{server.server_port}"
        for warm in (False, True):  # fresh, then kept alive (pooled)
            client = RawClient((host, port))
            try:
                if warm:
                    assert client.request(get(base + "/ok"))[0].status_code == 200
                began = time.monotonic()
                response, _ = client.request(get(base + "/silent"))
                assert response.status_code == 504
                assert 0.3 < time.monotonic() - began < 8
            finally:
                client.close()
        # one session per client connection, the fresh one's and the pooled one's: both timed out
        assert [session.outcome for session in wait_for_sessions(sessions, 2)] == ["origin_timeout"] * 2
    finally:
        server.stop(timeout=1)


def test_a_client_that_stalls_in_its_request_body_is_cut_off_after_the_idle_timeout(start, origin, sessions):
    """3 of 10 body bytes, then nothing: the proxy closes the client after --idle-timeout (idle_timeout)."""
    import time

    host, port = start(idle_timeout=0.3, metrics=sessions)
    with socket.create_connection((host, port), timeout=10) as client:
        url = origin.url("/stall").encode()
        client.sendall(b"POST " + url + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        began = time.monotonic()
        recv_all(client)  # whatever comes, then the close
        assert 0.2 < time.monotonic() - began < 8
    (session,) = wait_for_sessions(sessions, 1)
    assert session.outcome == "idle_timeout"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [b"zz\r\nok\r\n0\r\n\r\n", b"0\r\n" + b"X-Trailer: 1234567\r\n" * 1000 + b"\r\n"],
    ids=["bad-chunk-size", "trailers-too-large"],
)
def test_a_chunked_body_broken_before_any_byte_went_out_is_502(start, sessions, body):
    """The client hears 502 (not a bare close) when the origin's chunked coding fails before
    the response head was sent; the access log says 502 too."""
    with CannedOrigin(CHUNKED_HEAD + body) as origin:
        address = start(metrics=sessions)
        assert status_and_close(address, get(f"http://127.0.0.1:{origin.port}/")) == 502
    (session,) = wait_for_sessions(sessions, 1)
    assert (session.status, session.outcome) == (502, "origin_error")


def test_a_chunked_body_broken_after_bytes_went_out_is_a_close(start):
    """Once the response head went out a 502 can no longer be sent: the client sees a close
    before the last chunk, and nothing else."""
    with CannedOrigin(CHUNKED_HEAD + b"2\r\nok\r\n", rest=b"zz\r\n") as origin:
        host, port = start()
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(get(f"http://127.0.0.1:{origin.port}/"))
            answer = b""
            while not answer.endswith(b"2\r\nok\r\n") and len(answer) < 1000:
                answer += sock.recv(1000) or b"<EOF>"
            origin.go.set()
            answer += recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"\r\n\r\n2\r\nok\r\n"), answer


def dechunk(body: bytes) -> bytes:
    """The data of a chunked body that ends in a last chunk (no trailers); AssertionError otherwise."""
    data = b""
    for _ in range(len(body)):  # bounded: each round takes at least one line
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            assert body == b"\r\n", body
            return data
        data += body[:size]
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
    raise AssertionError("no last chunk")


@pytest.mark.parametrize(
    ("codings", "body"),
    [(b"gzip, chunked", b"%x\r\n%b\r\n0\r\n\r\n"), (b"gzip", b"%x%b")],
    ids=["chunked-origin", "close-delimited-origin"],
)
def test_transfer_codings_other_than_chunked_reach_the_client(start, codings, body):
    """Only chunked is the proxy's to decode: an HTTP/1.1 client is told the gzip coding
    (Transfer-Encoding: gzip, chunked) and gets the gzip bytes; an HTTP/1.0 client, which
    must never be sent Transfer-Encoding, gets 502 instead of gzip bytes as plain ones."""
    coded = gzip.compress(b"hello from origin")
    body = body % (len(coded), coded) if body.startswith(b"%x\r\n") else coded
    response = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + codings + b"\r\nX-A: 1\r\n\r\n" + body
    with CannedOrigin(response) as origin:
        address = start()
        url = f"http://127.0.0.1:{origin.port}/"
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(get(url, b"Connection: close\r\n"))
            answer = recv_all(sock)
        head, _, chunked = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"\r\nX-A: 1\r\n" in head + b"\r\n", head
        assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in head + b"\r\n", head
        assert gzip.decompress(dechunk(chunked)) == b"hello from origin"
        assert status_and_close(address, f"GET {url} HTTP/1.0\r\n\r\n".encode()) == 502


def test_interim_1xx_responses_reach_an_http11_client_only(start):
    """RFC 9110 15.2: a proxy forwards 1xx responses (103 Early Hints, 102) to an HTTP/1.1
    client, before the final one; an HTTP/1.0 client, which knows no 1xx, gets the final
    response alone."""
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
    with CannedOrigin(interim + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as origin:
        address = start()
        url = f"http://127.0.0.1:{origin.port}/"
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(get(url, b"Connection: close\r\n"))
            answer = recv_all(sock)
        assert answer.startswith(interim + b"HTTP/1.1 200 OK\r\n"), answer
        assert answer.endswith(b"\r\n\r\nok")
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(f"GET {url} HTTP/1.0\r\n\r\n".encode())
            answer = recv_all(sock)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok"), answer


def test_max_forwards_of_trace_and_options_is_counted_down(start, origin):
    """RFC 9110 7.6.2, as Squid does: a TRACE or OPTIONS with Max-Forwards: 0 is answered by
    the proxy (TRACE: the request as it would have gone on), one above
    0 goes on lowered by one; the connection stays open for the next request. The echo
    leaves out credentials and cookies."""
    client = RawClient(start(user=["u:p"]))
    auth = b"Proxy-Authorization: " + BASIC + b"\r\n"
    try:
        trace = get(origin.url("/t"), auth, b"Max-Forwards: 0\r\nCookie: c=1\r\nAuthorization: Basic eDp5\r\n")
        response, body = client.request(trace.replace(b"GET", b"TRACE", 1))
        assert response.status_code == 200 and (b"content-type", b"message/http") in response.headers
        assert body == f"TRACE /t HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\nMax-Forwards: 0\r\n\r\n".encode()
        options = get(origin.url("/o"), auth, b"Max-Forwards: 0\r\n").replace(b"GET", b"OPTIONS", 1)
        response, body = client.request(options, "OPTIONS")
        assert (response.status_code, body) == (200, b"")
        assert origin.requests == []  # neither went on
        response, _ = client.request(options.replace(b"Max-Forwards: 0", b"Max-Forwards: 5"), "OPTIONS")
        assert response.status_code == 200
        assert origin.requests[-1]["headers"]["max-forwards"] == "4"
        response, body = client.request(get(origin.url("/g"), auth, b"Max-Forwards: 0\r\n"))
        assert (response.status_code, body) == (200, b"hello from origin")  # only TRACE and OPTIONS count
        assert origin.requests[-1]["headers"]["max-forwards"] == "0"
    finally:
        client.close()


class OverlongOrigin(TcpServer):
    """Answers the first request on each connection with more bytes than its Content-Length
    says, the surplus in a later segment than the head; later requests properly."""

    def __init__(self) -> None:
        super().__init__()
        self.connections = 0

    def _handle(self, sock: socket.socket, _addr: object) -> None:
        self.connections += 1
        with sock:
            for served in range(10):
                if not recv_head(sock).endswith(b"\r\n\r\n"):
                    return
                if served:
                    sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
                    continue
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
                gevent.sleep(0.2)
                sock.sendall(b"okHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")


def test_an_origin_connection_that_sent_more_than_its_content_length_is_not_reused(start):
    """Bytes past a response's Content-Length are never forwarded, and the connection they came
    on is closed, not pooled (as Squid does), wherever the surplus falls in the reads."""
    with OverlongOrigin() as origin:
        client = RawClient(start())
        try:
            url = f"http://127.0.0.1:{origin.port}/"
            assert client.request(get(url))[1] == b"okok"
            assert client.request(get(url))[1] == b"okok"  # a new connection: its first answer again
        finally:
            client.close()
        assert origin.connections == 2
