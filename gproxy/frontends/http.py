"""The HTTP/1.1 proxy front end: CONNECT tunnels and absolute-URI forwarding.

Each request and response head is read whole and checked by ``codec.http``
(bounded, strict); bodies are framed by Content-Length or chunked coding and
streamed piece by piece, never buffered whole. The client connection is kept
alive across requests to different origins; origin connections are reused from
a pool (core.origin_pool) only for requests that may be sent twice. Works on any
socket-like object, TLS included.
"""

from __future__ import annotations

import contextlib
import enum
import socket
from typing import Any

import gevent
from gevent.hub import get_hub, getcurrent

from gproxy.codec import http
from gproxy.codec.http import HttpError
from gproxy.codec.replies import ReplyCode
from gproxy.core._gevent import PLAIN, is_plain, raw_socket
from gproxy.core.access import UserLimit
from gproxy.core.addr import Address
from gproxy.core.context import Context
from gproxy.core.deadline import handshake_deadline
from gproxy.core.errors import AuthFailed, ClientClosed, Denied, DialError, GproxyError, Outcome
from gproxy.core.limits import TokenBucket
from gproxy.core.origin_pool import OriginConn
from gproxy.core.readable import ReadWaiter
from gproxy.core.relay import Limits
from gproxy.core.session import Session
from gproxy.core.stream import Conn
from gproxy.core.tunnel import open_upstream, rate_limits, run_tunnel
from gproxy.core.upstream_group import dialled_via

CHUNK = 65536
#: one read of a kept-alive client's next request (what Conn reads for a head)
_CLIENT_READ = 4096
#: backstop for Conn.read_message; the head parser raises 414/431 well before it
_HEAD_LIMIT = http.MAX_HEAD + http.MAX_REQUEST_LINE + 2
_CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_AUTHENTICATE = [(b"Proxy-Authenticate", b'Basic realm="gproxy"')]


class IdleTimeout(GproxyError):
    """No bytes moved for --idle-timeout while forwarding or between requests."""

    reason = Outcome.IDLE_TIMEOUT

    def __init__(self, message: str = "no bytes moved for --idle-timeout") -> None:
        super().__init__(message)


class OriginError(GproxyError):
    """The origin failed; ``status`` is what the client is told (502 or 504)."""

    def __init__(self, message: str, status: int = 502, *, reason: Outcome = Outcome.ORIGIN_ERROR) -> None:
        super().__init__(message, reason=reason)
        self.status = status


def serve_http(conn: Conn, ctx: Context, session: Session) -> None:
    """Serve one client: requests one after another until either side closes."""
    session.proto = "https" if ctx.listener.kind == "https" else "http"
    first = True
    challenged = False  # the last request was answered 407: the next must bring credentials
    clock = _Clock(conn)
    try:
        while True:
            try:
                after = _serve_request(conn, ctx, session, first, clock, challenged)
                if after is _After.CLOSE:
                    return
                challenged = after is _After.CHALLENGED
            except (HttpError, OriginError) as exc:
                if session.status is None:  # not after the origin's own status went out
                    session.status = exc.status
                raise
            first = False
            if ctx.owner is not None:  # each request gets its own access-log line
                ctx.owner.log_request(session)
                session.request_logged()
    finally:
        clock.close()


