"""HTTP/1.1 as a forwarding proxy needs it, sans I/O.

Bounded request-head reading, request and response heads parsed with strict
checks (request smuggling) in one pass, the absolute-URI and CONNECT authority
forms, hop-by-hop header stripping, chunked coding, Basic credentials and short
error responses. No socket or gevent imports here.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from gproxy.core.addr import Address, format_hostport, parse_ip
from gproxy.core.errors import ClientProtocolError, Outcome

#: request line cap (414 beyond it) and whole-head cap (431), as Squid's defaults go
MAX_REQUEST_LINE = 8192
MAX_HEAD = 65536
#: empty lines tolerated before a request line (RFC 9112 2.2 asks for at least one)
MAX_EMPTY_LINES = 4

#: hop-by-hop headers (RFC 9110 7.6.1, RFC 2616 13.5.1) plus the non-standard
#: Proxy-Connection; never forwarded. Expect is answered by the proxy itself.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"expect",
    }
)

REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    414: "URI Too Long",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}

Headers = Sequence[tuple[bytes, bytes]]

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: the most digits a Content-Length may have: 10^18 - 1 bytes, within a signed 64-bit
#: integer, so a C origin or client after us cannot wrap the number into another framing
MAX_LENGTH_DIGITS = 18
#: the bytes a token (a method, a header name) is made of
_TOKEN_BYTES = frozenset(byte for byte in range(256) if _TOKEN.fullmatch(bytes([byte])))
_HOSTNAME = re.compile(r"[A-Za-z0-9_.\-]+")


class HttpError(ClientProtocolError):
    """A request the proxy answers with ``status`` and closes."""

    def __init__(self, status: int, message: str, *, reason: Outcome = Outcome.BAD_REQUEST) -> None:
        super().__init__(message, reason=reason)
        self.status = status


@dataclass(slots=True)  # not frozen: a frozen dataclass pays object.__setattr__ per field, per request
class Target:
    """Where an absolute-URI request goes, and what to ask there."""

    address: Address
    path: bytes  # origin-form: "/path?query"
    dest: str  # str(address), for the log
    host: bytes  # the Host header's value: host[:port] as the client wrote it (a bare IPv6 literal bracketed)


# -- request head ---------------------------------------------------------------


class HeadParser:
    """Reads one request head from a buffer that only grows between calls.

    Each call scans only the bytes the previous calls had not seen (plus the
    2 before them, for a blank line split across reads), so a head trickled
    byte by byte costs linear, not quadratic, time. A fresh parser per head.
    """

    __slots__ = ("_seen", "_line_ended")

    def __init__(self) -> None:
        self._seen = 0
        self._line_ended = False

    def __call__(self, buf: bytearray) -> tuple[bytes, int] | None:
        """The raw request head (through its blank line); None until complete.

        Up to MAX_EMPTY_LINES leading empty lines are skipped (RFC 9112 2.2).
        Raises HttpError with 414, 431 or 400 (bounds only: parse_request checks the rest).
        """
        seen, self._seen = self._seen, len(buf)
        if not seen:  # the first look: a plain head that is all here needs no scan
            end = plain_head_end(buf)
            if end is not None:
                return bytes(buf[:end]), end
        start = _skip_empty_lines(buf)
        if start is None:
            return None
        if not self._line_ended:
            if start < len(buf) and buf[start] not in _TOKEN_BYTES:
                # a method is a token: a TLS ClientHello (0x16) or other binary gets its 400
                # now, not once --handshake-timeout has passed waiting for a line end
                raise HttpError(400, "not an HTTP request")
            line_cap = start + MAX_REQUEST_LINE + 1  # the request line's LF comes before this
            self._line_ended = buf.find(b"\n", max(start, seen), line_cap) >= 0
            if not self._line_ended and len(buf) >= line_cap:
                raise HttpError(414, "request line too long", reason=Outcome.URI_TOO_LONG)
        end = _blank_line_end(buf, max(start, seen - 2))
        if end is None or end - start > MAX_HEAD:
            if len(buf) - start > MAX_HEAD:
                raise HttpError(431, "request header fields too large", reason=Outcome.HEADERS_TOO_LARGE)
            return None
        return bytes(buf[start:end]), end


def plain_head_end(buf: bytearray) -> int | None:
    """Where the head at the very start of ``buf`` ends when it is plain: no empty line
    before it, CRLF line ends, within the bounds. None for anything else, which
    HeadParser then reads (a few C-level calls instead of its scan)."""
    end = buf.find(b"\r\n\r\n") + 4
    if end < 4 or end > MAX_HEAD or buf[0] in b"\r\n" or buf.find(b"\n", 0, MAX_REQUEST_LINE + 1) < 0:
        return None
    if buf.count(b"\n", 0, end) != buf.count(b"\r\n", 0, end):
        return None  # a bare LF: a blank line may come earlier
    return end


def parse_head(buf: bytearray) -> tuple[RequestHead, int] | None:
    """The request at the start of ``buf`` read and checked as the proxy does it (HeadParser,
    then parse_request): the parsed head and the bytes it took, or None until complete."""
    read = HeadParser()(buf)
    return None if read is None else (parse_request(read[0]), read[1])


def _skip_empty_lines(buf: bytearray) -> int | None:
    """Where the request line starts; None while only empty lines (or a CR) came."""
    start = 0
    for _ in range(MAX_EMPTY_LINES + 1):
        if buf.startswith(b"\r\n", start):
            start += 2
        elif buf.startswith(b"\n", start):
            start += 1
        elif len(buf) == start or buf.startswith(b"\r", start) and len(buf) == start + 1:
            return None
        else:
            return start
    raise HttpError(400, f"more than {MAX_EMPTY_LINES} empty lines before the request")


def _blank_line_end(buf: bytes | bytearray, start: int) -> int | None:
    """The end of the first ``LF [CR] LF`` at or after ``start``, or None."""
    ends = [at + len(blank) for blank in (b"\n\n", b"\n\r\n") if (at := buf.find(blank, start)) >= 0]
    return min(ends, default=None)


def _check_head(head: bytes) -> bool:
    """Strict checks on a raw head, where laxness lets requests be smuggled.

    One Content-Length at most; Transfer-Encoding as a token list whose only
    supported value is ``chunked``; never both (a Transfer-Encoding field of
    any value, even empty, counts); no whitespace before a colon and no
    obsolete line folding. Returns whether the body is chunked.
    """
    lines = [line.rstrip(b"\r") for line in head.split(b"\n")]
    content_lengths = 0
    transfer_encodings: list[bytes] = []
    for line in lines[1:]:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            raise HttpError(400, "obsolete header line folding")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            raise HttpError(400, "malformed header name (whitespace before the colon?)")
        lowered = name.lower()
        if lowered == b"content-length":
            content_lengths += 1
            digits = value.strip(b" \t")
            if not digits.isdigit():
                raise HttpError(400, "Content-Length is not a number")
            if len(digits) > MAX_LENGTH_DIGITS:
                raise HttpError(400, "Content-Length too large")
        elif lowered == b"transfer-encoding":
            transfer_encodings.append(value)
    if content_lengths > 1:
        raise HttpError(400, "more than one Content-Length")
    if not transfer_encodings:
        return False
    if content_lengths:
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    codings = _transfer_codings(b",".join(transfer_encodings))
    if not codings:  # "Transfer-Encoding:" or ", ": no framing named, none guessed
        raise HttpError(400, "Transfer-Encoding names no coding")
    if codings[-1] != b"chunked" or codings.count(b"chunked") > 1:
        raise HttpError(400, "Transfer-Encoding must end in chunked, once")
    if len(codings) > 1:
        raise HttpError(501, "only Transfer-Encoding: chunked is supported", reason=Outcome.NOT_IMPLEMENTED)
    return True


def _transfer_codings(value: bytes) -> tuple[bytes, ...]:
    """The codings a Transfer-Encoding value lists (all its fields joined by commas), lower
    case; empty list elements are dropped (RFC 9110 5.6.1), so ``b","`` lists none."""
    return tuple(coding for token in value.lower().split(b",") if (coding := token.strip(b" \t")))


# -- targets ----------------------------------------------------------------------


def _parse_hostport(text: str, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` or ``[ipv6][:port]`` (authority without userinfo)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        ip = parse_ip(host) if sep else None
        if ip is None or ip.version != 6:
            raise HttpError(400, "bad IPv6 literal in the request target")
        if rest and not rest.startswith(":"):
            raise HttpError(400, "bad request target")
        port_text = rest[1:] if rest else ""
    elif text.count(":") > 1:
        # An unbracketed IPv6 literal, as httpx and proxychains-ng send it:
        # the last colon separates the port when what precedes it is an address.
        host, _, port_text = text.rpartition(":")
        if not _is_ipv6(host):
            host, port_text = text, ""
            if not _is_ipv6(host):
                raise HttpError(400, "bad host in the request target")
    else:
        host, _, port_text = text.partition(":")
        if not host or not _HOSTNAME.fullmatch(host):
            raise HttpError(400, "bad host in the request target")
    if not port_text:
        if default_port is None or text.endswith(":"):
            raise HttpError(400, "the request target needs a port")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise HttpError(400, "bad port in the request target")
    return host, int(port_text)


def _is_ipv6(host: str) -> bool:
    ip = parse_ip(host)
    return ip is not None and ip.version == 6


def parse_authority(target: bytes) -> Address:
    """The CONNECT target: ``host:port`` or ``[ipv6]:port`` (port required)."""
    try:
        text = target.decode("ascii")
    except UnicodeDecodeError:
        raise HttpError(400, "request target is not ASCII") from None
    return _address(text, None)[0]


@functools.lru_cache(maxsize=1024)
def _address(authority: str, default_port: int | None) -> tuple[Address, str, bytes]:
    """The Address an authority names, the Address as text and the Host header's value
    (the authority, brackets added around a bare IPv6 literal).
    Cached: clients ask the same few origins again and again, and a failure (HttpError)
    is not kept."""
    host, port = _parse_hostport(authority, default_port)
    if ":" in host and not authority.startswith("["):
        authority = format_hostport(host, port)  # the Host header wants brackets
    address = Address(host, port)
    return address, str(address), authority.encode("ascii")


_AUTHORITY_END = re.compile(rb"[/?#]")


def split_absolute_uri(target: bytes) -> Target:
    """``http://host[:port]/path?query`` -> where to connect and the origin-form path.

    Only ``http`` is forwarded (https goes through CONNECT); userinfo is refused.
    """
    if not target.isascii():
        raise HttpError(400, "request target is not ASCII")
    scheme, sep, rest = target.partition(b"://")
    if not sep:
        raise HttpError(400, "a proxy request needs an absolute URI (http://host/path)")
    if scheme.lower() != b"http":
        raise HttpError(400, f"only http:// URIs are forwarded (use CONNECT for {scheme.decode()})")
    end = _AUTHORITY_END.search(rest)
    cut = len(rest) if end is None else end.start()
    authority, path = rest[:cut], rest[cut:]
    if b"@" in authority:
        raise HttpError(400, "userinfo in the request URI is not allowed")
    address, dest, host = _address(authority.decode(), 80)
    if b"#" in path:
        path = path.partition(b"#")[0]
    if not path.startswith(b"/"):
        path = b"/" + path
    return Target(address, path, dest, host)


# -- headers --------------------------------------------------------------------------


def connection_tokens(headers: Headers) -> set[bytes]:
    """The header names listed in every ``Connection`` header, lower case."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(token.strip(b" \t").lower() for token in value.split(b","))
    tokens.discard(b"")
    return tokens


