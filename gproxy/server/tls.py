"""TLS for ``--https`` and ``--socks-tls``: the server context and a bounded handshake.

``ssl`` is imported lazily: the CLI imports gproxy before it monkey-patches,
and gevent wants to patch ``ssl`` before anyone imports it.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

import gevent

from gproxy.core.errors import ClientProtocolError, ConfigError, HandshakeTimeout, Outcome

if TYPE_CHECKING:
    import ssl


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context (TLS 1.2+) from PEM files; ConfigError naming the file at fault."""
    from gevent import ssl as gssl  # noqa: PLC0415 (see the module docstring)

    for flag, path in (("--cert", cert), ("--key", key)):
        if not os.path.isfile(path):
            raise ConfigError(f"{flag} {path}: no such file")
    context: ssl.SSLContext = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = gssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, gssl.SSLError) as exc:
        raise ConfigError(f"--cert {cert} --key {key}: cannot load the certificate and key ({exc})") from None
    return context


class TlsHandshakeFailed(ClientProtocolError):
    """The client did not complete a TLS handshake (wrong protocol, bad certificate...):
    a handshake failure like any other protocol error (``gproxy_handshake_failures_total``)."""

    reason = Outcome.TLS_FAILED


def accept(sock: socket.socket, context: ssl.SSLContext, timeout: float) -> socket.socket:
    """Wrap an accepted socket and finish the handshake within ``timeout``.

    Runs in the client's own greenlet, never in the accept loop.
    """
    import ssl  # noqa: PLC0415

    tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    try:
        with gevent.Timeout(timeout, HandshakeTimeout("TLS handshake timed out")):
            tls.do_handshake()
    except ssl.SSLError as exc:
        tls.close()
        raise TlsHandshakeFailed(f"TLS handshake failed: {exc.reason or exc}") from None
    except BaseException:
        tls.close()
        raise
    return tls
