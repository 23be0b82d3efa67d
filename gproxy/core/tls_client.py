"""gproxy's own outbound TLS: the client context (the system's store plus ``--ca``) and the
handshake over a connected socket. Used by TLS upstreams, DoT/DoH resolvers and the auth service.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING

from gproxy.core.errors import ConfigError

if TYPE_CHECKING:
    import ssl


def client_context(cafiles: Iterable[str], alpn: str | None = None) -> ssl.SSLContext:
    """The system's store plus ``cafiles`` (PEM); TLS 1.2+, certificate and host name always
    checked (verification is never switched off). ConfigError naming --ca for a bad file."""
    from gevent import ssl as gssl  # noqa: PLC0415 (gevent wants to patch ssl before anyone imports it)

    context: ssl.SSLContext = gssl.create_default_context()
    context.minimum_version = gssl.TLSVersion.TLSv1_2
    context.hostname_checks_common_name = False  # RFC 6125: the host must be in subjectAltName
    for path in cafiles:
        try:
            context.load_verify_locations(cafile=path)
        except OSError as exc:
            raise ConfigError(f"--ca {path}: {exc.strerror or exc}") from None
        except gssl.SSLError:
            raise ConfigError(f"--ca {path}: not a PEM certificate file") from None
    if alpn is not None:
        context.set_alpn_protocols([alpn])
    return context


def tls_connect(sock: socket.socket, context: ssl.SSLContext, host: str) -> socket.socket:
    """Wrap a connected socket and finish the client handshake (the caller bounds its time);
    the certificate is checked against ``host``, a name or an IP. Closes ``sock`` on failure."""
    try:
        tls: socket.socket = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise
    try:
        tls.do_handshake()  # type: ignore[attr-defined]
    except BaseException:
        tls.close()
        raise
    return tls
