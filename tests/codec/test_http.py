"""HTTP proxy codec: head bounds and smuggling checks, targets, headers, Basic."""

from __future__ import annotations

import base64
import re

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproxy.codec import http
from gproxy.codec.http import HttpError
from gproxy.core.addr import Address

GET = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n"


def status_of(raw: bytes) -> int:
    with pytest.raises(HttpError) as info:
        http.parse_head(bytearray(raw))
    return info.value.status


# -- request head -------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        GET,
        GET.replace(b"\r\n", b"\n"),  # bare LF, as h11 accepts
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"GET http://a/ HTTP/1.0\r\n\r\n",
    ],
)
def test_head_at_every_split(raw):
    for cut in range(len(raw)):
        assert http.parse_head(bytearray(raw[:cut])) is None, f"prefix of {cut} bytes parsed"
    assert http.HeadParser()(bytearray(raw + b"body bytes")) == (raw, len(raw))
    request, used = http.parse_head(bytearray(raw + b"body bytes"))
    assert used == len(raw) and raw.startswith(request.method + b" " + request.target)


def test_leading_empty_lines_are_skipped():
    assert http.HeadParser()(bytearray(b"\r\n\r\n" + GET)) == (GET, len(GET) + 4)


def test_parsed_head_is_what_h11_reads():
    head, _ = http.HeadParser()(bytearray(GET))
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    event = conn.next_event()
    assert isinstance(event, h11.Request) and event.target == b"http://example.com/"


def test_request_line_too_long_is_414():
    assert status_of(b"GET http://a/" + b"x" * http.MAX_REQUEST_LINE + b" HTTP/1.1\r\n") == 414
    assert status_of(b"GET http://a/" + b"x" * http.MAX_REQUEST_LINE) == 414  # even before its end


def test_headers_too_large_is_431():
    many = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(700))
    assert status_of(b"GET http://a/ HTTP/1.1\r\n" + many) == 431
    assert status_of(b"GET http://a/ HTTP/1.1\r\n" + many + b"\r\n") == 431


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: 5\r\nContent-Length: 5\r\n", 400),
        (b"Content-Length: 5, 5\r\n", 400),
        (b"Content-Length: -1\r\n", 400),
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
        # any Transfer-Encoding next to a Content-Length, even one that names no coding
        (b"Transfer-Encoding:\r\nContent-Length: 5\r\n", 400),
        (b"Transfer-Encoding: ,\r\nContent-Length: 5\r\n", 400),
        (b"Content-Length: 5\r\nTransfer-Encoding: \t\r\n", 400),
        (b"Transfer-Encoding:\r\n", 400),
        (b"Transfer-Encoding: , ,\r\n", 400),
        (b"Transfer-Encoding: chunked, identity\r\n", 400),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 400),
        (b"Transfer-Encoding: chunked, chunked\r\n", 400),
        (b"Transfer-Encoding: gzip, chunked\r\n", 501),
        (b"Transfer-Encoding: xchunked\r\n", 400),
        (b"Content-Length : 5\r\n", 400),
        (b"Transfer-Encoding : chunked\r\n", 400),
        (b"Host\t: a\r\n", 400),
        (b" Host: a\r\n", 400),
        (b"Host: a\r\n folded\r\n", 400),
        (b"no colon here\r\n", 400),
        (b"Bad[name]: 1\r\n", 400),
    ],
)
def test_smuggling_and_malformed_headers(headers, status):
    assert status_of(b"POST http://a/ HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n") == status


@pytest.mark.parametrize("connection", [b"", b"Connection: keep-alive\r\n"])
def test_http10_request_with_transfer_encoding_is_400(connection):
    """RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing."""
    raw = b"POST http://a/ HTTP/1.0\r\n" + connection + b"Transfer-Encoding: chunked\r\n\r\n"
    assert status_of(raw) == 400


