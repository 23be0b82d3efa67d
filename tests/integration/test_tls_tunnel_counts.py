"""A TLS tunnel ended from outside (admin DELETE, the end of a drain) keeps its byte counts."""

from __future__ import annotations

import socket
import ssl

import pytest

from tests.helpers import access_lines, logfmt_fields, make_cert, recv_exact, wait_for


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return make_cert(tmp_path_factory.mktemp("tls"))


def _tls_connect(running, port: int) -> ssl.SSLSocket:
    address = running.address("https")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(socket.create_connection((address.host, address.port), timeout=10))
    tls.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port)
    assert recv_exact(tls, 39).startswith(b"HTTP/1.1 200")
    return tls


@pytest.mark.parametrize("how", ["admin", "drain"])
def test_tls_tunnel_ended_from_outside_keeps_its_bytes(proxy, echo_tcp, cert, tmp_path, how):
    log = tmp_path / "access.log"
    running = proxy(https=["127.0.0.1:0"], cert=cert[0], key=cert[1], access_log=str(log))
    with _tls_connect(running, echo_tcp.port) as tls:
        tls.sendall(b"x" * 1000)
        assert recv_exact(tls, 1000) == b"x" * 1000
        (session_id,) = wait_for(lambda: [sid for sid, (s, _) in running.open.items() if s.live is not None])
        if how == "admin":
            assert running.end_session(session_id)
        else:
            running.stop(0)
        line = wait_for(lambda: access_lines(log), what="the tunnel's line")[0]
    fields = logfmt_fields(line)
    assert fields["outcome"] == ("admin_closed" if how == "admin" else "shutdown")
    assert (fields["up"], fields["down"]) == ("1000", "1000")
