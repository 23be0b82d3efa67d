"""``--forward``: a plain TCP forwarder, in process and through the CLI."""

from __future__ import annotations

import os
import shutil
import socket

import gevent
import pytest
from gevent.pywsgi import WSGIServer

from gproxy import Config, Proxy
from tests.helpers import GproxyProcess, access_lines, curl, logfmt_fields, pump_echo, recv_all, recv_exact, wait_for

MB = 1 << 20


def forward_address(running) -> tuple[str, int]:
    address = running.address("forward")
    return address.host, address.port


def test_forward_relays_and_half_closes(proxy, echo_tcp, tmp_path):
    log = tmp_path / "access.log"
    running = proxy(forward=[f"127.0.0.1:0={echo_tcp.host}:{echo_tcp.port}"], access_log=str(log))
    client = socket.create_connection(forward_address(running), timeout=10)
    try:
        client.sendall(b"hello ")
        assert recv_exact(client, 6) == b"hello "
        client.sendall(b"world")
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"world"
    finally:
        client.close()
    (line,) = wait_for(lambda: access_lines(log), what="its line")
    fields = logfmt_fields(line)
    assert (fields["proto"], fields["cmd"], fields["up"], fields["down"]) == ("forward", "connect", "11", "11")


def test_forward_many_concurrent_connections(proxy, echo_tcp):
    running = proxy(forward=[f"127.0.0.1:0={echo_tcp.host}:{echo_tcp.port}"])
    address = forward_address(running)

    def one(i: int) -> bool:
        payload = os.urandom(32 * 1024 + i)
        with socket.create_connection(address, timeout=20) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            return recv_all(sock) == payload

    jobs = [gevent.spawn(one, i) for i in range(60)]
    gevent.joinall(jobs, timeout=60, raise_error=True)
    assert [job.value for job in jobs] == [True] * 60
    assert echo_tcp.connections == 60


def test_forward_to_a_dead_target_closes_the_client(proxy, closed_port):
    running = proxy(forward=[f"127.0.0.1:0=127.0.0.1:{closed_port}"])
    client = socket.create_connection(forward_address(running), timeout=10)
    try:
        assert client.recv(10) == b""
    finally:
        client.close()


def test_forward_may_not_target_gproxy_itself(proxy, closed_port):
    # The forwarder's target is gproxy's own SOCKS port: a loop, refused at dial time.
    running = proxy(socks=[f"127.0.0.1:{closed_port}"], forward=[f"127.0.0.1:0=127.0.0.1:{closed_port}"])
    client = socket.create_connection(forward_address(running), timeout=10)
    try:
        client.sendall(b"\x05\x01\x00")
        assert client.recv(10) == b""  # never reached the SOCKS listener
    finally:
        client.close()


def test_forward_100mb_both_ways_through_the_cli(echo_tcp):
    with GproxyProcess("--forward", f"127.0.0.1:0={echo_tcp.host}:{echo_tcp.port}") as gproxy:
        client = socket.create_connection(("127.0.0.1", gproxy.port("forward")), timeout=60)
        with client:
            pump_echo(client, 100 * MB)
        assert gproxy.stop() == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_through_the_forwarder(proxy):
    """As the seed drives it: curl to the forwarder port reaches the web server behind it."""

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"behind the forwarder " + environ["PATH_INFO"].encode()]

    web = WSGIServer(("127.0.0.1", 0), app, log=None)
    web.start()
    try:
        running = proxy(forward=[f"127.0.0.1:0=127.0.0.1:{web.server_port}"])
        host, port = forward_address(running)
        result = curl(f"http://{host}:{port}/hello")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"behind the forwarder /hello"
    finally:
        web.stop(timeout=1)


def test_forwarders_are_not_proxies():
    """No auth needed on any address, and the target may be loopback (it is the operator's)."""
    config = Config.build(forward=["0.0.0.0:0=127.0.0.1:80"], udp_forward=["0.0.0.0:0=127.0.0.1:53"])
    proxy = Proxy(config)
    for spec in config.listeners:
        assert proxy.context(spec, own=[]).destinations.deny_local is False
    socks = Config.build(socks=["0.0.0.0:0"], allow=["127.0.0.0/8"])
    assert Proxy(socks).context(socks.listeners[0], own=[]).destinations.deny_local is True