@pytest.mark.parametrize(
    ("headers", "chunked", "length"),
    [
        (b"Content-Length: 5\r\n", False, 5),
        (b"Transfer-Encoding: chunked\r\n", True, 0),
        (b"Transfer-Encoding: Chunked \r\n", True, 0),
        (b"Transfer-Encoding: , chunked,\r\n", True, 0),  # empty list elements are ignored
        (b"", False, 0),
    ],
)
def test_well_formed_framing_is_accepted(headers, chunked, length):
    raw = b"POST http://a/ HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
    request, used = http.parse_head(bytearray(raw))
    assert used == len(raw) and (request.chunked, request.length) == (chunked, length)


@given(st.binary(max_size=300))
def test_head_parser_raises_only_http_errors(data):
    try:
        parsed = http.parse_head(bytearray(data))
    except HttpError as exc:
        assert exc.status in (400, 414, 431, 501, 505)
        return
    if parsed is not None:
        assert 0 < parsed[1] <= len(data)


# -- targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "address", "authority", "path"),
    [
        (b"http://example.com/a/b?c=d", Address("example.com", 80), "example.com", b"/a/b?c=d"),
        (b"http://example.com", Address("example.com", 80), "example.com", b"/"),
        (b"HTTP://Example.com:8080?q", Address("Example.com", 8080), "Example.com:8080", b"/?q"),
        (b"http://127.0.0.1:81/x#frag", Address("127.0.0.1", 81), "127.0.0.1:81", b"/x"),
        (b"http://[::1]:8080/x", Address("::1", 8080), "[::1]:8080", b"/x"),
        (b"http://[2001:db8::1]/", Address("2001:db8::1", 80), "[2001:db8::1]", b"/"),
    ],
)
def test_absolute_uri_split(uri, address, authority, path):
    target = http.split_absolute_uri(uri)
    assert (target.address, target.host, target.path) == (address, authority.encode(), path)


@pytest.mark.parametrize(
    "uri",
    [
        b"/origin-form",
        b"https://example.com/",
        b"ftp://example.com/",
        b"http://user:pw@example.com/",
        b"http:///path",
        b"http://example.com:0/",
        b"http://example.com:65536/",
        b"http://example.com:/",
        b"http://example.com:x/",
        b"http://[::1/",
        b"http://[1.2.3.4]/",
        b"http://exa mple.com/",
        "http://ex\u00e4mple.com/".encode(),
    ],
)
def test_bad_absolute_uris_are_400(uri):
    with pytest.raises(HttpError) as info:
        http.split_absolute_uri(uri)
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET http://a/ HTTP/2.0", 505),
        (b"GET http://a/ HTTP/0.9", 505),
        ("G\u00e9T http://a/ HTTP/1.1".encode(), 400),
        (b"GET http://\xff/ HTTP/1.1", 400),
        (b"GET http://a/\x80 HTTP/1.0", 400),
    ],
)
def test_only_an_unsupported_version_is_505(line, status):
    """A non-token method or a non-ASCII target in an HTTP/1.x request line is a 400, not a 505."""
    with pytest.raises(HttpError) as info:
        http.parse_request(line + b"\r\nHost: a\r\n\r\n")
    assert info.value.status == status


@pytest.mark.parametrize(
    ("authority", "address"),
    [
        (b"example.com:443", Address("example.com", 443)),
        (b"127.0.0.1:8443", Address("127.0.0.1", 8443)),
        (b"[::1]:443", Address("::1", 443)),
        # unbracketed IPv6, as httpx and proxychains-ng send it: the last colon is the port's
        (b"::1:443", Address("::1", 443)),
        (b"2001:db8::7:8080", Address("2001:db8::7", 8080)),
    ],
)
def test_connect_authority(authority, address):
    assert http.parse_authority(authority) == address


@pytest.mark.parametrize(
    "authority",
    [b"example.com", b"example.com:", b"example.com:0", b"2001:db8::1", b"a:b:c", b"[::1]", b"http://a:1", b"a:1/x"],
)
def test_bad_connect_authority_is_400(authority):
    with pytest.raises(HttpError) as info:
        http.parse_authority(authority)
    assert info.value.status == 400


# -- headers ------------------------------------------------------------------------------------


