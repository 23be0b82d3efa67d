"""SOCKS5 wire format (RFC 1928) and username/password auth (RFC 1929).

Both sides: the server parses greetings, auth and requests and encodes
replies; the client side (for upstream chaining) does the reverse. Every
parser returns ``None`` while it needs more bytes, else ``(message, used)``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address, canonical_host, parse_ip, unmap_ip
from gproxy.core.errors import ClientProtocolError

VERSION = 5
AUTH_VERSION = 1
MAX_UDP_PAYLOAD = 65507
#: the largest UDP header: RSV(2) FRAG(1) ATYP(1) LEN(1) NAME(255) PORT(2)
MAX_UDP_HEADER = 262

Buffer = bytes | bytearray | memoryview


class AuthMethod(IntEnum):
    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(IntEnum):
    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(IntEnum):
    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


@dataclass(frozen=True, slots=True)
class Greeting:
    methods: frozenset[int]


@dataclass(frozen=True, slots=True)
class AuthRequest:
    username: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class Request:
    command: int  # a Command value, or an unknown one the server answers 0x07
    address: Address


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    address: Address


@dataclass(frozen=True, slots=True)
class UdpHeader:
    frag: int
    address: Address


# -- addresses ---------------------------------------------------------------


def parse_address(buf: Buffer, offset: int) -> tuple[Address, int] | None:
    """Parse ``ATYP ADDR PORT`` at ``offset``; returns the address and its end."""
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    if atyp == AddressType.IPV4:
        end = offset + 7
        if len(buf) < end:
            return None
        host = f"{buf[offset + 1]}.{buf[offset + 2]}.{buf[offset + 3]}.{buf[offset + 4]}"  # str(IPv4Address)
    elif atyp == AddressType.IPV6:
        end = offset + 19
        if len(buf) < end:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[offset + 1 : offset + 17])))
    elif atyp == AddressType.DOMAIN:
        if len(buf) < offset + 2:
            return None
        end = offset + 2 + buf[offset + 1] + 2
        if len(buf) < end:
            return None
        raw = bytes(buf[offset + 2 : end - 2])
        try:
            host = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ClientProtocolError("domain name is not UTF-8", ReplyCode.HOST_UNREACHABLE) from None
        if not host:
            raise ClientProtocolError("empty domain name", ReplyCode.HOST_UNREACHABLE)
        host = canonical_host(host)  # rules and resolver see one spelling
    else:
        raise ClientProtocolError(f"address type {atyp:#04x} not supported", ReplyCode.ADDRESS_TYPE_NOT_SUPPORTED)
    (port,) = struct.unpack_from("!H", buf, end - 2)
    return Address(host, port), end


def encode_address(address: Address) -> bytes:
    """``ATYP ADDR PORT`` for an address; IPv4-mapped IPv6 goes out as IPv4."""
    port = struct.pack("!H", address.port)
    ip = parse_ip(address.host)
    if ip is None:
        name = address.host.encode("idna" if not address.host.isascii() else "ascii")
        if not 0 < len(name) < 256:
            raise ValueError(f"domain name of {len(name)} bytes cannot be encoded")
        return bytes((AddressType.DOMAIN, len(name))) + name + port
    ip = unmap_ip(ip)
    atyp = AddressType.IPV4 if ip.version == 4 else AddressType.IPV6
    return bytes((atyp,)) + ip.packed + port


# -- server side --------------------------------------------------------------


def parse_greeting(buf: Buffer) -> tuple[Greeting, int] | None:
    """``VER NMETHODS METHODS...``"""
    if len(buf) < 2:
        return None
    if buf[0] != VERSION:
        raise ClientProtocolError(f"not SOCKS5 (version byte {buf[0]:#04x})")
    end = 2 + buf[1]
    if buf[1] == 0:
        raise ClientProtocolError("greeting offers no methods")
    if len(buf) < end:
        return None
    return Greeting(frozenset(buf[2:end])), end


def encode_method_choice(method: int) -> bytes:
    return bytes((VERSION, method))


def parse_auth(buf: Buffer) -> tuple[AuthRequest, int] | None:
    """RFC 1929: ``VER ULEN UNAME PLEN PASSWD``"""
    if len(buf) < 2:
        return None
    if buf[0] != AUTH_VERSION:
        raise ClientProtocolError(f"bad auth version {buf[0]:#04x}")
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    return AuthRequest(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])), end


def encode_auth_reply(ok: bool) -> bytes:
    return bytes((AUTH_VERSION, 0 if ok else 1))


def parse_request(buf: Buffer) -> tuple[Request, int] | None:
    """``VER CMD RSV ATYP DST.ADDR DST.PORT``"""
    if len(buf) < 4:
        return None
    if buf[0] != VERSION:
        raise ClientProtocolError(f"bad request version {buf[0]:#04x}")
    parsed = parse_address(buf, 3)
    if parsed is None:
        return None
    address, end = parsed
    return Request(buf[1], address), end


def encode_reply(code: int, address: Address | None = None) -> bytes:
    """A full-length reply; with no address, ``0.0.0.0:0``."""
    bound = encode_address(address) if address is not None else b"\x01\0\0\0\0\0\0"
    return bytes((VERSION, code, 0)) + bound


# -- client side (upstream chaining) ------------------------------------------


def encode_greeting(methods: list[int]) -> bytes:
    return bytes((VERSION, len(methods), *methods))


def parse_method_choice(buf: Buffer) -> tuple[int, int] | None:
    if len(buf) < 2:
        return None
    if buf[0] != VERSION:
        raise ClientProtocolError(f"upstream is not SOCKS5 (version byte {buf[0]:#04x})")
    return buf[1], 2


def encode_auth(username: bytes, password: bytes) -> bytes:
    if len(username) > 255 or len(password) > 255:
        raise ValueError("RFC 1929 user names and passwords are at most 255 bytes")
    return bytes((AUTH_VERSION, len(username))) + username + bytes((len(password),)) + password


def parse_auth_reply(buf: Buffer) -> tuple[bool, int] | None:
    if len(buf) < 2:
        return None
    return buf[1] == 0, 2


def encode_request(command: int, address: Address) -> bytes:
    return bytes((VERSION, command, 0)) + encode_address(address)


def parse_reply(buf: Buffer) -> tuple[Reply, int] | None:
    if len(buf) < 4:
        return None
    if buf[0] != VERSION:
        raise ClientProtocolError(f"bad reply version {buf[0]:#04x}")
    parsed = parse_address(buf, 3)
    if parsed is None:
        return None
    address, end = parsed
    return Reply(buf[1], address), end


# -- UDP datagrams --------------------------------------------------------------


def parse_udp_header(datagram: Buffer) -> tuple[UdpHeader, int]:
    """``RSV RSV FRAG ATYP DST.ADDR DST.PORT``; returns the header and payload offset.

    A datagram is whole, so a short one is malformed rather than incomplete.
    """
    if len(datagram) < 4:
        raise ClientProtocolError("UDP datagram shorter than its header")
    parsed = parse_address(datagram, 3)
    if parsed is None:
        raise ClientProtocolError("UDP datagram shorter than its header")
    address, end = parsed
    return UdpHeader(datagram[2], address), end


def encode_udp_header(address: Address) -> bytes:
    return b"\0\0\0" + encode_address(address)