class _Clock:
    """The idle timer of one client connection: one repeating libev timer, armed around
    each wait (for the client's next request, for the origin) and stopped after it,
    throwing the wait's own exception into the session's greenlet. What a gevent.Timeout
    per wait does, without making a timer for each.

    client_reader() waits on the client's kernel socket through a ReadWaiter made once
    for the connection (its watcher stays started: no epoll_ctl per request), where
    gevent's recv() first fails with EAGAIN (an exception) and then waits: a kept-alive
    client's next request is never there at once."""

    __slots__ = ("seconds", "client_raw", "_repeating", "_throw", "_hub", "_client_reader")

    def __init__(self, conn: Conn) -> None:
        self.seconds: float = 0
        #: the client's kernel socket (None for TLS), for sends and waits that skip gevent's wrappers
        self.client_raw = raw_socket(conn.sock) if is_plain(conn.sock) else None
        self._repeating: Any = None  # made on the first set(): a CONNECT never needs it
        self._throw: Any = None
        self._hub: Any = get_hub()
        self._client_reader: ReadWaiter | None = None

    def client_reader(self, raw: socket.socket) -> ReadWaiter:
        """The client socket's ReadWaiter, made once (closed with the clock)."""
        if self._client_reader is None:
            self._client_reader = ReadWaiter(raw.fileno())
        return self._client_reader

    def set(self, seconds: float | None) -> None:
        """--idle-timeout as it is now (a SIGHUP may change it between requests); 0: none."""
        if (seconds or 0) != self.seconds:
            self.close()
            self.seconds = seconds or 0
            if seconds:
                self._repeating = self._hub.loop.timer(seconds, seconds)
                self._throw = getcurrent().throw

    def arm(self, exc: type[BaseException]) -> None:
        """Throw ``exc`` after ``seconds`` unless disarmed first (the full period, each time)."""
        if self._repeating is not None:
            self._repeating.again(self._throw, exc)

    def disarm(self) -> None:
        if self._repeating is not None:
            self._repeating.stop()

    def close(self) -> None:
        if self._repeating is not None:
            self._repeating.close()
            self._repeating = None
        if self._client_reader is not None:
            self._client_reader.close()
            self._client_reader = None


class _After(enum.Enum):
    """What a client connection does after one request."""

    CLOSE = "close"
    NEXT = "next"  # served: the next request may follow
    CHALLENGED = "challenged"  # answered 407: the retry, with credentials, may follow


def _serve_request(conn: Conn, ctx: Context, session: Session, first: bool, clock: _Clock, challenged: bool) -> _After:
    """Read and serve one request (``challenged``: the one before it was answered 407)."""
    head = _read_head(conn, ctx, session, first, clock)
    if head is None:
        return _After.CLOSE
    if ctx.owner is not None:  # checked against the users and rules of this moment (SIGHUP)
        ctx = ctx.owner.latest(ctx)
    try:
        request = http.parse_request(head)
    except HttpError as exc:
        raise _fail(conn, exc) from None
    session.cmd = request.method.decode("ascii", "replace").lower()
    refused = _authorize(conn, ctx, session, request, challenged)
    if refused is not None:  # challenged: 407, and whether the retry may come on this connection
        return refused
    if request.method == b"CONNECT":
        _connect(conn, ctx, session, request)
        return _After.CLOSE
    return _After.NEXT if _forward(conn, ctx, session, request, clock) else _After.CLOSE


def _read_head(conn: Conn, ctx: Context, session: Session, first: bool, clock: _Clock) -> bytes | None:
    """The next request head; None when a kept-alive client is done or idle.

    The first request's clock started at accept; the next ones' on a kept-alive
    connection start at their first byte. A head that came whole in the first read
    (the usual case) needs no deadline.
    """
    if not first:
        clock.set(ctx.config.idle_timeout)
        if not conn.buf and not _next_request_bytes(conn, ctx, clock):
            return None
        session.next_request()  # its line is due, even if it fails
    buf = conn.buf
    end = http.plain_head_end(buf) if buf else None
    if end is not None:
        head = bytes(buf[:end])
        del buf[:end]
        return head
    try:
        with handshake_deadline(ctx, session if first else None):
            return conn.read_message(http.HeadParser(), _HEAD_LIMIT)
    except HttpError as exc:
        raise _fail(conn, exc) from None