def test_hop_by_hop_and_connection_named_headers_are_not_forwarded():
    head = (
        b"POST http://a/ HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nconnection: Other\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: Basic dTpw\r\n"
        b"TE: trailers\r\nTrailer: X\r\nTransfer-Encoding: chunked\r\nUpgrade: websocket\r\n"
        b"Expect: 100-continue\r\nX-Secret: 1\r\nother: 2\r\nAccept: */*\r\n\r\n"
    )
    request = http.parse_request(head)
    assert request.passed == b"\r\nAccept: */*" and request.chunked and request.authorization == b"Basic dTpw"


def test_basic_credentials():
    def basic(raw: bytes) -> bytes:
        return b"Basic " + base64.b64encode(raw)

    assert http.basic_credentials(basic(b"u:p")) == (b"u", b"p")
    assert http.basic_credentials(basic(b"u:p:with:colons")) == (b"u", b"p:with:colons")
    assert http.basic_credentials(b"basic " + base64.b64encode(b"u:")) == (b"u", b"")
    assert http.basic_credentials(basic("\u00fc:p".encode())) == ("\u00fc".encode(), b"p")
    for bad in [None, b"", basic(b"nocolon"), b"Bearer abc", b"Basic !!!", b"Basic dTpw=extra", b"Digest x"]:
        assert http.basic_credentials(bad) is None, bad


def test_error_responses_are_complete_and_close():
    raw = http.encode_response(407, "who are you", [(b"Proxy-Authenticate", b'Basic realm="gproxy"')])
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    response = conn.next_event()
    assert response.status_code == 407
    assert (b"proxy-authenticate", b'Basic realm="gproxy"') in response.headers
    assert (b"connection", b"close") in response.headers
    assert conn.next_event().data.startswith(b"407 Proxy Authentication Required: who are you")
    assert isinstance(conn.next_event(), h11.EndOfMessage)


@pytest.mark.parametrize(
    ("uri", "address", "host_header"),
    [
        (b"http://::1:9/x", Address("::1", 9), b"[::1]:9"),
        (b"http://[::1]:9/x", Address("::1", 9), b"[::1]:9"),
        (b"http://2001:db8::1/", Address("2001:db8::1", 80), b"[2001:db8::1]:80"),
    ],
)
def test_unbracketed_ipv6_uri_gets_a_bracketed_host_header(uri, address, host_header):
    target = http.split_absolute_uri(uri)
    assert target.address == address
    assert target.host == host_header


def test_chunked_decoder_bounds_the_trailer_section():
    """An origin (or client) that trickles trailer lines for ever is cut off, not buffered for ever."""
    from gproxy.codec.http import ChunkedDecoder

    decoder = ChunkedDecoder()
    assert decoder.feed(b"5\r\nhello\r\n0\r\n") == [b"hello"]
    with pytest.raises(HttpError):
        for _ in range(10_000):  # bounded: the decoder must give up long before
            decoder.feed(b"X-Trailer: " + b"a" * 50 + b"\r\n")
    ok = ChunkedDecoder()
    assert ok.feed(b"3\r\nabc\r\n0\r\nX-One: 1\r\n\r\nnext") == [b"abc"]
    assert ok.done and ok.rest == b"next"


@pytest.mark.parametrize("line", [b"5;" + b"e" * 5000 + b"\r\n", b"0\r\nX-Long: " + b"v" * 5000 + b"\r\n"])
def test_chunked_decoder_bounds_a_line_whether_or_not_its_end_came_with_it(line):
    """A 5,000-byte chunk extension or trailer is refused in one read as in many."""
    from gproxy.codec.http import ChunkedDecoder

    with pytest.raises(HttpError, match="chunk line too long"):
        ChunkedDecoder().feed(line + b"hello\r\n0\r\n\r\n")
    decoder = ChunkedDecoder()
    with pytest.raises(HttpError, match="chunk line too long"):
        for offset in range(0, len(line), 1000):
            decoder.feed(line[offset : offset + 1000])
    ok = ChunkedDecoder()  # a line of MAX_LINE bytes, its line end included, still passes
    assert ok.feed(b"5;" + b"e" * (ChunkedDecoder.MAX_LINE - 4) + b"\r\nhello\r\n0\r\n\r\n") == [b"hello"]
    assert ok.done


