"""SOCKS5 reply codes (RFC 1928 section 6), shared by every front end.

Front ends that are not SOCKS5 translate these into their own answers
(SOCKS4 0x5B, HTTP 403/502/504).
"""

from __future__ import annotations

from enum import IntEnum


class ReplyCode(IntEnum):
    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08
