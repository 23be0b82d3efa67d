"""The HTTP/1.1 proxy front end: CONNECT tunnels and absolute-URI forwarding.

Each request head is read whole and checked by ``codec.http`` (bounded,
strict); h11 then does the message framing on both sides, so bodies are
streamed chunk by chunk and never buffered whole. The client connection is
kept alive across requests to different origins; each forwarded request gets
its own origin connection. Works on any socket-like object, TLS included.
"""

from __future__ import annotations

import contextlib
import socket

import gevent
import h11

from gproxy.codec import http
from gproxy.codec.http import HttpError
from gproxy.codec.replies import ReplyCode
from gproxy.core.access import UserLimit
from gproxy.core.addr import Address
from gproxy.core.context import Context
from gproxy.core.deadline import handshake_deadline
from gproxy.core.errors import AuthFailed, ClientClosed, Denied, DialError, GproxyError, Outcome
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import open_upstream, run_tunnel

CHUNK = 65536
#: backstop for Conn.read_message; the head parser raises 414/431 well before it
_HEAD_LIMIT = http.MAX_HEAD + http.MAX_REQUEST_LINE + 2
_CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_AUTHENTICATE = [(b"Proxy-Authenticate", b'Basic realm="gproxy"')]


class IdleTimeout(GproxyError):
    """No bytes moved for --idle-timeout while forwarding or between requests."""

    reason = Outcome.IDLE_TIMEOUT


class OriginError(GproxyError):
    """The origin failed; ``status`` is what the client is told (502 or 504)."""

    def __init__(self, message: str, status: int = 502, *, reason: Outcome = Outcome.ORIGIN_ERROR) -> None:
        super().__init__(message, reason=reason)
        self.status = status


def serve_http(conn: Conn, ctx: Context, session: Session) -> None:
    """Serve one client: requests one after another until either side closes."""
    session.proto = "https" if ctx.listener.kind == "https" else "http"
    first = True
    while True:
        try:
            if not _serve_request(conn, ctx, session, first):
                return
        except (HttpError, OriginError) as exc:
            if session.status is None:  # not after the origin's own status went out
                session.status = exc.status
            raise
        first = False
        if ctx.owner is not None:  # each request gets its own access-log line
            ctx.owner.log_request(session)
            session.request_logged()


def _serve_request(conn: Conn, ctx: Context, session: Session, first: bool) -> bool:
    """Read and serve one request; True if the client connection stays open for the next."""
    head = _read_head(conn, ctx, session, first)
    if head is None:
        return False
    if ctx.owner is not None:  # checked against the users and rules of this moment (SIGHUP)
        ctx = ctx.owner.latest(ctx)
    client = h11.Connection(h11.SERVER, max_incomplete_event_size=http.MAX_HEAD)
    client.receive_data(head)
    try:
        request = client.next_event()
    except h11.RemoteProtocolError as exc:
        raise _fail(conn, HttpError(exc.error_status_hint, str(exc))) from None
    if not isinstance(request, h11.Request):  # parse_head saw a whole head, so h11 does too
        raise _fail(conn, HttpError(400, "incomplete request head"))
    session.cmd = request.method.decode("ascii", "replace").lower()
    _authorize(conn, ctx, session, request)
    if request.method == b"CONNECT":
        _connect(conn, ctx, session, request)
        return False
    try:
        return _forward(conn, ctx, session, client, request)
    except h11.LocalProtocolError as exc:  # a state we cannot frame: give up on the connection
        raise GproxyError(f"cannot frame the message: {exc}", reason=Outcome.HTTP_ERROR) from None


def _read_head(conn: Conn, ctx: Context, session: Session, first: bool) -> bytes | None:
    """The next request head; None when a kept-alive client is done or idle.

    The first request's clock started at accept; the next ones' on a kept-alive
    connection start at their first byte.
    """
    if not first:
        try:
            with gevent.Timeout(ctx.config.idle_timeout or None, IdleTimeout):
                conn.peek_byte()
        except (ClientClosed, IdleTimeout):
            return None
        session.next_request()  # its line is due, even if it fails
    try:
        with handshake_deadline(ctx, session if first else None):
            return conn.read_message(http.HeadParser(), _HEAD_LIMIT)
    except HttpError as exc:
        raise _fail(conn, exc) from None


def _fail(conn: Conn, exc: HttpError | OriginError) -> GproxyError:
    """Send the error response for ``exc`` and hand it back for raising."""
    with contextlib.suppress(OSError):
        conn.sendall(http.encode_response(exc.status, str(exc)))
    return exc


