"""The SOCKS front end: SOCKS5 (RFC 1928/1929) here, SOCKS4/4a by first byte.

Straight-line handshake under --handshake-timeout; success is sent only once
the outbound connection is up, with its real local address.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.codec.socks5 import AuthMethod, Command
from gproxy.core.access import UserLimit
from gproxy.core.addr import Address, from_sockaddr
from gproxy.core.context import Context
from gproxy.core.deadline import handshake_deadline
from gproxy.core.errors import AuthFailed, ClientProtocolError, Denied, DialError, Outcome
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import open_upstream, run_tunnel
from gproxy.frontends.bind import bind
from gproxy.frontends.udp import udp_associate

#: command -> handler, run after the handshake with the request's address
CommandHandler = Callable[[Conn, Context, Session, Address], None]


def serve_socks(conn: Conn, ctx: Context, session: Session) -> None:
    """Serve one client of a SOCKS listener: version 5, or 4/4a.

    One deadline covers the SOCKS5 client's first byte, greeting and request.
    """
    with handshake_deadline(ctx, session):
        version = conn.peek_byte()
        request = _handshake5(conn, ctx, session) if version == socks5.VERSION else None
    if request is not None:
        _dispatch5(conn, ctx, session, request)
    elif version == 4:
        from gproxy.frontends.socks4 import serve_socks4  # noqa: PLC0415 (optional front end)

        serve_socks4(conn, ctx, session)
    else:
        raise ClientProtocolError(f"not a SOCKS request (first byte {version:#04x})", reason=Outcome.BAD_VERSION)


def _handshake5(conn: Conn, ctx: Context, session: Session) -> socks5.Request:
    """Method selection, auth and the request (the caller bounds it in time)."""
    session.proto = "socks5"
    _negotiate(conn, ctx, session)
    try:
        return conn.read_message(socks5.parse_request, 262)
    except ClientProtocolError as exc:
        conn.sendall(socks5.encode_reply(exc.reply))
        raise


def _dispatch5(conn: Conn, ctx: Context, session: Session, request: socks5.Request) -> None:
    session.dest = str(request.address)
    handler = COMMANDS.get(request.command)
    if handler is None:
        session.cmd = f"{request.command:#04x}"
        conn.sendall(socks5.encode_reply(ReplyCode.COMMAND_NOT_SUPPORTED))
        raise ClientProtocolError(f"command {request.command:#04x} not supported", reason=Outcome.BAD_COMMAND)
    session.cmd = _COMMAND_NAMES[request.command]
    try:
        ctx.users.admit(session)  # counted against the user's max-conns from here on
    except UserLimit:
        conn.sendall(socks5.encode_reply(ReplyCode.NOT_ALLOWED))
        raise
    handler(conn, ctx, session, request.address)


def _negotiate(conn: Conn, ctx: Context, session: Session) -> None:
    """Method selection and, with users configured, RFC 1929 auth."""
    try:
        greeting = conn.read_message(socks5.parse_greeting, 257)
    except ClientProtocolError:
        conn.sendall(socks5.encode_method_choice(AuthMethod.NO_ACCEPTABLE))
        raise
    wanted = AuthMethod.USERNAME_PASSWORD if ctx.users else AuthMethod.NO_AUTH
    if wanted not in greeting.methods:
        conn.sendall(socks5.encode_method_choice(AuthMethod.NO_ACCEPTABLE))
        raise AuthFailed("no acceptable authentication method", reason=Outcome.NO_ACCEPTABLE_METHOD)
    conn.sendall(socks5.encode_method_choice(wanted))
    if wanted == AuthMethod.USERNAME_PASSWORD:
        try:
            auth = conn.read_message(socks5.parse_auth, 513)
        except ClientProtocolError:  # a version other than 1: a failure status, as for a bad password
            conn.sendall(socks5.encode_auth_reply(False))
            raise
        name = auth.username.decode("utf-8", "replace")
        try:
            if not ctx.users.check(auth.username, auth.password, client=str(session.client), listener=session.listener):
                raise AuthFailed("bad user name or password")
        except AuthFailed:  # or AuthUnavailable: the --auth-url service gave no answer
            session.user_tried = name
            conn.sendall(socks5.encode_auth_reply(False))
            raise
        session.user = name
        conn.sendall(socks5.encode_auth_reply(True))


def connect(conn: Conn, ctx: Context, session: Session, dest: Address) -> None:
    """CONNECT: dial, answer with the bound address, relay."""
    try:
        upstream = open_upstream(ctx, dest, session.user)
    except (Denied, DialError) as exc:
        conn.sendall(socks5.encode_reply(exc.reply))
        raise
    try:
        reply = success_reply(upstream.getsockname())
    except BaseException:
        upstream.close()
        raise
    run_tunnel(conn, upstream, ctx, session, reply)  # closes upstream


def success_reply(sockname: tuple[object, ...]) -> bytes:
    """The 0x00 reply carrying the outbound connection's local address (IPv4 without ipaddress parsing)."""
    host, port = sockname[0], sockname[1]
    if isinstance(host, str) and ":" not in host and isinstance(port, int):
        return b"\x05\x00\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big")
    return socks5.encode_reply(ReplyCode.SUCCEEDED, from_sockaddr(sockname))


_COMMAND_NAMES = {command.value: command.name.lower().replace("_", "-") for command in Command}

COMMANDS: dict[int, CommandHandler] = {
    Command.CONNECT: connect,
    Command.BIND: bind,
    Command.UDP_ASSOCIATE: udp_associate,
}