def header(headers: Headers, wanted: bytes) -> bytes | None:
    """The first value of header ``wanted`` (lower-case name), or None."""
    for name, value in headers:
        if name.lower() == wanted:
            return value
    return None


def basic_credentials(value: bytes | None) -> tuple[bytes, bytes] | None:
    """``Basic base64(user:pass)`` -> (user, pass); None if absent or malformed."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


# -- responses --------------------------------------------------------------------------


def encode_response(status: int, message: str = "", headers: Headers = (), *, close: bool = True) -> bytes:
    """A short complete response (error or CONNECT's 200) with a text body."""
    reason = REASONS.get(status, "Error")
    body = f"{status} {reason}: {message}\n".encode() if message else b""
    lines = [f"HTTP/1.1 {status} {reason}".encode()]
    lines += [name + b": " + value for name, value in headers]
    if body or status >= 300:
        lines += [b"Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(body)}".encode()]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


# -- messages for forwarding (heads parsed once, bodies framed without h11) -------------------

_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/(1\.[01])")
_STATUS_LINE = re.compile(rb"HTTP/(1\.[01]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
#: control characters a head never holds (CR only before LF; HTAB is allowed in values)
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")
#: methods whose request may be sent again when a kept-alive origin connection fails first
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
#: what never goes to the origin from a request head (Host and framing are written afresh)
REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length"}
#: what never goes to the client from a response head (framing is written afresh)
RESPONSE_DROP = HOP_BY_HOP | {b"content-length"}
_NO_TOKENS: frozenset[bytes] = frozenset()
#: Connection tokens that name no header to drop besides the hop-by-hop ones
_PLAIN_TOKENS = frozenset({b"keep-alive", b"close"})
#: a plain response's header block after its status line: CRLF lines of a token, a colon
#: and a value without control characters (HTAB allowed), then the blank line
_PLAIN_BLOCK = re.compile(rb"(?:\r\n[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\x00-\x08\x0a-\x1f\x7f]*)*\r\n\r\n")
#: in a lower-cased plain request head: a line the origin does not get (REQUEST_DROP), with its value
_NOT_FORWARDED = re.compile(
    rb"\r\n(connection|proxy-connection|keep-alive|proxy-authenticate|proxy-authorization|te|trailer"
    rb"|transfer-encoding|upgrade|expect|host|content-length):([^\r]*)"
)
#: in a lower-cased plain head: a line the client does not get (RESPONSE_DROP), with its value
_NOT_PASSED = re.compile(
    rb"\r\n(connection|proxy-connection|keep-alive|proxy-authenticate|proxy-authorization|te|trailer"
    rb"|transfer-encoding|upgrade|expect|content-length):([^\r]*)"
)


@dataclass(slots=True)
class RequestHead:
    """A request head as the proxy needs it (checked as _check_head does)."""

    method: bytes
    target: bytes
    version: bytes  # b"1.0" or b"1.1"
    keep_alive: bool  # the client asked to keep its connection open
    chunked: bool
    length: int  # Content-Length, 0 when absent (or when chunked)
    has_length: bool  # a Content-Length came (0 included)
    expect_continue: bool
    tokens: frozenset[bytes]  # the Connection header's tokens, lower case
    #: the header lines the origin gets, each ``CRLF name ":" value``: hop-by-hop ones, those
    #: the Connection header names, Host and Content-Length left out (written afresh)
    passed: bytes
    authorization: bytes | None  # Proxy-Authorization's value (the first)


@dataclass(slots=True)
class ResponseHead:
    """A response head from an origin."""

    version: bytes
    status: int
    reason: bytes
    #: the header lines the client gets, each ``CRLF name ":" value``: hop-by-hop ones,
    #: those the Connection header names and Content-Length left out (framing is the proxy's)
    passed: bytes
    chunked: bool  # the body ends in the chunked coding (the proxy decodes it)
    length: int | None  # None: no Content-Length (chunked, or delimited by close)
    close: bool  # the origin will close after this response
    tokens: frozenset[bytes]  # the Connection header's tokens, lower case
    #: the transfer codings the proxy leaves on the body (all but a final chunked: gzip, ...),
    #: lower case, in order; the client must be told them (RFC 9112 6.1)
    codings: tuple[bytes, ...]


def _header_lines(lines: list[bytes]) -> list[tuple[bytes, bytes]]:
    headers = []
    for line in lines:
        if line:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip(b" \t")))
    return headers


