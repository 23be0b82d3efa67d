"""PROXY protocol v1/v2 codec: round trips, every split, and malformed input."""

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gproxy.codec.proxy_protocol import (
    MAX_HEADER,
    V1_MAX,
    V2_MAX_BODY,
    V2_SIGNATURE,
    ProxyHeader,
    Transport,
    encode_v1,
    encode_v2,
    parse_header,
)
from gproxy.core.addr import Address, unmap_ip
from gproxy.core.errors import ClientProtocolError

SRC4, DST4 = Address("192.0.2.7", 50312), Address("198.51.100.1", 1080)
SRC6, DST6 = Address("2001:db8::7", 65535), Address("2001:db8::1", 0)
AWS_TLV = b"\xea\x00\x0d\x01vpce-0123abcd"  # type 0xEA (AWS), length 13


def v2(command_version: int, family_transport: int, body: bytes) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", command_version, family_transport, len(body)) + body


HEADERS = [
    (encode_v1(SRC4, DST4), ProxyHeader(1, SRC4, DST4)),
    (encode_v1(SRC6, DST6), ProxyHeader(1, SRC6, DST6)),
    (encode_v1(None, None), ProxyHeader(1, None, None)),
    (b"PROXY UNKNOWN ffff:f::1 ffff:f::2 65535 65535\r\n", ProxyHeader(1, None, None)),
    (encode_v2(SRC4, DST4), ProxyHeader(2, SRC4, DST4)),
    (encode_v2(SRC6, DST6, tlvs=AWS_TLV), ProxyHeader(2, SRC6, DST6)),
    (encode_v2(SRC4, DST4, transport=Transport.DGRAM), ProxyHeader(2, SRC4, DST4)),
    (encode_v2(None, None), ProxyHeader(2, None, None)),
    (v2(0x20, 0x11, b"\1" * 12), ProxyHeader(2, None, None)),  # LOCAL: addresses ignored
    (v2(0x21, 0x00, b""), ProxyHeader(2, None, None)),  # PROXY over AF_UNSPEC
    (v2(0x21, 0x31, b"\0" * 216), ProxyHeader(2, None, None)),  # AF_UNIX: no IP
]


@pytest.mark.parametrize(("data", "expected"), HEADERS)
def test_every_split_of_a_header_then_payload(data, expected):
    """Incomplete at every shorter prefix; whole, it consumes exactly the header."""
    stream = data + b"\x05\x01\x00"  # a SOCKS5 greeting right behind the header
    for cut in range(len(data)):
        assert parse_header(stream[:cut]) is None, cut
    assert parse_header(stream) == (expected, len(data))
    assert parse_header(bytearray(data)) == (expected, len(data))


def test_v1_maximum_length_line_is_accepted():
    line = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"
    assert len(line) == 104 <= V1_MAX
    assert parse_header(line)[1] == len(line)
    assert parse_header(b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n")[1] == V1_MAX


@pytest.mark.parametrize(
    "data",
    [
        b"\x05\x01\x00",  # a SOCKS5 client talking straight to a --proxy-protocol port
        b"GET / HTTP/1.1\r\n",
        b"PROXZ",
        b"\r\n\r\n\x00\r\nQUIX",
        b"PROXY " + b"A" * (V1_MAX - 6),  # no CRLF within 107 bytes
        b"PROXY UNKNOWN " + b"x" * (V1_MAX - 15) + b"\r\n",  # 108 bytes
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF without CR
        b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 ::1 ::2 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 080 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # Arabic-Indic digit one
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY \r\n",
        b"PROXY TCP4 1.2.3.4\x00",
        v2(0x11, 0x11, b"\0" * 12),  # version 1 in the binary form
        v2(0x22, 0x11, b"\0" * 12),  # command 2
        v2(0x21, 0x41, b"\0" * 12),  # family 4
        v2(0x21, 0x13, b"\0" * 12),  # transport 3
        v2(0x21, 0x11, b"\0" * 11),  # AF_INET needs 12 bytes
        v2(0x21, 0x21, b"\0" * 35),  # AF_INET6 needs 36
        v2(0x21, 0x31, b"\0" * 215),  # AF_UNIX needs 216
        V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, V2_MAX_BODY + 1),  # too long: refused before the body
    ],
)
def test_malformed_headers_raise(data):
    with pytest.raises(ClientProtocolError) as caught:
        parse_header(data)
    assert caught.value.reason == "proxy_protocol"


def test_encoders_refuse_what_cannot_be_sent():
    with pytest.raises(ValueError):
        encode_v1(SRC4, DST6)
    with pytest.raises(ValueError):
        encode_v2(Address("example.com", 1), DST4)


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
)
ports = st.integers(0, 65535)


@given(addresses, ports, ports, st.booleans(), st.binary(max_size=64))
def test_round_trip(ips, sport, dport, binary, trailer):
    source, destination = Address(str(ips[0]), sport), Address(str(ips[1]), dport)
    data = encode_v2(source, destination, tlvs=trailer) if binary else encode_v1(source, destination)
    header, used = parse_header(data + trailer)
    unmapped = [Address(str(unmap_ip(ip)), a.port) for ip, a in zip(ips, (source, destination), strict=True)]
    assert (header.source, header.destination, used) == (*unmapped, len(data))


@given(st.binary(max_size=MAX_HEADER + 64))
def test_arbitrary_bytes_never_crash(data):
    """Any input: a header within its bound, None (need more), or ClientProtocolError."""
    try:
        parsed = parse_header(data)
    except ClientProtocolError:
        return
    if parsed is None:
        assert len(data) < MAX_HEADER
    else:
        assert 0 < parsed[1] <= min(len(data), MAX_HEADER)


@given(st.sampled_from([h for h, _ in HEADERS]), st.data())
def test_corrupted_headers_never_crash(header, data):
    """Flip one byte of a valid header: parse, need more, or a clean error."""
    index = data.draw(st.integers(0, len(header) - 1))
    value = data.draw(st.integers(0, 255))
    corrupted = header[:index] + bytes([value]) + header[index + 1 :]
    try:
        parsed = parse_header(corrupted)
    except ClientProtocolError:
        return
    assert parsed is None or parsed[1] <= MAX_HEADER


@pytest.mark.parametrize("binary", [False, True])
def test_ipv4_mapped_addresses_come_out_as_ipv4(binary):
    # HAProxy on a dual-stack socket (bind :::1080 v4v6) sends its IPv4 clients as ::ffff:a.b.c.d
    source, destination = Address("::ffff:192.0.2.7", 50312), Address("::ffff:198.51.100.1", 1080)
    header = (encode_v2 if binary else encode_v1)(source, destination)
    parsed, used = parse_header(header)
    assert used == len(header)
    assert (parsed.source, parsed.destination) == (Address("192.0.2.7", 50312), Address("198.51.100.1", 1080))