def _next_request_bytes(conn: Conn, ctx: Context, clock: _Clock) -> bool:
    """_next_bytes(), unless the server drains: an idle kept-alive connection is closed
    then (at once, or when the drain starts during the wait), not held to its end."""
    owner = ctx.owner
    if owner is None:
        return _next_bytes(conn, clock)
    if owner.draining:
        return False
    waiting, me = owner.between_requests, getcurrent()
    waiting.add(me)  # stop() throws ClientClosed into the wait, which _next_bytes takes as a close
    try:
        return _next_bytes(conn, clock)
    finally:
        waiting.discard(me)


def _stopping(ctx: Context) -> bool:
    """A stop has begun: the client connection is not kept for another request."""
    return ctx.owner is not None and ctx.owner.draining


def _next_bytes(conn: Conn, clock: _Clock) -> bool:
    """Wait for the kept-alive client's next bytes: False when it closed or stayed idle
    for the clock's period."""
    raw = clock.client_raw
    clock.arm(IdleTimeout)
    try:
        if raw is None:  # TLS: its own buffering
            conn.peek_byte()
            return True
        reader = clock.client_reader(raw)
        while True:
            reader.wait()  # the armed clock may throw
            try:
                data = raw.recv(_CLIENT_READ)
            except BlockingIOError:
                continue
            if not data:
                return False
            conn.buf += data
            return True
    except (ClientClosed, IdleTimeout):
        return False
    finally:
        clock.disarm()


def _answer(conn: Conn, status: int, message: str, headers: http.Headers = (), *, close: bool = True) -> None:
    """A short response of the proxy's own; a client already gone is no further error."""
    with contextlib.suppress(OSError):
        conn.sendall(http.encode_response(status, message, headers, close=close))


def _fail(conn: Conn, exc: HttpError | OriginError) -> GproxyError:
    """Send the error response for ``exc`` and hand it back for raising."""
    _answer(conn, exc.status, str(exc))
    return exc


def _authorize(
    conn: Conn, ctx: Context, session: Session, request: http.RequestHead, challenged: bool
) -> _After | None:
    """With users configured, a valid ``Proxy-Authorization: Basic`` (None: go on); AuthFailed
    (407) for wrong or malformed ones. None given: a 407 challenge (not a failure), which
    leaves the connection open for the retry (CHALLENGED) when no body follows and the
    request before was not challenged too: a client without credentials cannot hold a
    connection by asking again and again (CLOSE)."""
    if not ctx.users:
        return None
    given = request.authorization
    if given is None:
        session.status = 407
        ctx.metrics.auth_challenged(session.proto)
        keep = not challenged and _may_retry(request)
        _answer(conn, 407, "proxy authentication required", _AUTHENTICATE, close=not keep)
        return _After.CHALLENGED if keep else _After.CLOSE
    credentials = http.basic_credentials(given)
    name = None if credentials is None else credentials[0].decode("utf-8", "replace")
    try:
        if credentials is None or not ctx.users.check(
            *credentials, client=str(session.client), listener=session.listener
        ):
            raise AuthFailed("missing or wrong Proxy-Authorization")
    except AuthFailed:  # or AuthUnavailable: the --auth-url service gave no answer
        session.user_tried = name
        session.status = 407
        _answer(conn, 407, "proxy authentication required", _AUTHENTICATE)
        raise
    session.user = name
    try:
        ctx.users.admit(session)  # counted against the user's max-conns from here on
    except UserLimit:
        session.status = 429
        _answer(conn, 429, "too many open connections for this user")
        raise
    return None


def _may_retry(request: http.RequestHead) -> bool:
    """Whether the connection can carry the next request after a challenge: the client
    keeps it alive and no body is left unread in between."""
    return request.keep_alive and not request.chunked and request.length == 0


def _dial(conn: Conn, ctx: Context, dest: Address, session: Session) -> socket.socket:
    """open_upstream, answering 403/502/504 when it fails."""
    try:
        return open_upstream(ctx, dest, session.user)
    except Denied as exc:
        session.status = 403
        _answer(conn, 403, "destination not allowed")
        raise exc from None
    except DialError as exc:
        status = session.status = 504 if exc.reply == ReplyCode.TTL_EXPIRED else 502
        _answer(conn, status, f"cannot connect to {dest}")
        raise exc from None


