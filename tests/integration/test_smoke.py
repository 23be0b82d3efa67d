"""A first end-to-end check: PySocks through a SOCKS5 listener with auth."""

import socks

from tests.helpers import recv_exact


def test_socks5_connect_with_auth(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], user=["u:p"])
    address = running.address("socks5")
    client = socks.socksocket()
    client.set_proxy(socks.SOCKS5, address.host, address.port, username="u", password="p")
    client.connect((echo_tcp.host, echo_tcp.port))
    client.sendall(b"hello")
    assert recv_exact(client, 5) == b"hello"
    client.close()
