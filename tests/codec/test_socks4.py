"""SOCKS4/4a codec: byte tables, every split offset, caps, malformed input, client side."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproxy.codec import socks4
from gproxy.core.addr import Address
from gproxy.core.errors import ClientProtocolError
from tests.helpers import feed_every_split

REQUESTS = {
    "connect-ipv4": (
        b"\x04\x01\x00\x50\x7f\x00\x00\x01alice\x00",
        socks4.Request(1, Address("127.0.0.1", 80), b"alice", False),
    ),
    "connect-no-userid": (
        b"\x04\x01\x01\xbb\x0a\x00\x00\x02\x00",
        socks4.Request(1, Address("10.0.0.2", 443), b"", False),
    ),
    "bind-ipv4": (b"\x04\x02\x1f\x90\xc0\xa8\x01\x01\x00", socks4.Request(2, Address("192.168.1.1", 8080), b"", False)),
    "connect-4a": (
        b"\x04\x01\x00\x50\x00\x00\x00\x01bob\x00example.com\x00",
        socks4.Request(1, Address("example.com", 80), b"bob", True),
    ),
    "connect-4a-x-255": (
        b"\x04\x01\x00\x50\x00\x00\x00\xff\x00localhost\x00",
        socks4.Request(1, Address("localhost", 80), b"", True),
    ),
}


@pytest.mark.parametrize("name", REQUESTS)
def test_requests_at_every_split(name):
    raw, expected = REQUESTS[name]
    assert feed_every_split(socks4.parse_request, raw) == expected


def test_pipelined_bytes_are_left_alone():
    raw, _ = REQUESTS["connect-4a"]
    request, used = socks4.parse_request(bytearray(raw + b"GET / HTTP/1.1\r\n"))
    assert used == len(raw) and request.address.host == "example.com"


def test_0_0_0_0_is_an_address_not_4a():
    request, _ = socks4.parse_request(bytearray(b"\x04\x01\x00\x50\x00\x00\x00\x00\x00"))
    assert request.address == Address("0.0.0.0", 80) and not request.socks4a


def test_userid_and_hostname_at_their_caps():
    # The longest valid name is 253 bytes and a trailing dot; a 255-byte one is framed, then refused as a name.
    userid, host = b"u" * socks4.MAX_USERID, ("h" * 63 + ".") * 3 + "h" * 61 + "."
    raw = b"\x04\x01\x00\x50\x00\x00\x00\x01" + userid + b"\0" + host.encode() + b"\0"
    assert len(raw) == socks4.MAX_REQUEST - 1
    request = feed_every_split(socks4.parse_request, raw)
    assert request.userid == userid and request.address.host == host
    too_long = raw[:-2] + b"hh\0"
    assert len(too_long) == socks4.MAX_REQUEST
    with pytest.raises(ClientProtocolError) as caught:
        socks4.parse_request(too_long)
    assert caught.value.reason == "bad_name"


@pytest.mark.parametrize(
    "raw",
    [
        b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 256,  # USERID over the cap, no NUL yet
        b"\x04\x01\x00\x50\x00\x00\x00\x01\x00" + b"h" * 256,  # hostname over the cap
        b"\x04\x01\x00\x50\x00\x00\x00\x01\x00\x00",  # empty hostname
        b"\x04\x01\x00\x50\x00\x00\x00\x01\x00h\xffst\x00",  # hostname not ASCII
        b"\x05\x01\x00\x50\x7f\x00\x00\x01\x00",  # not version 4
    ],
    ids=["userid-too-long", "hostname-too-long", "empty-hostname", "non-ascii-hostname", "version"],
)
def test_malformed_requests_raise(raw):
    with pytest.raises(ClientProtocolError):
        socks4.parse_request(bytearray(raw))


@given(st.binary(max_size=600))
def test_parser_never_crashes_and_never_overreads(data):
    buf = bytearray(b"\x04" + data)
    try:
        parsed = socks4.parse_request(buf)
    except ClientProtocolError:
        return
    if parsed is None:
        assert len(buf) < socks4.MAX_REQUEST + 1
    else:
        assert 9 <= parsed[1] <= min(len(buf), socks4.MAX_REQUEST)


def test_replies_are_8_bytes():
    assert socks4.encode_reply(socks4.Reply.GRANTED, Address("10.1.2.3", 4660)) == b"\x00\x5a\x12\x34\x0a\x01\x02\x03"
    assert socks4.encode_reply(socks4.Reply.REJECTED) == b"\x00\x5b" + b"\0" * 6
    # IPv6 cannot be carried: 0.0.0.0 ("the server's IP") with the port; a mapped address goes out as IPv4
    assert socks4.encode_reply(socks4.Reply.GRANTED, Address("::1", 80)) == b"\x00\x5a\x00\x50" + b"\0" * 4
    assert socks4.encode_reply(0x5A, Address("::ffff:1.2.3.4", 80)) == b"\x00\x5a\x00\x50\x01\x02\x03\x04"


# -- client side ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["connect-ipv4", "connect-4a", "bind-ipv4"])
def test_client_encoding_round_trips(name):
    raw, request = REQUESTS[name]
    assert socks4.encode_request(request.command, request.address, request.userid) == raw


def test_client_refuses_what_socks4_cannot_carry():
    with pytest.raises(ValueError):
        socks4.encode_request(1, Address("::1", 80))
    with pytest.raises(ValueError):
        socks4.encode_request(1, Address("h" * 256, 80))
    with pytest.raises(ValueError):
        socks4.encode_request(1, Address("1.2.3.4", 80), b"a\0b")


def test_client_parses_replies():
    reply = feed_every_split(socks4.parse_reply, b"\x00\x5a\x12\x34\x0a\x01\x02\x03")
    assert reply == socks4.ReplyMessage(0x5A, Address("10.1.2.3", 4660))
    assert socks4.parse_reply(bytearray(b"\x04\x5b" + b"\0" * 6 + b"extra"))[0].code == 0x5B
    with pytest.raises(ClientProtocolError):
        socks4.parse_reply(bytearray(b"\x05\x00" + b"\0" * 6))
