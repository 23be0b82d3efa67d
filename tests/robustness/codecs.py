"""Every codec parser, as one table the fuzzers walk.

Adding a codec to the fuzzing (hypothesis in the default suite, atheris in
``tox -e fuzz``) is one ``Target`` entry below. Entries name their module and
function as strings; a module or function that is missing fails the run.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gproxy.core.errors import ClientProtocolError

Parse = Callable[[bytearray], Any]


@dataclass(frozen=True)
class Target:
    """One parse function and what we know about its input."""

    name: str
    module: str
    function: str
    #: whole-datagram parsers never answer None ("need more bytes")
    datagram: bool = False
    #: a plain function of whole bytes (any return value, or ClientProtocolError)
    value: bool = False
    #: message -> bytes, for "parse of encode round-trips" (None: no encoder)
    encode: Callable[[Any], bytes] | None = None
    #: valid inputs: the hypothesis mutation base and the atheris seed corpus
    seeds: tuple[bytes, ...] = field(default=())

    def load(self) -> Parse:
        """The parse function (ImportError or AttributeError when it is gone: a renamed codec must fail)."""
        parse: Parse = getattr(importlib.import_module(self.module), self.function)
        return parse


def check_value(function: Parse, data: bytes) -> None:
    """A plain function of bytes: it returns, or raises ClientProtocolError."""
    with contextlib.suppress(ClientProtocolError):
        function(bytes(data))


def check_parse(parse: Parse, data: bytes, *, datagram: bool = False) -> tuple[Any, int] | None:
    """Run one parse and check its contract; returns what it returned.

    The contract: ``None`` (need more bytes; never for a datagram parser) or
    ``(message, used)`` with ``0 < used <= len(data)``, or ClientProtocolError.
    Any other exception escapes, which is the bug the fuzzers look for.
    """
    try:
        result = parse(bytearray(data))
    except ClientProtocolError:
        return None
    if result is None:
        assert not datagram, "a datagram parser asked for more bytes"
        return None
    message, used = result
    assert isinstance(used, int), f"used is {type(used).__name__}"
    assert 0 < used <= len(data), f"used={used} for {len(data)} bytes"
    return message, used


def check_input(target: Target, parse: Parse, data: bytes, trailing: bytes) -> tuple[Any, int] | None:
    """The contract for one input of ``target`` (check_value or check_parse), and a whole
    message (not a datagram) parses the same with ``trailing`` bytes after it. Returns
    that message and how many bytes it used; None when there is no such message."""
    if target.value:
        check_value(parse, data)
        return None
    result = check_parse(parse, data, datagram=target.datagram)
    if result is None or target.datagram:
        return None
    again = check_parse(parse, data + trailing, datagram=False)
    assert again == result, f"{trailing!r} after the message changed it: {again!r} != {result!r}"
    return result


def _socks4_request(message: Any) -> bytes:
    from gproxy.codec import socks4

    return socks4.encode_request(message.command, message.address, message.userid)


def _proxy_header(message: Any) -> bytes:
    from gproxy.codec import proxy_protocol

    encode = proxy_protocol.encode_v1 if message.version == 1 else proxy_protocol.encode_v2
    return encode(message.source, message.destination)


def _socks5(name: str) -> Callable[[Any], bytes]:
    def encode(message: Any) -> bytes:
        from gproxy.codec import socks5

        if name == "greeting":
            return socks5.encode_greeting(sorted(message.methods))
        if name == "auth":
            return socks5.encode_auth(message.username, message.password)
        if name == "request":
            return socks5.encode_request(message.command, message.address)
        if name == "reply":
            return socks5.encode_reply(message.code, message.address)
        if name == "udp":
            return bytes((0, 0, message.frag)) + socks5.encode_address(message.address)
        raise KeyError(name)

    return encode


_V4 = b"\x01\x7f\x00\x00\x01\x00\x50"
_V6 = b"\x04" + bytes(15) + b"\x01\x01\xbb"
_NAME = b"\x03\x0bexample.com\x00\x50"

TARGETS: tuple[Target, ...] = (
    Target(
        "socks5_greeting",
        "gproxy.codec.socks5",
        "parse_greeting",
        encode=_socks5("greeting"),
        seeds=(b"\x05\x01\x00", b"\x05\x02\x00\x02", b"\x05\x03\x00\x01\x02"),
    ),
    Target(
        "socks5_auth",
        "gproxy.codec.socks5",
        "parse_auth",
        encode=_socks5("auth"),
        seeds=(b"\x01\x01u\x01p", b"\x01\x00\x00", b"\x01\x04user\x08password"),
    ),
    Target(
        "socks5_request",
        "gproxy.codec.socks5",
        "parse_request",
        encode=_socks5("request"),
        seeds=(b"\x05\x01\x00" + _V4, b"\x05\x01\x00" + _V6, b"\x05\x03\x00" + _NAME, b"\x05\x02\x00" + _V4),
    ),
    Target("socks5_method_choice", "gproxy.codec.socks5", "parse_method_choice", seeds=(b"\x05\x00", b"\x05\xff")),
    Target("socks5_auth_reply", "gproxy.codec.socks5", "parse_auth_reply", seeds=(b"\x01\x00", b"\x01\x01")),
    Target(
        "socks5_reply",
        "gproxy.codec.socks5",
        "parse_reply",
        encode=_socks5("reply"),
        seeds=(b"\x05\x00\x00" + _V4, b"\x05\x05\x00" + _V6, b"\x05\x00\x00" + _NAME),
    ),
    Target(
        "socks5_udp_header",
        "gproxy.codec.socks5",
        "parse_udp_header",
        datagram=True,
        encode=_socks5("udp"),
        seeds=(b"\x00\x00\x00" + _V4 + b"payload", b"\x00\x00\x00" + _NAME, b"\x00\x00\x01" + _V6 + b"x"),
    ),
)


_HTTP_HEAD = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"
_V2 = b"\r\n\r\n\x00\r\nQUIT\n"

TARGETS += (
    Target(
        "socks4_request",
        "gproxy.codec.socks4",
        "parse_request",
        encode=_socks4_request,
        seeds=(
            b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00",
            b"\x04\x01\x00\x50\x7f\x00\x00\x01user\x00",
            b"\x04\x01\x00\x50\x00\x00\x00\x01\x00example.com\x00",
        ),
    ),
    Target("socks4_reply", "gproxy.codec.socks4", "parse_reply", seeds=(b"\x00\x5a\x00\x50\x7f\x00\x00\x01",)),
    Target(
        "http_head",
        "gproxy.codec.http",
        "parse_head",
        seeds=(
            _HTTP_HEAD,
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            b"POST http://a/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Type: x\r\n\r\n",
            b"GET http://a/ HTTP/1.1\nHost: a\nConnection: keep-alive, x-foo\nX-Foo: 1\n\n",
        ),
    ),
    Target(
        "http_authority",
        "gproxy.codec.http",
        "parse_authority",
        value=True,
        seeds=(b"example.com:443", b"[::1]:8080", b"127.0.0.1:1"),
    ),
    Target(
        "http_absolute_uri",
        "gproxy.codec.http",
        "split_absolute_uri",
        value=True,
        seeds=(b"http://example.com/", b"http://[::1]:8080/a?b#c", b"http://a:80?x"),
    ),
    Target(
        "http_basic_credentials",
        "gproxy.codec.http",
        "basic_credentials",
        value=True,
        seeds=(b"Basic dTpw", b"basic  dTpw ", b"Bearer x"),
    ),
    Target(
        "proxy_protocol_header",
        "gproxy.codec.proxy_protocol",
        "parse_header",
        encode=_proxy_header,
        seeds=(
            b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\n",
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n",
            b"PROXY UNKNOWN\r\n",
            _V2 + b"\x21\x11\x00\x0c" + bytes([192, 0, 2, 1, 198, 51, 100, 1]) + b"\xdc\x04\x01\xbb",
            _V2 + b"\x20\x00\x00\x00",
        ),
    ),
)


def available() -> list[tuple[Target, Parse]]:
    """Every target with its parse function."""
    return [(target, target.load()) for target in TARGETS]