# -- heads for forwarding: the one-pass path must read what the strict path reads ----------------

SMUGGLING = [
    b"Content-Length: 5\r\nContent-Length: 5\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Content-Length: -1\r\n",
    b"Content-Length: 1000000000000000000\r\n",  # 19 digits: a C program after us could wrap it
    b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding:\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding: ,\r\nContent-Length: 5\r\n",
    b"Transfer-Encoding:\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Length : 5\r\n",
    b"Host\t: a\r\n",
    b"Host: a\r\n folded\r\n",
    b"no colon here\r\n",
    b"Bad[name]: 1\r\n",
    b"X-Nul: a\x00b\r\n",
    b"X-Cr: a\rb\r\n",
]


@pytest.mark.parametrize("headers", SMUGGLING)
def test_parse_request_makes_the_head_checks(headers):
    """The proxy no longer runs check_head while reading: parse_request refuses what it refuses."""
    raw = b"POST http://a/ HTTP/1.1\r\nHost: a\r\n" + headers + b"\r\n"
    with pytest.raises(HttpError) as info:
        http.parse_request(raw)
    assert info.value.status in (400, 501)


def test_a_content_length_of_more_than_18_digits_is_refused_both_ways():
    """Up to 10^18 - 1 is a length; more is refused (400 from a client, 502 from an origin)
    on the one-pass path as on the strict one, before a C program after us could wrap it."""
    longest = b"9" * 18
    for head in (
        b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: %b\r\n\r\n",
        b"POST http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length:  %b\r\nX: 1\r\n\r\n",
    ):
        assert http.parse_request(head % longest).length == int(longest)
        with pytest.raises(HttpError) as refused:
            http.parse_request(head % (b"1" + longest))
        assert refused.value.status == 400
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %b\r\n\r\n"
    assert http.parse_response(response % longest).length == int(longest)
    for head in (response, b"HTTP/1.1 200 OK\r\nContent-Length: %b\r\nContent-Length: %b\r\n\r\n"):
        with pytest.raises(HttpError) as refused:
            http.parse_response(head.replace(b"%b", b"1" + longest))
        assert refused.value.status == 502


def _outcome(parse, head: bytes):
    try:
        return parse(head)
    except HttpError as exc:
        return exc.status


_NAME = st.sampled_from(
    [
        b"Host",
        b"host",
        b"Content-Length",
        b"content-length",
        b"Transfer-Encoding",
        b"Connection",
        b"connection",
        b"Expect",
        b"Keep-Alive",
        b"Proxy-Connection",
        b"X-A",
        b"Accept",
        b"TE",
        b"Upgrade",
        b"Bad Name",
        b"",
        b" Folded",
    ]  # fmt: skip
)
_VALUE = st.sampled_from(
    [
        b"",
        b"5",
        b" 5 ",
        b"x",
        b"chunked",
        b"Chunked ",
        b"gzip, chunked",
        b"close",
        b"keep-alive, X-A",
        b"Keep-Alive",
        b"100-continue",
        b"a\tb",
        b"a\x00b",
        b"a\rb",
        b"\xff",
        b"-1",
        b"5, 5",
        b"upgrade",
    ]  # fmt: skip
)
_SEP = st.sampled_from([b":", b": ", b":\t", b" : "])
_EOL = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"])


def _head(first_line: bytes, fields) -> bytes:
    return first_line + b"\r\n" + b"".join(name + sep + value + eol for name, sep, value, eol in fields) + b"\r\n"


def _view(parse, head: bytes, fields: tuple[str, ...]):
    """The error status, or the named fields and the passed headers as (name, value) pairs."""
    parsed = _outcome(parse, head)
    if isinstance(parsed, int):
        return parsed
    return [getattr(parsed, field) for field in fields], _passed_pairs(parsed.passed)


