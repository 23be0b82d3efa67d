"""A TLS client that closes without close_notify ends ``ok``, as on a plain listener."""

from __future__ import annotations

import contextlib
import socket
import ssl

import pytest

from tests.helpers import access_lines, make_cert, recv_exact, wait_for


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


def _lines(path):
    return [dict(p.split("=", 1) for p in line.split()) for line in access_lines(path)]


@contextlib.contextmanager
def tls_tunnel_to(port, running):
    """A TLS client with a CONNECT tunnel to 127.0.0.1:``port`` through the https listener;
    on exit its TCP ends under the TLS object: no close_notify is ever sent (no unwrap())."""
    address = running.address("https")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((address.host, address.port), timeout=10)
    tls = context.wrap_socket(raw, server_hostname="localhost")
    try:
        tls.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port)
        assert recv_exact(tls, 39).startswith(b"HTTP/1.1 200")
        yield tls
    finally:
        socket.socket(fileno=tls.detach()).close()
        raw.close()


@pytest.mark.parametrize("upload", [b"", b"x" * 5000])
def test_tls_client_closing_without_close_notify_ends_ok(proxy, echo_tcp, cert, tmp_path, upload):
    log = tmp_path / "access.log"
    running = proxy(https=["127.0.0.1:0"], cert=cert[0], key=cert[1], access_log=str(log))
    with tls_tunnel_to(echo_tcp.port, running) as tls:
        tls.sendall(b"ping" + upload)
        assert recv_exact(tls, 4 + len(upload)) == b"ping" + upload
    (entry,) = wait_for(lambda: _lines(log), what="the tunnel's line")
    assert (entry["outcome"], entry["up"], entry["down"]) == ("ok", str(4 + len(upload)), str(4 + len(upload)))


def test_tls_client_gone_while_data_flows_to_it_is_named_as_on_tcp(proxy, echo_tcp, cert, tmp_path):
    """Bytes still on their way to a TLS client that went without close_notify: the send
    fails with SSLEOFError, named as TCP names it (broken_pipe/reset), not ``error``."""
    log = tmp_path / "access.log"
    running = proxy(https=["127.0.0.1:0"], cert=cert[0], key=cert[1], access_log=str(log))
    with tls_tunnel_to(echo_tcp.port, running) as tls:
        tls.sendall(b"x" * 100_000)  # echoed back to a client that is gone
    (entry,) = wait_for(lambda: _lines(log), what="the tunnel's line")
    assert entry["outcome"] in ("ok", "broken_pipe", "reset")
