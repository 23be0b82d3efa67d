"""A first end-to-end check: PySocks through a SOCKS5 listener with auth."""

import socks

from tests.helpers import pysocks_echo


def test_socks5_connect_with_auth(proxy, echo_tcp):
    running = proxy(socks=["127.0.0.1:0"], user=["u:p"])
    address = running.address("socks5")
    pysocks_echo(
        socks.SOCKS5, (address.host, address.port), (echo_tcp.host, echo_tcp.port), b"hello", username="u", password="p"
    )
