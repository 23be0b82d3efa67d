"""The small HTTP servers for operators (``--metrics``, ``--admin``): gevent's pywsgi,
with a deadline on each request and the Proxy's client admission in front.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

if TYPE_CHECKING:
    from gproxy.server.proxy import Proxy


class BoundedHandler(WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler, but each request (read to answered) within ``timeout``:
    a client that never finishes its request is dropped, not kept forever."""

    timeout = 10.0

    def handle_one_request(self) -> Any:
        with gevent.Timeout(self.timeout, False):
            return super().handle_one_request()
        return None  # timed out: pywsgi closes the connection


def bounded_handler(timeout: float) -> type[BoundedHandler]:
    return type("Handler", (BoundedHandler,), {"timeout": timeout})


class GatedServer(WSGIServer):  # type: ignore[misc]
    """pywsgi's server, letting in only clients the Proxy admits (client rules, limits,
    PROXY header) as ``kind`` clients, outside --max-conns' total (monitoring works when full)."""

    proxy: Proxy | None = None
    kind = "metrics"

    def handle(self, sock: socket.socket, address: tuple[object, ...]) -> None:
        if self.proxy is None:
            super().handle(sock, address)
            return
        admitted = self.proxy.admit_client(sock, address, self.kind, in_total=False)
        if admitted is None:
            return  # closed by the server
        try:
            super().handle(sock, address)
        finally:
            self.proxy.release_client(admitted.counted)