def _connect(conn: Conn, ctx: Context, session: Session, request: http.RequestHead) -> None:
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
#
# Heads are parsed once by codec.http (parse_request/parse_response, strict) and
# bodies framed here: Content-Length bytes are passed as they come, chunked
# bodies decoded and encoded again, so each side gets framing it can read.
# Origin connections are kept in ctx.origin_pool between requests.

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _OriginIdle(Exception):  # noqa: N818 (never leaves this module: turned into OriginError)
    """Thrown by an origin-side idle timer into the greenlet waiting on the origin."""


def _origin_conn(upstream: socket.socket, via: str | None) -> OriginConn:
    """A new origin connection; a plain one gets the ReadWaiter it keeps for life."""
    reader = ReadWaiter(upstream.fileno()) if type(upstream) is PLAIN else None
    return OriginConn(upstream, via, reader)


class _Exchange:
    """One request's origin side: its connection (and the kernel socket under it, None
    for TLS), whether it came from the pool, the response bytes read so far, and the
    (upload, download) buckets that hold it to its owner's rate (--rate)."""

    __slots__ = ("origin", "upstream", "raw", "pooled", "clock", "buf", "limits")

    def __init__(self, origin: OriginConn, pooled: bool, clock: _Clock) -> None:
        self.origin, self.upstream, self.pooled, self.clock = origin, origin.sock, pooled, clock
        #: the kernel socket, read directly with the connection's ReadWaiter (None: TLS)
        self.raw = raw_socket(origin.sock) if origin.reader is not None else None
        self.buf = bytearray()
        self.limits: Limits = None

    def recv(self, *, waiting: bool = False) -> bytes:
        """The origin's next bytes (b"": it closed). ``waiting``: none can be there yet
        (the request just went out), so wait first instead of a recv() that fails with
        EAGAIN. A plain connection is read on its kernel socket and awaited on its
        ReadWaiter (started once for the connection's life: no epoll_ctl per request);
        TLS through its own recv."""
        self.clock.arm(_OriginIdle)
        try:
            raw, reader = self.raw, self.origin.reader
            if raw is None or reader is None:
                return self.upstream.recv(CHUNK)
            if waiting:
                reader.wait()
            while True:
                try:
                    return raw.recv(CHUNK)
                except BlockingIOError:
                    reader.wait()
        except (_OriginIdle, TimeoutError):
            raise OriginError("origin sent nothing for the idle timeout", 504, reason=Outcome.ORIGIN_TIMEOUT) from None
        except OSError as exc:
            raise OriginError(f"origin: {exc}") from None
        finally:
            self.clock.disarm()

    def send(self, data: bytes) -> None:
        """All of ``data`` to the origin: what the kernel takes at once in one direct
        send(), the rest through gevent (which waits, under the idle timeout)."""
        try:
            rest = data if self.raw is None else _send_now(self.raw, data)
            if rest:
                self.clock.arm(_OriginIdle)
                try:
                    self.upstream.sendall(rest)
                finally:
                    self.clock.disarm()
        except (_OriginIdle, TimeoutError):
            raise OriginError("origin stopped reading", 504, reason=Outcome.ORIGIN_TIMEOUT) from None
        except OSError as exc:
            raise OriginError(f"origin: {exc}") from None
        if self.limits is not None:
            _pace(self.limits[0], len(data))

    def to_client(self, conn: Conn, data: bytes) -> None:
        """``data`` to the client, held to the download rate: one direct send() when the
        kernel takes it all (the usual case), else through gevent under the idle timeout."""
        raw = self.clock.client_raw
        rest = _send_now(raw, data) if raw is not None and data else data
        if rest:
            _to_client(conn, rest, self.clock)
        if self.limits is not None:
            _pace(self.limits[1], len(data))