def _split_lines(head: bytes) -> list[bytes]:
    if _CONTROL.search(head):
        raise HttpError(400, "control characters in the message head")
    return head.replace(b"\r\n", b"\n").split(b"\n")


@functools.lru_cache(maxsize=256)
def _token_set(value: bytes) -> frozenset[bytes]:
    """One Connection header's tokens, lower case (cached: a few values recur)."""
    return frozenset(token.strip(b" \t") for token in value.lower().split(b",")) - {b""}


def parse_request(head: bytes) -> RequestHead:
    """The request head that HeadParser returned, checked (as _check_head does) and parsed.

    A plain head (the usual one) is read in one pass and its lines passed on as they
    came; anything else goes the strict way.
    """
    plain = _plain_head(head, _REQUEST_LINE, _NOT_FORWARDED)
    request = None if plain is None else _plain_request(head, *plain)
    return _parse_request_strictly(head) if request is None else request


def _plain_head(
    head: bytes, first_line: re.Pattern[bytes], not_passed: re.Pattern[bytes]
) -> tuple[re.Match[bytes], bytes, list[re.Match[bytes]]] | None:
    """A plain head (``first_line``, then a _PLAIN_BLOCK) in one pass: its first line, its
    header lines without those ``not_passed`` finds in the lower-cased head (the others as
    they came) and the lines it found; None for any other head (the strict path's)."""
    line_end = head.find(b"\r\n")
    match = first_line.fullmatch(head, 0, line_end) if line_end > 0 else None
    if match is None or _PLAIN_BLOCK.fullmatch(head, line_end) is None:
        return None
    pieces = []
    at = line_end
    found = list(not_passed.finditer(head.lower(), line_end))
    for line in found:
        pieces.append(head[at : line.start()])
        at = line.end()
    pieces.append(head[at:-4])
    return match, b"".join(pieces), found


