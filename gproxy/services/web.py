"""The small HTTP servers for operators (``--metrics``, ``--admin``): gevent's pywsgi,
with a deadline on each request and the Proxy's client admission in front.
"""

from __future__ import annotations

import http.client
import socket
from typing import TYPE_CHECKING, Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer

from gproxy.core.log import logger

if TYPE_CHECKING:
    from gproxy.server.proxy import Proxy


class BoundedHandler(WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler, but each request (read to answered) within ``timeout``:
    a client that never finishes its request is dropped, not kept forever. A client's
    bad request is one debug line, never an error or a traceback: whoever may connect
    (before any token check) must not be able to fill the operator's log."""

    timeout = 10.0

    def handle_one_request(self) -> Any:
        with gevent.Timeout(self.timeout, False):
            return super().handle_one_request()
        return None  # timed out: pywsgi closes the connection

    def read_request(self, raw_requestline: str) -> Any:
        try:
            return super().read_request(raw_requestline)
        except http.client.HTTPException as exc:  # too many headers, a line too long: the client's
            raise ValueError(f"bad request head ({type(exc).__name__}: {str(exc)[:80]})") from None

    def log_error(self, msg: str, *args: object) -> None:
        text = msg % args if args else msg
        logger.debug("%s: %s", self.client_address, text[:200])

    def handle_error(self, kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        if isinstance(exc, gevent.Timeout):  # the request's own deadline, mid-body: just close
            logger.debug("%s: request not finished in %g s", self.client_address, self.timeout)
            self.close_connection = True
            return
        super().handle_error(kind, exc, tb)


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