def _authorize(conn: Conn, ctx: Context, session: Session, request: h11.Request) -> None:
    """With users configured, a valid ``Proxy-Authorization: Basic`` or 407."""
    if not ctx.users:
        return
    credentials = http.basic_credentials(http.header(request.headers, b"proxy-authorization"))
    if credentials is not None:
        session.user = credentials[0].decode("utf-8", "replace")
    try:
        if credentials is None or not ctx.users.check(
            *credentials, client=str(session.client), listener=session.listener
        ):
            raise AuthFailed("missing or wrong Proxy-Authorization")
    except AuthFailed:  # or AuthUnavailable: the --auth-url service gave no answer
        session.status = 407
        with contextlib.suppress(OSError):
            conn.sendall(http.encode_response(407, "proxy authentication required", _AUTHENTICATE))
        raise
    try:
        ctx.users.admit(session)  # counted against the user's max-conns from here on
    except UserLimit:
        session.status = 429
        with contextlib.suppress(OSError):
            conn.sendall(http.encode_response(429, "too many open connections for this user"))
        raise


def _dial(conn: Conn, ctx: Context, dest: Address, session: Session) -> socket.socket:
    """open_upstream, answering 403/502/504 when it fails."""
    try:
        return open_upstream(ctx, dest, session.user)
    except Denied as exc:
        session.status = 403
        with contextlib.suppress(OSError):
            conn.sendall(http.encode_response(403, "destination not allowed"))
        raise exc from None
    except DialError as exc:
        status = session.status = 504 if exc.reply == ReplyCode.TTL_EXPIRED else 502
        with contextlib.suppress(OSError):
            conn.sendall(http.encode_response(status, f"cannot connect to {dest}"))
        raise exc from None


def _connect(conn: Conn, ctx: Context, session: Session, request: h11.Request) -> None:
    """CONNECT host:port: 200, then relay (early bytes in ``conn`` go first)."""
    try:
        dest = http.parse_authority(request.target)
    except HttpError as exc:
        raise _fail(conn, exc) from None
    session.dest = str(dest)
    upstream = _dial(conn, ctx, dest, session)
    session.status = 200
    run_tunnel(conn, upstream, ctx, session, _CONNECTED)  # closes upstream


# -- forwarding ----------------------------------------------------------------------


def _forward(conn: Conn, ctx: Context, session: Session, client: h11.Connection, request: h11.Request) -> bool:
    """Forward one absolute-URI request; True if the client connection stays open."""
    try:
        target = http.split_absolute_uri(request.target)
    except HttpError as exc:
        raise _fail(conn, exc) from None
    session.dest = str(target.address)
    idle = ctx.config.idle_timeout or None
    early = conn.take_buffered()
    if early:  # (an empty receive_data means EOF to h11)
        client.receive_data(early)
    upstream = _dial(conn, ctx, target.address, session)
    try:
        upstream.settimeout(idle)
        origin = h11.Connection(h11.CLIENT, max_incomplete_event_size=http.MAX_HEAD)
        try:
            response = _send_request(conn, client, upstream, origin, request, target, session, idle)
        except OriginError as exc:
            raise _fail(conn, exc) from None
        session.status = response.status_code
        _stream_response(conn, client, upstream, origin, response, session, idle)
    finally:
        upstream.close()
    if client.our_state is h11.DONE and client.their_state is h11.DONE:
        conn.buf[:0] = client.trailing_data[0]  # a pipelined next request
        return True
    if client.their_state is h11.SEND_BODY:  # answered before its body was read
        conn.close_politely()
    return False


def _send_request(
    conn: Conn,
    client: h11.Connection,
    upstream: socket.socket,
    origin: h11.Connection,
    request: h11.Request,
    target: http.Target,
    session: Session,
    idle: float | None,
) -> h11.Response:
    """Send the request head and body to the origin; return its response head."""
    headers = _outbound(request, target)
    _to_origin(upstream, origin, h11.Request(method=request.method, target=target.path, headers=headers))
    if client.they_are_waiting_for_100_continue:
        _to_client(conn, client.send(h11.InformationalResponse(status_code=100, headers=[])), idle)
    try:
        _send_body(conn, client, upstream, origin, session, idle)
    except OriginError as exc:
        # The origin may have answered early (413, 401) and closed: that answer
        # is still worth reading, unless the origin simply stopped reading.
        if exc.status == 504:
            raise
    return _origin_response(upstream, origin)