def _plain_request(
    head: bytes, request_line: re.Match[bytes], passed: bytes, found: list[re.Match[bytes]]
) -> RequestHead | None:
    """A plain request head from its lines not forwarded; None when the strict path must
    decide (Transfer-Encoding, Content-Length twice or not a number, Connection twice or
    naming other headers)."""
    length = 0
    has_length = has_host = False
    connection = expect = authorization = None
    for line in found:
        name, value = line.groups()
        if name == b"content-length":
            value = value.strip(b" \t")
            if has_length or not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
                return None
            length, has_length = int(value), True
        elif name == b"host":
            has_host = True
        elif name == b"connection":
            if connection is not None:
                return None
            connection = value
        elif name == b"expect":
            if expect is None:
                expect = value.strip(b" \t")
        elif name == b"proxy-authorization":
            if authorization is None:  # its own case: credentials are case-sensitive
                authorization = head[line.start(2) : line.end(2)].strip(b" \t")
        elif name == b"transfer-encoding":
            return None
    tokens = _NO_TOKENS if connection is None else _token_set(connection)
    if not tokens <= _PLAIN_TOKENS:
        return None
    method, target, version = request_line.groups()
    if version == b"1.1":
        keep_alive = b"close" not in tokens
        if not has_host:
            raise HttpError(400, "an HTTP/1.1 request needs a Host header")
        expect_continue = expect == b"100-continue"
    else:
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
        expect_continue = False
    return RequestHead(
        method, target, version, keep_alive, False, length, has_length, expect_continue, tokens, passed, authorization
    )


