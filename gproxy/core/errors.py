"""The whole gproxy exception tree and the one vocabulary for how things end (``Outcome``).

Handlers catch ``GproxyError`` and ``OSError`` at the top of a connection;
nothing else may reach gevent's traceback printer.
"""

from __future__ import annotations

import sys
from enum import StrEnum

from gproxy.codec.replies import ReplyCode


class Outcome(StrEnum):
    """How a session (or a connection refused at accept) ended: the access log's ``outcome=``,
    the metrics' ``outcome``/``reason`` labels and ``GproxyError.reason``. Listed in the README."""

    OK = "ok"
    # the connection itself
    CLIENT_CLOSED = "client_closed"
    RESET = "reset"
    BROKEN_PIPE = "broken_pipe"
    TIMED_OUT = "timed_out"
    ERROR = "error"
    IDLE_TIMEOUT = "idle_timeout"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    SHUTDOWN = "shutdown"
    ADMIN_CLOSED = "admin_closed"
    EVICTED = "evicted"
    UPSTREAM_CLOSED = "upstream_closed"
    # who may use the proxy
    AUTH_FAILED = "auth_failed"
    AUTH_UNAVAILABLE = "auth_unavailable"
    NO_ACCEPTABLE_METHOD = "no_acceptable_method"
    SOCKS4_NEEDS_AUTH = "socks4_needs_auth"
    USER_LIMIT = "user_limit"
    DENIED = "denied"
    NOT_REDIRECTED = "not_redirected"
    # what the client sent
    PROTOCOL = "protocol"
    BAD_VERSION = "bad_version"
    BAD_COMMAND = "bad_command"
    BAD_REQUEST = "bad_request"
    BAD_NAME = "bad_name"
    URI_TOO_LONG = "uri_too_long"
    HEADERS_TOO_LARGE = "headers_too_large"
    NOT_IMPLEMENTED = "not_implemented"
    PROXY_PROTOCOL = "proxy_protocol"
    SS_PROTOCOL = "ss_protocol"
    SS_PROBE = "ss_probe"
    TLS_FAILED = "tls_failed"
    # the outbound side: a dial failure is its SOCKS5 reply code's name
    GENERAL_FAILURE = "general_failure"
    NOT_ALLOWED = "not_allowed"
    NETWORK_UNREACHABLE = "network_unreachable"
    HOST_UNREACHABLE = "host_unreachable"
    CONNECTION_REFUSED = "connection_refused"
    TTL_EXPIRED = "ttl_expired"
    COMMAND_NOT_SUPPORTED = "command_not_supported"
    ADDRESS_TYPE_NOT_SUPPORTED = "address_type_not_supported"
    ORIGIN_ERROR = "origin_error"
    ORIGIN_TIMEOUT = "origin_timeout"
    BIND_FAILED = "bind_failed"
    UDP_BIND_FAILED = "udp_bind_failed"
    # gproxy's own settings
    CONFIG = "config"
    # closed at accept, before a session (gproxy_connections_refused's reason)
    CLIENT_DENIED = "client_denied"
    MAX_CONNS = "max_conns"
    MAX_CONNS_PER_IP = "max_conns_per_ip"
    OUT_OF_FDS = "out_of_fds"

    @classmethod
    def of_reply(cls, reply: ReplyCode) -> Outcome:
        """The outcome of a dial that failed with this SOCKS5 reply code."""
        return cls(reply.name.lower())


class GproxyError(Exception):
    """Base of every error gproxy raises on purpose.

    ``reason`` is its Outcome: the access-log outcome and the metrics label.
    A subclass sets a default; ``reason=`` overrides it.
    """

    reason: Outcome = Outcome.ERROR

    def __init__(self, message: str = "", *, reason: Outcome | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(GproxyError):
    """A user's mistake in flags, the config file or the environment (exit 2)."""

    reason = Outcome.CONFIG


class ClientProtocolError(GproxyError):
    """The client sent something the protocol does not allow.

    ``reply`` is the SOCKS reply hint for front ends that can still answer.
    """

    reason = Outcome.PROTOCOL

    def __init__(
        self, message: str, reply: ReplyCode = ReplyCode.GENERAL_FAILURE, *, reason: Outcome | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.reply = reply


class ClientClosed(GproxyError):
    """The client closed the connection before the handshake finished."""

    reason = Outcome.CLIENT_CLOSED


class AuthFailed(GproxyError):
    """Credentials were missing or wrong."""

    reason = Outcome.AUTH_FAILED


class Denied(GproxyError):
    """An access rule refused the client or the destination."""

    reason = Outcome.DENIED
    reply = ReplyCode.NOT_ALLOWED


class HandshakeTimeout(GproxyError):
    """The client did not finish its request within --handshake-timeout."""

    reason = Outcome.HANDSHAKE_TIMEOUT


class DialError(GproxyError, OSError):
    """The outbound connection failed; ``reply`` says how, as a SOCKS5 code."""

    reason = Outcome.GENERAL_FAILURE  # set from ``reply`` by __init__

    def __init__(self, message: str, reply: ReplyCode) -> None:
        super().__init__(message, reason=Outcome.of_reply(reply))
        self.reply = reply


class UpstreamDown(DialError):
    """The upstream itself failed: unreachable, its own handshake (credentials, TLS,
    protocol garbage) or no answer to it. Not a destination error that it reports:
    a group marks the upstream down and moves on to the next one."""


def _is_tls_eof(exc: OSError) -> bool:
    """A TLS peer gone without close_notify: what TCP calls a broken pipe (ssl only if loaded)."""
    ssl = sys.modules.get("ssl")
    return ssl is not None and isinstance(exc, ssl.SSLEOFError)


def outcome_of(exc: OSError) -> Outcome:
    """The outcome of a session that ended with this socket error, whatever phase it was in
    (handshake or relay): Python picks the subclass from the errno (ECONNRESET, EPIPE, ETIMEDOUT)."""
    if isinstance(exc, GproxyError):
        return exc.reason
    if isinstance(exc, ConnectionResetError):
        return Outcome.RESET
    if isinstance(exc, BrokenPipeError) or _is_tls_eof(exc):
        return Outcome.BROKEN_PIPE
    if isinstance(exc, TimeoutError):
        return Outcome.TIMED_OUT
    return Outcome.ERROR