def _stream_response(
    conn: Conn,
    client: h11.Connection,
    upstream: socket.socket,
    origin: h11.Connection,
    response: h11.Response,
    session: Session,
    idle: float | None,
) -> None:
    """Send the response head, then its body chunk by chunk as it arrives."""
    head = h11.Response(status_code=response.status_code, headers=_inbound(response), reason=response.reason)
    _to_client(conn, client.send(head), idle)
    while True:
        event = _origin_event(upstream, origin)
        if isinstance(event, h11.Data):
            session.down += len(event.data)
            _to_client(conn, client.send(h11.Data(data=event.data)), idle)
        elif isinstance(event, h11.EndOfMessage):
            _to_client(conn, client.send(h11.EndOfMessage()), idle)  # trailers are dropped
            return
        else:
            raise OriginError(f"origin sent {type(event).__name__} in the middle of a body")


def _outbound(request: h11.Request, target: http.Target) -> list[tuple[bytes, bytes]]:
    """Request headers for the origin: hop-by-hop gone, Host from the URI, framing kept."""
    headers = http.strip_hop_by_hop(request.headers.raw_items(), also=(b"host", b"content-length"))
    headers.insert(0, (b"Host", http.host_header(target)))
    length = http.header(request.headers, b"content-length")
    if http.header(request.headers, b"transfer-encoding") is not None:
        headers.append((b"Transfer-Encoding", b"chunked"))
    elif length is not None:
        headers.append((b"Content-Length", length))
    headers.append((b"Connection", b"close"))  # origin connections are not reused
    return headers


def _inbound(response: h11.Response) -> list[tuple[bytes, bytes]]:
    """Response headers for the client; h11 adds its own framing where needed."""
    headers = http.strip_hop_by_hop(response.headers.raw_items(), also=(b"content-length",))
    length = http.header(response.headers, b"content-length")
    if length is not None and http.header(response.headers, b"transfer-encoding") is None:
        headers.append((b"Content-Length", length))
    return headers


def _send_body(
    conn: Conn,
    client: h11.Connection,
    upstream: socket.socket,
    origin: h11.Connection,
    session: Session,
    idle: float | None,
) -> None:
    """Stream the client's request body to the origin, chunk by chunk."""
    while True:
        event = _client_event(conn, client, idle)
        if isinstance(event, h11.Data):
            session.up += len(event.data)
            _to_origin(upstream, origin, h11.Data(data=event.data))
        elif isinstance(event, h11.EndOfMessage):
            _to_origin(upstream, origin, h11.EndOfMessage())
            return
        else:
            raise _fail(conn, HttpError(400, f"unexpected {type(event).__name__}"))


def _client_event(conn: Conn, client: h11.Connection, idle: float | None) -> h11.Event:
    """The next body event from the client, reading as needed."""
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as exc:
            if client.their_state is h11.ERROR and _closed(client):
                raise ClientClosed("client closed in the middle of its request body") from None
            raise _fail(conn, HttpError(exc.error_status_hint, str(exc))) from None
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        with gevent.Timeout(idle, IdleTimeout("client sent nothing for the idle timeout")):
            client.receive_data(conn.sock.recv(CHUNK))


def _closed(connection: h11.Connection) -> bool:
    return bool(connection.trailing_data[1])


def _to_client(conn: Conn, data: bytes | None, idle: float | None) -> None:
    if data:
        with gevent.Timeout(idle, IdleTimeout("client read nothing for the idle timeout")):
            conn.sendall(data)


def _to_origin(upstream: socket.socket, origin: h11.Connection, event: h11.Event) -> None:
    data = origin.send(event)
    if not data:
        return
    try:
        upstream.sendall(data)
    except TimeoutError:
        raise OriginError("origin stopped reading", 504, reason=Outcome.ORIGIN_TIMEOUT) from None
    except OSError as exc:
        raise OriginError(f"origin: {exc}") from None


def _origin_event(upstream: socket.socket, origin: h11.Connection) -> h11.Event:
    """The next event from the origin; OriginError for anything wrong there."""
    while True:
        try:
            event = origin.next_event()
        except h11.RemoteProtocolError as exc:
            raise OriginError(f"origin broke HTTP: {exc}") from None
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        try:
            origin.receive_data(upstream.recv(CHUNK))
        except TimeoutError:
            raise OriginError("origin sent nothing for the idle timeout", 504, reason=Outcome.ORIGIN_TIMEOUT) from None
        except OSError as exc:
            raise OriginError(f"origin: {exc}") from None


def _origin_response(upstream: socket.socket, origin: h11.Connection) -> h11.Response:
    """The origin's final response head; 1xx are dropped (we answer 100 ourselves)."""
    while True:
        event = _origin_event(upstream, origin)
        if isinstance(event, h11.Response):
            return event
        if not isinstance(event, h11.InformationalResponse) or event.status_code == 101:
            raise OriginError(f"origin sent {type(event).__name__} instead of a response")
