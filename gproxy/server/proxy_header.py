"""Reading a PROXY protocol header off a load balancer's connection.

The header is consumed exactly, never a byte past its end: what follows may be
a TLS ClientHello that the front end reads from the raw socket. Bytes are
peeked, parsed, and taken from the socket only as far as the header goes.
"""

from __future__ import annotations

import socket

import gevent

from gproxy.codec.proxy_protocol import MAX_HEADER, parse_header
from gproxy.core.addr import Address
from gproxy.core.errors import ClientClosed, HandshakeTimeout


def read_proxy_header(sock: socket.socket, timeout: float) -> tuple[Address | None, Address | None]:
    """(source, destination) from the header; None for LOCAL/UNKNOWN (keep the peer's address).

    Raises ClientProtocolError (no or bad header), ClientClosed, HandshakeTimeout, OSError.
    """
    taken = bytearray()
    with gevent.Timeout(timeout, HandshakeTimeout("no PROXY protocol header in time")):
        while True:
            peeked = sock.recv(MAX_HEADER - len(taken), socket.MSG_PEEK)
            if not peeked:
                raise ClientClosed("closed before the PROXY protocol header")
            parsed = parse_header(taken + peeked)
            if parsed is not None:
                header, used = parsed
                _take(sock, used - len(taken))
                return header.source, header.destination
            # Incomplete (parse_header raises before MAX_HEADER bytes): all of it is
            # header, so take it and the next peek waits for more.
            _take(sock, len(peeked))
            taken += peeked


def _take(sock: socket.socket, n: int) -> None:
    """Consume ``n`` bytes already seen by a peek (so they are in the socket's buffer)."""
    while n > 0:
        data = sock.recv(n)
        if not data:
            raise ClientClosed("closed inside the PROXY protocol header")
        n -= len(data)