def _passed_pairs(passed: bytes) -> list[tuple[bytes, bytes]]:
    lines = passed.split(b"\r\n")
    assert lines[0] == b""
    return [(name, value.strip(b" \t")) for name, _, value in (line.partition(b":") for line in lines[1:])]


_REQUEST_VIEW = ("method", "target", "version", "keep_alive", "chunked", "length", "has_length", "expect_continue",
                 "tokens", "authorization")  # fmt: skip
_RESPONSE_VIEW = ("version", "status", "reason", "chunked", "length", "close", "tokens", "codings")


@given(
    st.sampled_from(
        [b"GET http://a/ HTTP/1.1", b"POST http://a/x HTTP/1.0", b"CONNECT a:1 HTTP/1.1", b"GET / HTTP/2.0"]
    ),
    st.lists(st.tuples(_NAME, _SEP, _VALUE, _EOL), max_size=6),
)
def test_one_pass_request_parse_matches_the_strict_one(line, fields):
    """Same framing and credentials, and the same headers for the origin (the plain path passes its lines on)."""
    head = _head(line, fields)
    assert _view(http.parse_request, head, _REQUEST_VIEW) == _view(http._parse_request_strictly, head, _REQUEST_VIEW)


@given(
    st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 204 No Content", b"HTTP/1.1 304", b"HTTP/1.1 99 x", b"ICY 200"]),
    st.lists(st.tuples(_NAME, _SEP, _VALUE, _EOL), max_size=6),
)
def test_one_pass_response_parse_matches_the_strict_one(line, fields):
    """Same framing, and the same headers for the client (the plain path passes its lines on as they came)."""
    head = _head(line, fields)
    assert _view(http.parse_response, head, _RESPONSE_VIEW) == _view(
        http._parse_response_strictly, head, _RESPONSE_VIEW
    )


def test_the_client_gets_no_hop_by_hop_response_header():
    head = (
        b"HTTP/1.1 200 OK\r\nServer: x\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
        b"Content-Length: 2\r\nTE: trailers\r\nX-A:1\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    response = http.parse_response(head)
    assert response.passed == b"\r\nServer: x\r\nX-A:1" and response.chunked and response.length is None
    named = http.parse_response(b"HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\nX-B: 2\r\n\r\n")
    assert named.passed == b"\r\nX-B: 2" and named.close


@pytest.mark.parametrize("value", [b"", b" ", b",", b" , ,"])
@pytest.mark.parametrize("length", [b"", b"Content-Length: 2\r\n"])
def test_a_response_transfer_encoding_that_names_no_coding_is_502(value, length):
    """The response side of the empty Transfer-Encoding: no framing is guessed for it either."""
    for head in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:" + value + b"\r\n" + length + b"\r\n",  # the one-pass path
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:" + value + b"\r\n" + length + b"X-A: 1\n\r\n",  # the strict one
    ):
        with pytest.raises(HttpError) as info:
            http.parse_response(head)
        assert info.value.status == 502


def test_response_transfer_encoding_fields_make_one_list():
    for head in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nX-A: 1\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, \r\n\r\n",
    ):
        assert http.parse_response(head).chunked, head


@pytest.mark.parametrize(
    ("value", "chunked", "codings"),
    [
        (b"chunked", True, ()),
        (b"Chunked", True, ()),
        (b"gzip, chunked", True, (b"gzip",)),
        (b"GZip ,deflate,chunked", True, (b"gzip", b"deflate")),
        (b"gzip", False, (b"gzip",)),  # delimited by the origin's close
        (b"identity", False, ()),  # no coding at all: dropped, the body passes as it is
        (b"gzip, identity, chunked", True, (b"gzip",)),
        (b"gzip\r\nTransfer-Encoding: chunked", True, (b"gzip",)),  # two fields, one list
    ],
)
def test_response_transfer_codings_other_than_chunked_are_kept(value, chunked, codings):
    for head in (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\n\r\n",  # the one-pass path
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\nX-A: 1\n\r\n",  # the strict one
    ):
        response = http.parse_response(head)
        assert (response.chunked, response.codings, response.length) == (chunked, codings, None), head
        assert response.close is not chunked


