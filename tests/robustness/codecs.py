"""Every codec parser, as one table the fuzzers walk.

Adding a codec to the fuzzing (hypothesis in the default suite, atheris in
``tox -e fuzz``) is one ``Target`` entry below. Entries name their module and
function as strings, so a codec that is not merged yet is simply skipped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gproxy.errors import ClientProtocolError

Parse = Callable[[bytearray], Any]


@dataclass(frozen=True)
class Target:
    """One parse function and what we know about its input."""

    name: str
    module: str
    function: str
    #: whole-datagram parsers never answer None ("need more bytes")
    datagram: bool = False
    #: message -> bytes, for "parse of encode round-trips" (None: no encoder)
    encode: Callable[[Any], bytes] | None = None
    #: valid inputs: the hypothesis mutation base and the atheris seed corpus
    seeds: tuple[bytes, ...] = field(default=())

    def load(self) -> Parse | None:
        """The parse function, or None when its module is not on this branch."""
        try:
            module = importlib.import_module(self.module)
        except ModuleNotFoundError:
            return None
        return getattr(module, self.function, None)


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


def available() -> list[tuple[Target, Parse]]:
    """The targets whose codec exists on this branch, with their parse functions."""
    found = []
    for target in TARGETS:
        parse = target.load()
        if parse is not None:
            found.append((target, parse))
    return found