def _send_now(raw: socket.socket, data: bytes) -> bytes:
    """What of ``data`` the kernel socket ``raw`` did not take in one send() that does not wait."""
    try:
        sent = raw.send(data)
    except BlockingIOError:
        return data
    return data[sent:] if sent < len(data) else b""


def _pace(bucket: TokenBucket, n: int) -> None:
    """Spend ``n`` bytes just moved, then wait out any debt: a forwarded request's body
    moves at its owner's rate, like a tunnel's (the bucket is shared with them)."""
    bucket.spend(n)
    delay = bucket.delay(1)
    if delay > 0:
        gevent.sleep(delay)


class _Stale(OriginError):
    """A kept-alive origin connection failed before any byte of the response."""


class _Unsent(OriginError):
    """The origin's response failed before any byte of it went to the client, who can
    still be answered (502)."""


def _forward(conn: Conn, ctx: Context, session: Session, request: http.RequestHead, clock: _Clock) -> bool:
    """Forward one absolute-URI request; True if the client connection stays open."""
    try:
        target = http.split_absolute_uri(request.target)
    except HttpError as exc:
        raise _fail(conn, exc) from None
    session.dest = target.dest
    clock.set(ctx.config.idle_timeout)
    if request.method in http.MAX_FORWARDS_METHODS and not http.count_down_max_forwards(request):
        return _answer_as_final_recipient(conn, ctx, session, request, target, clock)
    out_head = http.encode_request_head(request, target)
    pool = ctx.origin_pool
    key = (ctx.dialer, session.user, target.address.host, target.address.port)
    # Only a request that can be sent again rides a kept-alive connection: the origin
    # may have closed it just now, and then the request is retried once on a new one.
    reuse = pool is not None and request.method in http.IDEMPOTENT and not (request.chunked or request.length)
    limits = rate_limits(ctx, session)  # this request's user (or client IP): its tunnels' buckets
    while True:
        pooled = pool.get(key) if reuse and pool is not None else None
        exchange = _origin_for(conn, ctx, session, target, pooled, clock)
        exchange.limits = limits
        try:
            body_read = _send_request(conn, exchange, request, out_head, session)
            response = _response_head(conn, exchange, request)
        except _Stale:
            exchange.origin.close()
            reuse = False  # once, on a new connection
            continue
        except OriginError as exc:
            exchange.origin.close()
            raise _fail(conn, exc) from None
        except BaseException:
            exchange.origin.close()
            raise
        break
    session.status = response.status
    try:
        # a stop has begun: this response says Connection: close, so the client sends nothing more
        may_keep = body_read and not _stopping(ctx)
        keep_origin, keep_client = _send_response(conn, exchange, request, response, session, may_keep)
    except _Unsent as exc:
        exchange.origin.close()
        session.status = exc.status  # what the client got instead of the origin's status
        raise _fail(conn, exc) from None
    except BaseException:
        exchange.origin.close()
        raise
    if keep_origin and pool is not None:
        pool.put(key, exchange.origin)
    else:
        exchange.origin.close()
    if not body_read:  # answered before its body was read
        conn.close_politely()
    return keep_client


def _answer_as_final_recipient(
    conn: Conn, ctx: Context, session: Session, request: http.RequestHead, target: http.Target, clock: _Clock
) -> bool:
    """A TRACE or OPTIONS with Max-Forwards: 0 is answered here, not forwarded (RFC 9110
    7.6.2); True if the client connection stays open (never with a body left unread)."""
    unread = request.chunked or request.length
    keep = request.keep_alive and not unread and not _stopping(ctx)
    session.status = 200
    forwarded = http.encode_request_head(request, target)
    _to_client(conn, http.encode_final_answer(request, forwarded, close=not keep), clock)
    if unread:
        conn.close_politely()
    return keep