def _parse_request_strictly(head: bytes) -> RequestHead:
    """parse_request for any head: _check_head's checks, then line by line."""
    chunked = _check_head(head)
    lines = _split_lines(head)
    match = _REQUEST_LINE.fullmatch(lines[0])
    if match is None:
        # 505 only for a version other than 1.0 and 1.1: a bad method or target in an
        # HTTP/1.1 request line is the client's syntax error (400), as Squid answers
        other = re.fullmatch(rb"\S+ \S+ HTTP/(\d\.\d)", lines[0])
        if other is not None and other[1] not in (b"1.0", b"1.1"):
            raise HttpError(505, "only HTTP/1.0 and HTTP/1.1 are supported", reason=Outcome.BAD_VERSION)
        raise HttpError(400, "malformed request line")
    method, target, version = match.groups()
    headers = _header_lines(lines[1:])
    tokens = frozenset(connection_tokens(headers))
    if version == b"1.1":
        keep_alive = b"close" not in tokens
        if header(headers, b"host") is None:
            raise HttpError(400, "an HTTP/1.1 request needs a Host header")
    else:
        if chunked:  # RFC 9112 6.1: faulty framing from an HTTP/1.0 sender; refused, then closed
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    length = header(headers, b"content-length")
    expect = header(headers, b"expect")
    names = [name.lower() for name, _ in headers]
    passed = b"".join([b"\r\n" + line for line in _kept_lines(headers, names, REQUEST_DROP | tokens)])
    return RequestHead(
        method,
        target,
        version,
        keep_alive,
        chunked,
        0 if chunked or length is None else int(length),
        length is not None,
        version == b"1.1" and expect is not None and expect.lower() == b"100-continue",
        tokens,
        passed,
        header(headers, b"proxy-authorization"),
    )


