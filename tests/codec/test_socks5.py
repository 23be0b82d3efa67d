"""SOCKS5 codec: byte tables, every split offset, pipelining, malformed input."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproxy.codec import socks5
from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address, unmap_ip
from gproxy.core.errors import ClientProtocolError
from tests.helpers import feed_every_split

GREETING = b"\x05\x02\x00\x02"
AUTH = b"\x01\x05alice\x06secret"
REQUESTS = {
    "ipv4": (b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50", Address("127.0.0.1", 80)),
    "ipv6": (b"\x05\x01\x00\x04" + b"\x00" * 15 + b"\x01\x01\xbb", Address("::1", 443)),
    "domain": (b"\x05\x01\x00\x03\x0bexample.com\x1f\x90", Address("example.com", 8080)),
}


def test_greeting():
    greeting = feed_every_split(socks5.parse_greeting, GREETING)
    assert greeting.methods == {0, 2}


def test_auth():
    auth = feed_every_split(socks5.parse_auth, AUTH)
    assert (auth.username, auth.password) == (b"alice", b"secret")


def test_auth_empty_password():
    auth = feed_every_split(socks5.parse_auth, b"\x01\x01u\x00")
    assert (auth.username, auth.password) == (b"u", b"")


@pytest.mark.parametrize("name", REQUESTS)
def test_request(name):
    wire, address = REQUESTS[name]
    request = feed_every_split(socks5.parse_request, wire)
    assert request.command == socks5.Command.CONNECT
    assert request.address == address


@pytest.mark.parametrize("name", REQUESTS)
def test_request_pipelined_leaves_payload(name):
    wire, _ = REQUESTS[name]
    parsed = socks5.parse_request(bytearray(wire + b"GET / HTTP/1.1\r\n"))
    assert parsed is not None and parsed[1] == len(wire)


def test_whole_handshake_pipelined_in_one_buffer():
    buf = bytearray(GREETING + AUTH + REQUESTS["domain"][0] + b"early")
    for parse in (socks5.parse_greeting, socks5.parse_auth, socks5.parse_request):
        parsed = parse(buf)
        assert parsed is not None
        del buf[: parsed[1]]
    assert buf == b"early"


def test_unknown_command_still_parses():
    request, _ = socks5.parse_request(b"\x05\x09\x00\x01\x01\x02\x03\x04\x00\x01")
    assert request.command == 9


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (b"\x05\x01\x00\x05\x00\x00", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x00\x00\x00\x00", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x00\x03\x00\x00\x50", ReplyCode.HOST_UNREACHABLE),  # empty name
        (b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50", ReplyCode.HOST_UNREACHABLE),  # not UTF-8
        (b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", ReplyCode.GENERAL_FAILURE),  # wrong version
    ],
)
def test_malformed_requests(wire, reply):
    with pytest.raises(ClientProtocolError) as info:
        socks5.parse_request(bytearray(wire))
    assert info.value.reply == reply


@pytest.mark.parametrize("wire", [b"\x04\x01\x00", b"\x05\x00", b"\x47ET / HTTP/1.1"])
def test_malformed_greetings(wire):
    with pytest.raises(ClientProtocolError):
        socks5.parse_greeting(bytearray(wire))


def test_bad_auth_version():
    with pytest.raises(ClientProtocolError):
        socks5.parse_auth(bytearray(b"\x05\x01u\x01p"))


@pytest.mark.parametrize(
    ("address", "wire"),
    [
        (Address("10.1.2.3", 1080), b"\x05\x00\x00\x01\x0a\x01\x02\x03\x04\x38"),
        (Address("::ffff:10.1.2.3", 1080), b"\x05\x00\x00\x01\x0a\x01\x02\x03\x04\x38"),  # mapped -> IPv4
        (Address("::1", 1), b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01\x00\x01"),
        (None, b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
    ],
)
def test_encode_reply_full_length(address, wire):
    assert socks5.encode_reply(ReplyCode.SUCCEEDED, address) == wire


def test_reply_roundtrip_through_client_parser():
    wire = socks5.encode_reply(ReplyCode.CONNECTION_REFUSED, Address("192.0.2.1", 7))
    reply = feed_every_split(socks5.parse_reply, wire)
    assert (reply.code, reply.address) == (5, Address("192.0.2.1", 7))


def test_udp_header():
    datagram = socks5.encode_udp_header(Address("example.com", 53)) + b"payload"
    header, offset = socks5.parse_udp_header(datagram)
    assert (header.frag, header.address, datagram[offset:]) == (0, Address("example.com", 53), b"payload")


@pytest.mark.parametrize("datagram", [b"", b"\0\0\0", b"\0\0\0\x01\x7f\0", b"\0\0\0\x09abcdefgh"])
def test_udp_header_malformed(datagram):
    with pytest.raises(ClientProtocolError):
        socks5.parse_udp_header(datagram)


addresses = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63}){0,3}", fullmatch=True).filter(lambda h: len(h) < 256),
).flatmap(lambda host: st.builds(Address, st.just(host), st.integers(0, 65535)))


@given(addresses, st.sampled_from(list(socks5.Command)))
def test_request_roundtrip(address, command):
    wire = socks5.encode_request(command, address)
    request, used = socks5.parse_request(bytearray(wire))
    assert used == len(wire) and request.command == command
    assert request.address.port == address.port
    if address.ip is None:
        assert request.address.host == address.host
    else:  # IPv4-mapped IPv6 goes out as IPv4 (SPEC)
        assert request.address.ip == unmap_ip(address.ip)


@given(st.binary(max_size=300))
def test_parsers_never_raise_anything_else(data):
    for parse in (
        socks5.parse_greeting,
        socks5.parse_auth,
        socks5.parse_request,
        socks5.parse_reply,
        socks5.parse_method_choice,
    ):
        try:
            result = parse(bytearray(data))
        except ClientProtocolError:
            continue
        assert result is None or 0 < result[1] <= len(data)


@pytest.mark.parametrize("packed", [b"\0\0\0\0", b"\x7f\0\0\x01", b"\x0a\x00\xff\x09", b"\xff\xff\xff\xff"])
def test_ipv4_request_text_is_what_ipaddress_prints(packed):
    request = b"\x05\x01\x00\x01" + packed + b"\x01\xbb"
    parsed = socks5.parse_request(bytearray(request))
    assert parsed is not None
    assert parsed[0].address == Address(str(ipaddress.IPv4Address(packed)), 443)
    assert parsed[0].address.ip == ipaddress.IPv4Address(packed)