def _origin_for(
    conn: Conn,
    ctx: Context,
    session: Session,
    target: http.Target,
    pooled: OriginConn | None,
    clock: _Clock,
) -> _Exchange:
    """A kept-alive connection (the rules checked again) or a new one."""
    if pooled is not None:
        try:
            ctx.destinations.for_user(session.user).check(target.address)
        except Denied:
            pooled.close()
        else:
            dialled_via.set(pooled.via)
            return _Exchange(pooled, True, clock)
    upstream = _dial(conn, ctx, target.address, session)
    upstream.settimeout(None)  # the clock bounds each wait (--idle-timeout)
    try:
        origin = _origin_conn(upstream, dialled_via.get())
    except BaseException:
        upstream.close()
        raise
    return _Exchange(origin, False, clock)


def _send_request(
    conn: Conn,
    exchange: _Exchange,
    request: http.RequestHead,
    out_head: bytes,
    session: Session,
) -> bool:
    """Send the head and body to the origin; False if the origin stopped taking the body."""
    if not (request.chunked or request.length):
        try:
            exchange.send(out_head)
        except OriginError as exc:
            if exchange.pooled and exc.status == 502:
                raise _Stale(str(exc)) from None
            raise
        return True
    exchange.send(out_head)
    if request.expect_continue:
        _to_client(conn, _CONTINUE, exchange.clock)
    try:
        _send_body(conn, exchange, request, session)
    except OriginError as exc:
        # The origin may have answered early (413, 401) and closed: that answer
        # is still worth reading, unless the origin simply stopped reading.
        if exc.status == 504:
            raise
        return False
    return True


def _send_body(conn: Conn, exchange: _Exchange, request: http.RequestHead, session: Session) -> None:
    """Stream the client's request body to the origin, chunk by chunk."""
    if not request.chunked:
        left = request.length
        while left:
            data = bytes(conn.buf[:left])
            del conn.buf[: len(data)]
            if not data:
                data = _from_client(conn, min(left, CHUNK), exchange.clock)
            left -= len(data)
            session.up += len(data)
            exchange.send(data)
        return
    decoder = http.ChunkedDecoder()
    data = conn.take_buffered()
    while True:
        try:
            pieces = decoder.feed(data)
        except HttpError as exc:
            raise _fail(conn, exc) from None
        out = b"".join(http.encode_chunk(piece) for piece in pieces)
        session.up += sum(map(len, pieces))
        if decoder.done:
            conn.buf[:0] = decoder.rest  # a pipelined next request
            exchange.send(out + http.LAST_CHUNK)
            return
        if out:
            exchange.send(out)
        data = _from_client(conn, CHUNK, exchange.clock)


def _from_client(conn: Conn, size: int, clock: _Clock) -> bytes:
    """The client's next bytes of its request body, within the idle timeout."""
    clock.arm(IdleTimeout)
    try:
        data = conn.sock.recv(size)
    finally:
        clock.disarm()
    if not data:
        raise ClientClosed("client closed in the middle of its request body")
    return data


def _response_head(conn: Conn, exchange: _Exchange, request: http.RequestHead) -> http.ResponseHead:
    """The origin's final response head; the bytes after it stay in ``exchange.buf``.
    Interim 1xx responses go to an HTTP/1.1 client as they come (RFC 9110 15.2: 102, 103
    Early Hints, ...), except 100, which the proxy answers itself (Expect is not passed
    on); an HTTP/1.0 client is never sent one."""
    buf = exchange.buf
    while True:
        end = http.response_head_end(buf) if buf else None
        if end is None:
            if len(buf) > http.MAX_HEAD:
                raise OriginError("origin sent a response head larger than 64 KiB")
            try:
                data = exchange.recv(waiting=not buf)
            except OriginError as exc:
                if exchange.pooled and not buf and exc.status == 502:
                    raise _Stale(str(exc)) from None
                raise
            if not data:
                if exchange.pooled and not buf:
                    raise _Stale("kept-alive origin connection closed")
                raise OriginError("origin closed before a whole response head")
            buf += data
            continue
        try:
            response = http.parse_response(bytes(buf[:end]))
        except HttpError as exc:
            raise OriginError(str(exc)) from None
        del buf[:end]
        if response.status >= 200:
            return response
        if response.status == 101:
            raise OriginError("origin switched protocols, which is not forwarded")
        if response.status != 100 and request.version == b"1.1":
            exchange.to_client(conn, http.encode_response_head(response))


