"""The 407 challenge is not a failure: the connection stays open for the retry,
and only wrong credentials count in gproxy_auth_failures_total."""

from __future__ import annotations

import base64
import socket

from tests.helpers import echo_through, metric, recv_all, scrape_metrics, wait_for


def _head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            rest += _exactly(sock, int(line.split(b":")[1]) - len(rest))
    return head


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk
        data += chunk
    return data


def test_challenge_then_retry_on_the_same_connection(proxy, echo_tcp):
    running = proxy(http=["127.0.0.1:0"], metrics=["127.0.0.1:0"], user=["u:pw"])
    address = running.address("http")
    connect = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n" % echo_tcp.port
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(connect + b"\r\n")
        head = _head(sock)
        assert head.startswith(b"HTTP/1.1 407")
        assert b"proxy-authenticate: basic" in head.lower()
        assert b"connection: close" not in head.lower()
        sock.sendall(connect + b"Proxy-Authorization: Basic " + base64.b64encode(b"u:pw") + b"\r\n\r\n")
        assert _head(sock).startswith(b"HTTP/1.1 200")
        assert echo_through(sock, b"after the retry") == b"after the retry"
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(connect + b"Proxy-Authorization: Basic " + base64.b64encode(b"u:wrong") + b"\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 407")

    port = running.address("metrics").port

    def counted():
        samples = scrape_metrics(port)
        return samples if metric(samples, "gproxy_sessions_total") >= 2 else None

    samples = wait_for(counted, what="both sessions counted")
    assert metric(samples, "gproxy_auth_challenges_total", proto="http") == 1
    assert metric(samples, "gproxy_auth_failures_total") == 1  # the wrong password only
    assert metric(samples, "gproxy_sessions_total", outcome="ok") == 1


def test_a_challenged_request_with_a_body_closes(proxy):
    running = proxy(http=["127.0.0.1:0"], user=["u:pw"])
    address = running.address("http")
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(b"POST http://127.0.0.1:9/ HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        answer = recv_all(sock)  # closed after the 407: the body is never mistaken for a request
    assert answer.startswith(b"HTTP/1.1 407") and b"connection: close" in answer.lower()


def test_a_second_challenge_in_a_row_closes(proxy, echo_tcp):
    """A client that never brings credentials cannot hold a connection by asking again and
    again before --idle-timeout: the retry after a 407 must carry them, or it is closed."""
    running = proxy(http=["127.0.0.1:0"], user=["u:pw"])
    address = running.address("http")
    connect = b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % echo_tcp.port
    with socket.create_connection((address.host, address.port), timeout=10) as sock:
        sock.sendall(connect)
        assert b"connection: close" not in _head(sock).lower()
        sock.sendall(connect)
        answer = recv_all(sock)  # to EOF: closed after the second 407
    assert answer.startswith(b"HTTP/1.1 407") and b"connection: close" in answer.lower()
