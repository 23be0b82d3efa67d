"""The mixed front end: SOCKS4/4a, SOCKS5 and HTTP on one port.

The first byte decides (4 or 5: SOCKS, anything else: an HTTP method);
it is peeked, not consumed, so the chosen front end reads the whole request.
"""

from __future__ import annotations

from gproxy.core.context import Context
from gproxy.core.deadline import handshake_deadline
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.frontends.http import serve_http
from gproxy.frontends.socks5 import serve_socks


def serve_mixed(conn: Conn, ctx: Context, session: Session) -> None:
    """Hand the client to the front end its first byte names."""
    with handshake_deadline(ctx, session):
        first = conn.peek_byte()
    if first in (4, 5):
        serve_socks(conn, ctx, session)
    else:
        serve_http(conn, ctx, session)