def _send_response(
    conn: Conn,
    exchange: _Exchange,
    request: http.RequestHead,
    response: http.ResponseHead,
    session: Session,
    may_keep: bool,
) -> tuple[bool, bool]:
    """Send the response head and body; (origin connection reusable, client connection kept).
    ``may_keep``: the client connection may stay open (its request body was read, no stop
    has begun); else the response says Connection: close. _Unsent if the response fails
    before anything of it went to the client."""
    no_body = request.method == b"HEAD" or response.status in (204, 304)
    keep_client = request.keep_alive and may_keep
    chunk_out = False
    framing = b""
    if response.length is not None:
        framing = b"\r\nContent-Length: %d" % response.length
    elif not no_body:
        if request.version == b"1.1":
            framing = b"\r\nTransfer-Encoding: chunked"
            if response.codings:  # only chunked is decoded: the others stay, chunked over them
                framing = b"\r\nTransfer-Encoding: %b, chunked" % b", ".join(response.codings)
            chunk_out = True
        elif response.codings:  # an HTTP/1.0 client is never sent Transfer-Encoding (RFC 9112 6.1)
            named = b", ".join(response.codings).decode("ascii", "replace")
            raise _Unsent(f"origin's transfer coding ({named}) cannot be sent to an HTTP/1.0 client")
        else:
            keep_client = False  # delimited by our close
    if keep_client:
        if request.version == b"1.0":
            framing += b"\r\nConnection: keep-alive"
    else:
        framing += b"\r\nConnection: close"
    head = http.encode_response_head(response, framing)
    buf = exchange.buf
    if no_body:
        exchange.to_client(conn, head)
        return not (response.close or buf), keep_client
    if response.length is not None:
        left = response.length
        data = bytes(buf[:left])
        del buf[: len(data)]
        while True:
            left -= len(data)
            session.down += len(data)
            exchange.to_client(conn, head + data)
            head = b""
            if not left:
                return not (response.close or buf), keep_client
            data = exchange.recv()
            if not data:
                raise OriginError("origin closed in the middle of the response body")
            if len(data) > left:  # more than its Content-Length: kept in buf, so never pooled
                buf += data[left:]
                data = data[:left]
    if response.chunked:
        decoder = http.ChunkedDecoder()
        data = bytes(buf)
        buf.clear()
        while True:
            try:
                pieces = decoder.feed(data)
            except HttpError as exc:  # ``head`` still unsent: nothing reached the client yet
                raise (_Unsent if head else OriginError)(f"origin broke the chunked coding: {exc}") from None
            session.down += sum(map(len, pieces))
            out = b"".join(map(http.encode_chunk, pieces)) if chunk_out else b"".join(pieces)
            if decoder.done:
                exchange.to_client(conn, head + out + (http.LAST_CHUNK if chunk_out else b""))  # trailers dropped
                return not (response.close or decoder.rest), keep_client
            exchange.to_client(conn, head + out)
            head = b""
            data = exchange.recv()
            if not data:
                raise OriginError("origin closed in the middle of a chunked body")
    data = bytes(buf)  # delimited by the origin's close
    while True:
        session.down += len(data)
        out = http.encode_chunk(data) if chunk_out else data
        if not data:
            exchange.to_client(conn, head + (http.LAST_CHUNK if chunk_out else b""))
            return False, keep_client
        exchange.to_client(conn, head + out)
        head = b""
        data = exchange.recv()


def _to_client(conn: Conn, data: bytes, clock: _Clock) -> None:
    """``data`` to the client through gevent, under the idle timeout."""
    if data:
        clock.arm(IdleTimeout)
        try:
            conn.sock.sendall(data)
        finally:
            clock.disarm()
