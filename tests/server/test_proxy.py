"""The Proxy's listeners (gproxy/server/proxy.py)."""

from __future__ import annotations

import socket

import pytest

from gproxy.core.config import ListenerSpec
from gproxy.server.proxy import NODELAY_INHERITED, bind_listener


@pytest.mark.skipif(not NODELAY_INHERITED, reason="Linux hands the listener's TCP_NODELAY to accepted sockets")
def test_accepted_sockets_have_nodelay():
    listener = bind_listener(ListenerSpec("socks5", "127.0.0.1", 0))
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=5):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()
