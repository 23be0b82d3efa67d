"""The SOCKS4/4a front end, reached from ``socks.serve_socks`` on first byte 4.

SOCKS4 carries no password, so it is refused (0x5B) when users are
configured. CONNECT dials, answers 0x5A with the bound address and relays.
BIND runs SOCKS5's BIND (``bind.py``) with SOCKS4 replies: only the
wiring is here.
"""

from __future__ import annotations

from collections.abc import Callable

from gproxy.codec import socks4
from gproxy.codec.replies import ReplyCode
from gproxy.codec.socks4 import Command, Reply
from gproxy.core.addr import Address, from_sockaddr
from gproxy.core.context import Context
from gproxy.core.deadline import handshake_deadline
from gproxy.core.errors import AuthFailed, ClientProtocolError, Denied, DialError, Outcome
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import open_upstream, run_tunnel
from gproxy.frontends.bind import bind

#: command -> handler(conn, ctx, session, request), run after the request is accepted
Socks4Handler = Callable[[Conn, Context, Session, socks4.Request], None]


def serve_socks4(conn: Conn, ctx: Context, session: Session) -> None:
    """Serve one SOCKS4/4a client: read the request, check, dispatch."""
    session.proto = "socks4"
    with handshake_deadline(ctx, session):
        try:
            request = conn.read_message(socks4.parse_request, socks4.MAX_REQUEST)
        except ClientProtocolError:
            reply(conn, Reply.REJECTED)
            raise
    if request.socks4a:
        session.proto = "socks4a"
    session.dest = str(request.address)
    handler = COMMANDS.get(request.command)
    session.cmd = _command_name(request.command)
    if ctx.users:
        reply(conn, Reply.REJECTED)
        raise AuthFailed("SOCKS4 has no password and users are configured", reason=Outcome.SOCKS4_NEEDS_AUTH)
    if handler is None:
        reply(conn, Reply.REJECTED)
        raise ClientProtocolError(f"SOCKS4 command {session.cmd} not supported", reason=Outcome.BAD_COMMAND)
    handler(conn, ctx, session, request)


def _command_name(command: int) -> str:
    try:
        return Command(command).name.lower()
    except ValueError:
        return f"{command:#04x}"


def reply(conn: Conn, code: Reply, address: Address | None = None) -> None:
    """Send the 8-byte reply."""
    conn.sendall(socks4.encode_reply(code, address))


def connect(conn: Conn, ctx: Context, session: Session, request: socks4.Request) -> None:
    """CONNECT: dial, answer 0x5A with the bound address, relay."""
    try:
        upstream = open_upstream(ctx, request.address)
    except (Denied, DialError):
        reply(conn, Reply.REJECTED)
        raise
    try:
        granted = socks4.encode_reply(Reply.GRANTED, from_sockaddr(upstream.getsockname()))
    except BaseException:
        upstream.close()
        raise
    run_tunnel(conn, upstream, ctx, session, granted)  # closes upstream


def bind4(conn: Conn, ctx: Context, session: Session, request: socks4.Request) -> None:
    """BIND: two 0x5A replies (listening address, then the peer's), or 0x5B."""
    bind(conn, ctx, session, request.address, encode=_socks4_reply)


def _socks4_reply(code: int, address: Address | None) -> bytes:
    """A SOCKS5 reply code as SOCKS4 says it: success 0x5A, anything else 0x5B."""
    return socks4.encode_reply(Reply.GRANTED if code == ReplyCode.SUCCEEDED else Reply.REJECTED, address)


COMMANDS: dict[int, Socks4Handler] = {Command.CONNECT: connect, Command.BIND: bind4}