def encode_request_head(request: RequestHead, target: Target) -> bytes:
    """The head for the origin: hop-by-hop headers gone, Host from the URI, the request's
    own framing, origin-form target; keep-alive is HTTP/1.1's default."""
    if request.chunked:
        framing = b"\r\nTransfer-Encoding: chunked"
    elif request.has_length:
        framing = b"\r\nContent-Length: %d" % request.length
    else:
        framing = b""
    line = b"%b %b HTTP/1.1\r\nHost: %b" % (request.method, target.path, target.host)
    return line + request.passed + framing + b"\r\n\r\n"


#: the methods whose Max-Forwards an intermediary counts down (RFC 9110 7.6.2)
MAX_FORWARDS_METHODS = frozenset({b"TRACE", b"OPTIONS"})
_MAX_FORWARDS = re.compile(rb"\r\nmax-forwards:[ \t]*([0-9]+)[ \t]*(?=\r\n|$)", re.IGNORECASE)


def count_down_max_forwards(request: RequestHead) -> bool:
    """For a TRACE or OPTIONS request: False when its Max-Forwards is 0 (the proxy answers it
    as the final recipient, RFC 9110 7.6.2); else True, a Max-Forwards above 0 lowered by
    one in ``request.passed``. A missing or malformed one is left as it is."""
    match = _MAX_FORWARDS.search(request.passed)
    if match is None:
        return True
    left = int(match[1])
    if not left:
        return False
    request.passed = b"%b%d%b" % (request.passed[: match.start(1)], left - 1, request.passed[match.end(1) :])
    return True


#: the lines of a head a TRACE echo leaves out: the origin's credentials and cookies
_SENSITIVE = re.compile(rb"\r\n(?:authorization|cookie):[^\r]*(?=\r\n)", re.IGNORECASE)


def encode_final_answer(request: RequestHead, forwarded: bytes, *, close: bool) -> bytes:
    """The proxy's own 200 to a TRACE or OPTIONS request with Max-Forwards: 0: for TRACE the
    request head as it would have been forwarded (``forwarded``: no Proxy-Authorization nor
    other hop-by-hop field), Authorization and Cookie left out, as message/http; for OPTIONS
    no content."""
    if request.method == b"TRACE":
        forwarded = _SENSITIVE.sub(b"", forwarded)  # RFC 9110 9.3.8: no credentials in the echo
        head = b"HTTP/1.1 200 OK\r\nContent-Type: message/http\r\nContent-Length: %d" % len(forwarded)
    else:
        head, forwarded = b"HTTP/1.1 200 OK\r\nContent-Length: 0", b""
    if close:
        head += b"\r\nConnection: close"
    elif request.version == b"1.0":
        head += b"\r\nConnection: keep-alive"
    return head + b"\r\n\r\n" + forwarded