@pytest.mark.parametrize(
    ("status", "close"), [(b"204 No Content", False), (b"304 Not Modified", False), (b"200 OK", True)]
)
def test_only_a_response_with_a_body_is_delimited_by_close(status, close):
    """No length and no chunked: a 200 ends when the origin closes, a 204 or 304 ends at
    its head (its origin connection can be kept)."""
    for extra in (b"", b"X-A: 1\n"):  # the one-pass path and the strict one
        response = http.parse_response(b"HTTP/1.1 " + status + b"\r\nDate: x\r\n" + extra + b"\r\n")
        assert (response.length, response.chunked, response.close) == (None, False, close)


@pytest.mark.parametrize("value", [b"chunked, gzip", b"chunked, chunked", b"chunked\r\nTransfer-Encoding: gzip"])
def test_a_response_chunked_before_another_coding_is_502(value):
    """Chunked more than once, or before another coding: the proxy could not chunk it for the client."""
    with pytest.raises(HttpError) as info:
        http.parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + value + b"\r\n\r\n")
    assert info.value.status == 502


@given(st.binary(max_size=200), st.sampled_from([b"", b"\r\n\r\n", b"\r\n\r\nbody", b"\n\n", b"\r\n"]))
def test_plain_head_end_agrees_with_the_head_parser(data, tail):
    buf = bytearray(b"GET http://a/ HTTP/1.1\r\n" + data + tail)
    end = http.plain_head_end(buf)
    if end is not None:
        assert http.HeadParser()(buf) == (bytes(buf[:end]), end)


def test_head_for_the_origin():
    raw = (
        b"GET http://Example.com:8080/p?q HTTP/1.1\r\nHost: wrong\r\nConnection: keep-alive, X-Secret\r\n"
        b"X-Secret: 1\r\nProxy-Authorization: Basic dTpw\r\nAccept:  */* \r\nProxy-Connection: keep-alive\r\n\r\n"
    )
    request = http.parse_request(raw)
    out = http.encode_request_head(request, http.split_absolute_uri(request.target))
    assert out == b"GET /p?q HTTP/1.1\r\nHost: Example.com:8080\r\nAccept: */*\r\n\r\n"
    plain = http.parse_request(raw.replace(b", X-Secret", b""))  # nothing named: the plain path, lines as they came
    out = http.encode_request_head(plain, http.split_absolute_uri(plain.target))
    assert out == b"GET /p?q HTTP/1.1\r\nHost: Example.com:8080\r\nX-Secret: 1\r\nAccept:  */* \r\n\r\n"
    assert plain.authorization == b"Basic dTpw"
    post = http.parse_request(b"POST http://a/ HTTP/1.0\r\nContent-Length: 3\r\n\r\n")
    assert http.encode_request_head(post, http.split_absolute_uri(post.target)).endswith(b"Content-Length: 3\r\n\r\n")


@pytest.mark.parametrize(
    ("field", "forwarded"),
    [
        (b"Max-Forwards: 3", b"2"),
        (b"max-forwards:1 ", b"0"),
        (b"Max-Forwards: 0", None),
        (b"Max-Forwards: x", b"x"),  # malformed: left as it came
    ],
)
@pytest.mark.parametrize("connection", [b"", b"Connection: close, X-A\r\n"], ids=["plain", "strict"])
def test_max_forwards_is_counted_down(field, forwarded, connection):
    request = http.parse_request(
        b"TRACE http://a/ HTTP/1.1\r\nHost: a\r\n" + connection + field + b"\r\nX-B: 1\r\n\r\n"
    )
    assert http.count_down_max_forwards(request) is (forwarded is not None)
    if forwarded is not None:
        value, rest = re.search(
            rb"\r\nmax-forwards:[ \t]*(\S+)[ \t]*(.*)", request.passed, re.IGNORECASE | re.DOTALL
        ).groups()
        assert (value, rest) == (forwarded, b"\r\nX-B: 1")
