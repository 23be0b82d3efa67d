"""``--forward ADDR=HOST:PORT``: a plain TCP forwarder (no handshake, no auth).

Every connection is dialed to the listener's fixed target and relayed byte
for byte with the shared relay (half-close, idle timeout).
"""

from __future__ import annotations

from gproxy.core.context import Context
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import run_tunnel


def serve_forward(conn: Conn, ctx: Context, session: Session) -> None:
    """Dial the target and relay; a failed dial just closes the client (nothing to answer)."""
    target = ctx.listener.target
    assert target is not None, "forward listeners always have a target"
    session.proto = "forward"
    session.cmd = "connect"
    session.dest = str(target)
    upstream = ctx.dialer.dial(target, ctx.config.connect_timeout)  # DialError: logged, client closed
    run_tunnel(conn, upstream, ctx, session)  # closes upstream