def encode_response_head(response: ResponseHead, framing: bytes = b"") -> bytes:
    """The head that goes to the client: the origin's status and passed lines, then
    ``framing`` (the proxy's own Content-Length, Transfer-Encoding, Connection lines)."""
    return b"HTTP/1.1 %d %b%b%b\r\n\r\n" % (response.status, response.reason, response.passed, framing)


def response_head_end(buf: bytearray | bytes) -> int | None:
    """Where a response head ends in ``buf`` (after its blank line); None while incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end >= 0 and buf.count(b"\n", 0, end) == buf.count(b"\r\n", 0, end):
        return end + 4  # CRLF throughout: no earlier blank line
    return _blank_line_end(buf, 0)


def parse_response(head: bytes) -> ResponseHead:
    """An origin's response head; HttpError(502) if it is not HTTP/1.x or is ambiguous.

    A plain head (the usual one) is read in one pass and its lines passed on as they
    came; anything else goes the strict way.
    """
    plain = _plain_head(head, _STATUS_LINE, _NOT_PASSED)
    response = None if plain is None else _plain_response(*plain)
    return _parse_response_strictly(head) if response is None else response


def _plain_response(status_line: re.Match[bytes], passed: bytes, found: list[re.Match[bytes]]) -> ResponseHead | None:
    """A plain response head from its lines not passed on; None when the strict path must
    decide (Content-Length twice or not a number, Connection twice or naming other headers)."""
    length = codings = connection = None
    for line in found:
        name, value = line.groups()
        if name == b"content-length":
            value = value.strip(b" \t")
            if length is not None or not value.isdigit() or len(value) > MAX_LENGTH_DIGITS:
                return None
            length = int(value)
        elif name == b"transfer-encoding":  # every field: together they make one list
            codings = value if codings is None else codings + b"," + value
        elif name == b"connection":
            if connection is not None:
                return None
            connection = value
    tokens = _NO_TOKENS if connection is None else _token_set(connection)
    if not tokens <= _PLAIN_TOKENS:
        return None
    version, status, reason = status_line.groups()
    return _response(version, status, reason, passed, tokens, length, codings)


def _response(
    version: bytes,
    status: bytes,
    reason: bytes | None,
    passed: bytes,
    tokens: frozenset[bytes],
    length: int | None,
    codings: bytes | None,
) -> ResponseHead:
    """The framing of a response whose headers passed the checks; ``codings``: its
    Transfer-Encoding fields joined by commas (None: none came).
    Raises HttpError(502) for a Transfer-Encoding that names no coding, or chunked
    anywhere but last (the proxy could not chunk the body for the client again)."""
    chunked = False
    kept: tuple[bytes, ...] = ()
    if codings is not None and codings.strip(b" \t") == b"chunked":  # nearly every one: no list to read
        chunked, length = True, None
    elif codings is not None:  # it overrides a Content-Length (RFC 9112 6.3)
        listed = _transfer_codings(codings)
        if not listed:
            raise HttpError(502, "origin sent a Transfer-Encoding that names no coding")
        chunked = listed[-1] == b"chunked"
        # identity (no coding; no longer registered, old servers still send it) is dropped
        kept = tuple(coding for coding in (listed[:-1] if chunked else listed) if coding != b"identity")
        if b"chunked" in kept:
            raise HttpError(502, "origin applied chunked before another transfer coding")
        length = None
    close = b"close" in tokens or (version == b"1.0" and b"keep-alive" not in tokens)
    if length is None and not chunked and status not in (b"204", b"304"):
        close = True  # delimited by close (a 204 or 304 has no body to delimit: RFC 9112 6.3)
    return ResponseHead(version, int(status), reason or b"", passed, chunked, length, close, tokens, kept)


def _parse_response_strictly(head: bytes) -> ResponseHead:
    """parse_response for any head, line by line."""
    try:
        lines = _split_lines(head)
    except HttpError:
        raise HttpError(502, "control characters in the origin's response head") from None
    match = _STATUS_LINE.fullmatch(lines[0])
    if match is None:
        raise HttpError(502, "origin sent a malformed status line")
    version, status, reason = match.groups()
    headers = _header_lines(lines[1:])
    lengths = {value for name, value in headers if name.lower() == b"content-length"}
    if any(not _TOKEN.fullmatch(name) for name, _ in headers):
        raise HttpError(502, "origin sent a malformed header")
    if len(lengths) > 1 or (lengths and not next(iter(lengths)).isdigit()):
        raise HttpError(502, "origin sent a bad Content-Length")
    if lengths and len(next(iter(lengths))) > MAX_LENGTH_DIGITS:
        raise HttpError(502, "origin sent a Content-Length too large")
    length = int(next(iter(lengths))) if lengths else None
    names = [name.lower() for name, _ in headers]
    tokens = frozenset(connection_tokens(headers))
    passed = b"".join([b"\r\n" + line for line in _kept_lines(headers, names, RESPONSE_DROP | tokens)])
    encodings = [value for name, value in headers if name.lower() == b"transfer-encoding"]
    return _response(version, status, reason, passed, tokens, length, b",".join(encodings) if encodings else None)


def _kept_lines(headers: list[tuple[bytes, bytes]], names: list[bytes], drop: frozenset[bytes]) -> list[bytes]:
    """``Name: value`` for each header whose lower-case name is not in ``drop``."""
    return [name + b": " + value for (name, value), lowered in zip(headers, names, strict=True) if lowered not in drop]


class ChunkedDecoder:
    """Decodes a chunked body fed in pieces; bounded chunk-size and trailer lines.

    feed() returns the data pieces; ``done`` once the last chunk and trailers
    are through, with bytes past the body left in ``rest``.
    """

    __slots__ = ("_buf", "_left", "_state", "_trailer", "done", "rest")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)
    #: the most trailer-section bytes taken (the same bound as a head): a trickle of trailer lines ends here
    MAX_TRAILER = 16384
    #: the longest chunk-size or trailer line (its line end included), however it arrives
    MAX_LINE = 4096

    def __init__(self) -> None:
        self._buf = bytearray()
        self._left = 0
        self._trailer = 0
        self._state = self._SIZE
        self.done = False
        self.rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        pieces: list[bytes] = []
        buf = self._buf
        buf += data
        while buf and not self.done:
            if self._state == self._DATA:
                take = min(self._left, len(buf))
                pieces.append(bytes(buf[:take]))
                del buf[:take]
                self._left -= take
                if not self._left:
                    self._state = self._DATA_END
                continue
            end = buf.find(b"\n", 0, self.MAX_LINE + 1)
            if end < 0:  # no line end in the first MAX_LINE + 1 bytes: whether or not one follows
                if len(buf) > self.MAX_LINE:
                    raise HttpError(400, "chunk line too long")
                break
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            if self._state == self._SIZE:
                size = line.partition(b";")[0].strip(b" \t")
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise HttpError(400, "bad chunk size")
                self._left = int(size, 16)
                self._state = self._DATA if self._left else self._TRAILER
            elif self._state == self._DATA_END:
                if line:
                    raise HttpError(400, "chunk data longer than its size")
                self._state = self._SIZE
            elif not line:  # the blank line after the trailers
                self.done = True
                self.rest = bytes(buf)
                buf.clear()
            else:  # a trailer field: dropped (not forwarded), but counted
                self._trailer += end + 1
                if self._trailer > self.MAX_TRAILER:
                    raise HttpError(400, "chunked trailer section too large")
        return pieces


def encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"
