"""The whole gproxy exception tree.

Handlers catch ``GproxyError`` and ``OSError`` at the top of a connection;
nothing else may reach gevent's traceback printer.
"""

from __future__ import annotations

from gproxy.codec.replies import ReplyCode


class GproxyError(Exception):
    """Base of every error gproxy raises on purpose.

    ``reason`` is a short machine-friendly word: the access-log outcome and
    the metrics label. A subclass sets a default; ``reason=`` overrides it.
    """

    reason = "error"

    def __init__(self, message: str = "", *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConfigError(GproxyError):
    """A user's mistake in flags, the config file or the environment (exit 2)."""

    reason = "config"


class ClientProtocolError(GproxyError):
    """The client sent something the protocol does not allow.

    ``reply`` is the SOCKS reply hint for front ends that can still answer.
    """

    reason = "protocol"

    def __init__(
        self, message: str, reply: ReplyCode = ReplyCode.GENERAL_FAILURE, *, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.reply = reply


class ClientClosed(GproxyError):
    """The client closed the connection before the handshake finished."""

    reason = "client_closed"


class AuthFailed(GproxyError):
    """Credentials were missing or wrong."""

    reason = "auth_failed"


class Denied(GproxyError):
    """An access rule refused the client or the destination."""

    reason = "denied"
    reply = ReplyCode.NOT_ALLOWED


class HandshakeTimeout(GproxyError):
    """The client did not finish its request within --handshake-timeout."""

    reason = "handshake_timeout"


class DialError(GproxyError, OSError):
    """The outbound connection failed; ``reply`` says how, as a SOCKS5 code."""

    reason = "dial_failed"

    def __init__(self, message: str, reply: ReplyCode) -> None:
        super().__init__(message, reason=reply.name.lower())
        self.reply = reply


class UpstreamDown(DialError):
    """The upstream itself failed: unreachable, its own handshake (credentials, TLS,
    protocol garbage) or no answer to it. Not a destination error that it reports:
    a group marks the upstream down and moves on to the next one."""
