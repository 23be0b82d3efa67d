"""SOCKS4 and SOCKS4a wire format, both sides.

Server side: parse CONNECT/BIND requests (4a's ``0.0.0.x`` + hostname form)
and encode the 8-byte replies. Client side (upstream chaining): encode a
request and parse the reply. No socket or gevent imports here.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from gproxy.core.addr import Address, canonical_host, parse_ip, unmap_ip
from gproxy.core.errors import ClientProtocolError, Outcome

VERSION = 4
#: the version byte of a reply (SOCKS4 replies carry 0, not 4)
REPLY_VERSION = 0
#: USERID and 4a hostname caps, NUL excluded (Dante and microsocks use 255 too)
MAX_USERID = 255
MAX_HOSTNAME = 255
#: the longest request: header, USERID, NUL, hostname, NUL
MAX_REQUEST = 8 + MAX_USERID + 1 + MAX_HOSTNAME + 1

Buffer = bytes | bytearray | memoryview


class Command(IntEnum):
    CONNECT = 0x01
    BIND = 0x02


class Reply(IntEnum):
    GRANTED = 0x5A
    REJECTED = 0x5B
    NO_IDENTD = 0x5C
    IDENTD_MISMATCH = 0x5D


@dataclass(frozen=True, slots=True)
class Request:
    command: int  # a Command value, or an unknown one the server rejects
    address: Address
    userid: bytes
    socks4a: bool  # the destination came as a hostname (0.0.0.x form)


@dataclass(frozen=True, slots=True)
class ReplyMessage:
    code: int
    address: Address


def _find_nul(buf: Buffer, start: int, cap: int, what: str) -> int | None:
    """Index of the NUL ending a field of at most ``cap`` bytes at ``start``."""
    end = bytes(buf[start : start + cap + 1]).find(b"\0")
    if end >= 0:
        return start + end
    if len(buf) - start > cap:
        raise ClientProtocolError(f"SOCKS4 {what} longer than {cap} bytes", reason=Outcome.BAD_REQUEST)
    return None


def parse_request(buf: Buffer) -> tuple[Request, int] | None:
    """``VN CD DSTPORT DSTIP USERID NUL [HOSTNAME NUL]``

    Returns None until the whole request is there.
    Raises:
        ClientProtocolError: wrong version, or a field over its cap.
    """
    if not buf:
        return None
    if buf[0] != VERSION:
        raise ClientProtocolError(f"not SOCKS4 (version byte {buf[0]:#04x})", reason=Outcome.BAD_VERSION)
    if len(buf) < 8:
        return None
    command = buf[1]
    (port,) = struct.unpack_from("!H", buf, 2)
    raw_ip = bytes(buf[4:8])
    userid_end = _find_nul(buf, 8, MAX_USERID, "USERID")
    if userid_end is None:
        return None
    userid = bytes(buf[8:userid_end])
    # SOCKS4a: 0.0.0.x with x != 0 means "a hostname follows the USERID".
    if raw_ip[:3] == b"\0\0\0" and raw_ip[3] != 0:
        name_end = _find_nul(buf, userid_end + 1, MAX_HOSTNAME, "hostname")
        if name_end is None:
            return None
        raw_name = bytes(buf[userid_end + 1 : name_end])
        try:
            host = raw_name.decode("ascii")
        except UnicodeDecodeError:
            raise ClientProtocolError("SOCKS4a hostname is not ASCII", reason=Outcome.BAD_REQUEST) from None
        if not host:
            raise ClientProtocolError("empty SOCKS4a hostname", reason=Outcome.BAD_REQUEST)
        return Request(command, Address(canonical_host(host), port), userid, True), name_end + 1
    host = str(ipaddress.IPv4Address(raw_ip))
    return Request(command, Address(host, port), userid, False), userid_end + 1


def encode_reply(code: int, address: Address | None = None) -> bytes:
    """The 8-byte reply. An address that is not IPv4 goes out as 0.0.0.0 with
    its port: "use the SOCKS server's IP" (the SOCKS4 BIND convention)."""
    port, packed = 0, b"\0\0\0\0"
    if address is not None:
        port = address.port
        ip = parse_ip(address.host)
        if ip is not None and unmap_ip(ip).version == 4:
            packed = unmap_ip(ip).packed
    return bytes((REPLY_VERSION, code)) + struct.pack("!H", port) + packed


# -- client side (upstream chaining) ------------------------------------------


def encode_request(command: int, address: Address, userid: bytes = b"") -> bytes:
    """A request; names (and nothing else) use the SOCKS4a form.

    Raises:
        ValueError: an IPv6 destination (SOCKS4 cannot carry one), or an over-long field.
    """
    if len(userid) > MAX_USERID or b"\0" in userid:
        raise ValueError("SOCKS4 USERID must be at most 255 bytes without NUL")
    port = struct.pack("!H", address.port)
    ip = parse_ip(address.host)
    if ip is None:
        name = address.host.encode("idna" if not address.host.isascii() else "ascii")
        if not 0 < len(name) <= MAX_HOSTNAME or b"\0" in name:
            raise ValueError(f"hostname of {len(name)} bytes cannot be sent over SOCKS4a")
        return bytes((VERSION, command)) + port + b"\0\0\0\x01" + userid + b"\0" + name + b"\0"
    ip = unmap_ip(ip)
    if ip.version != 4:
        raise ValueError("SOCKS4 cannot carry an IPv6 destination")
    return bytes((VERSION, command)) + port + ip.packed + userid + b"\0"


def parse_reply(buf: Buffer) -> tuple[ReplyMessage, int] | None:
    """``VN CD DSTPORT DSTIP``; VN is 0 (some servers send 4, accepted too)."""
    if len(buf) < 8:
        return None
    if buf[0] not in (REPLY_VERSION, VERSION):
        raise ClientProtocolError(f"bad SOCKS4 reply version {buf[0]:#04x}")
    (port,) = struct.unpack_from("!H", buf, 2)
    host = str(ipaddress.IPv4Address(bytes(buf[4:8])))
    return ReplyMessage(buf[1], Address(host, port)), 8
