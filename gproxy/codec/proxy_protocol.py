"""PROXY protocol v1 (text) and v2 (binary), as sent by HAProxy and cloud load balancers.

``parse_header(buf)`` returns ``None`` while the header is incomplete, else
``(ProxyHeader, bytes_used)``; anything that is not a valid header raises
ClientProtocolError at the first byte that proves it. The encoders are for
tests and for sending a header upstream.
Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import IntEnum

from gproxy.core.addr import Address, parse_ip, unmap_ip
from gproxy.core.errors import ClientProtocolError, Outcome

V1_PREFIX = b"PROXY "
#: the longest v1 line, CRLF included ("PROXY UNKNOWN" + two IPv6 addresses and ports)
V1_MAX = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
#: the most address + TLV bytes accepted after the 16-byte v2 prefix
V2_MAX_BODY = 4096
#: the most bytes any header may take
MAX_HEADER = V2_FIXED + V2_MAX_BODY


class Command(IntEnum):
    LOCAL = 0x0
    PROXY = 0x1


class Transport(IntEnum):
    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


#: v2 address family nibble -> bytes of addresses and ports
_V2_FAMILIES = {0x0: 0, 0x1: 12, 0x2: 36, 0x3: 216}
_AF_INET, _AF_INET6 = 0x1, 0x2
_TRANSPORTS = frozenset(int(t) for t in Transport)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the load balancer saw; addresses are None for LOCAL, UNKNOWN and non-IP families."""

    version: int
    source: Address | None
    destination: Address | None


def _fail(message: str) -> ClientProtocolError:
    return ClientProtocolError(f"PROXY protocol: {message}", reason=Outcome.PROXY_PROTOCOL)


def parse_header(buf: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    """A v1 or v2 header at the start of ``buf``, told apart by the first byte."""
    if not buf:
        return None
    signature = V1_PREFIX if buf[0] == V1_PREFIX[0] else V2_SIGNATURE
    head = bytes(buf[: len(signature)])
    if not signature.startswith(head):
        raise _fail("no PROXY header")
    if len(head) < len(signature):
        return None
    return _parse_v1(buf) if signature is V1_PREFIX else _parse_v2(buf)


# -- v1 -----------------------------------------------------------------------------


def _parse_v1(buf: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    end = bytes(buf[:V1_MAX]).find(b"\r\n")
    if end < 0:
        if len(buf) >= V1_MAX:
            raise _fail(f"v1 line longer than {V1_MAX} bytes")
        if not _printable(bytes(buf[:-1])) or not (_printable(bytes(buf[-1:])) or buf[-1] == 0x0D):
            raise _fail("v1 line has a byte that is not printable ASCII")
        return None
    if not _printable(bytes(buf[:end])):
        raise _fail("v1 line has a byte that is not printable ASCII")
    line = bytes(buf[:end]).decode("ascii")
    fields = line.split(" ")
    if fields[1:2] == ["UNKNOWN"]:
        return ProxyHeader(1, None, None), end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise _fail(f"bad v1 line {line[:60]!r}")
    version = 4 if fields[1] == "TCP4" else 6
    source = Address(_v1_ip(fields[2], version), _v1_port(fields[4]))
    destination = Address(_v1_ip(fields[3], version), _v1_port(fields[5]))
    return ProxyHeader(1, source, destination), end + 2


def _printable(data: bytes) -> bool:
    return all(0x20 <= byte <= 0x7E for byte in data)


def _v1_ip(text: str, version: int) -> str:
    ip = parse_ip(text) if "%" not in text else None
    if ip is None or ip.version != version:
        raise _fail(f"{text[:45]!r} is not an IPv{version} address")
    return str(unmap_ip(ip))


def _v1_port(text: str) -> int:
    if not (text.isdigit() and text.isascii() and len(text) <= 5) or (text[0] == "0" and text != "0"):
        raise _fail(f"bad v1 port {text[:8]!r}")
    port = int(text)
    if port > 65535:
        raise _fail(f"v1 port {port} out of range")
    return port


# -- v2 -----------------------------------------------------------------------------


def _parse_v2(buf: bytes | bytearray | memoryview) -> tuple[ProxyHeader, int] | None:
    if len(buf) < V2_FIXED:
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", buf, 12)
    if version_command >> 4 != 2:
        raise _fail(f"v2 version {version_command >> 4} is not 2")
    command = version_command & 0xF
    if command not in (Command.LOCAL, Command.PROXY):
        raise _fail(f"unknown v2 command {command:#x}")
    family, transport = family_transport >> 4, family_transport & 0xF
    if family not in _V2_FAMILIES or transport not in _TRANSPORTS:
        raise _fail(f"unknown v2 address family/transport {family_transport:#04x}")
    if length > V2_MAX_BODY:
        raise _fail(f"v2 header of {length} bytes is larger than {V2_MAX_BODY}")
    end = V2_FIXED + length
    if len(buf) < end:
        return None
    if command == Command.LOCAL:
        return ProxyHeader(2, None, None), end  # health checks; addresses (if any) ignored
    if length < _V2_FAMILIES[family]:
        raise _fail(f"v2 address block of {length} bytes is too short for family {family:#x}")
    if family == _AF_INET:
        src, dst, sport, dport = struct.unpack_from("!4s4sHH", buf, V2_FIXED)
    elif family == _AF_INET6:
        src, dst, sport, dport = struct.unpack_from("!16s16sHH", buf, V2_FIXED)
    else:
        return ProxyHeader(2, None, None), end  # AF_UNSPEC / AF_UNIX: no IP to use
    # TLVs after the addresses (up to `end`) are skipped.
    source = Address(str(unmap_ip(ipaddress.ip_address(src))), sport)
    return ProxyHeader(2, source, Address(str(unmap_ip(ipaddress.ip_address(dst))), dport)), end


# -- encoders -----------------------------------------------------------------------


def encode_v1(source: Address | None, destination: Address | None) -> bytes:
    """``PROXY TCP4|TCP6 SRC DST SPORT DPORT\\r\\n``, or ``PROXY UNKNOWN\\r\\n`` without addresses."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    version = _ip_version(source, destination)
    return f"PROXY TCP{version} {source.host} {destination.host} {source.port} {destination.port}\r\n".encode()


def encode_v2(
    source: Address | None,
    destination: Address | None,
    *,
    transport: Transport = Transport.STREAM,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: PROXY with both addresses, or LOCAL when they are None."""
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20 | Command.LOCAL, 0, len(tlvs)) + tlvs
    version = _ip_version(source, destination)
    family = _AF_INET if version == 4 else _AF_INET6
    src, dst = (ipaddress.ip_address(a.host).packed for a in (source, destination))
    body = src + dst + struct.pack("!HH", source.port, destination.port) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | Command.PROXY, family << 4 | transport, len(body)) + body


def _ip_version(source: Address, destination: Address) -> int:
    ips = (source.ip, destination.ip)
    if ips[0] is None or ips[1] is None or ips[0].version != ips[1].version:
        raise ValueError("PROXY protocol needs two IP addresses of the same family")
    return ips[0].version
