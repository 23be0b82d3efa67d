"""gproxy: a SOCKS and HTTP proxy server on gevent.

Public API::

    from gproxy import Config, Proxy
    with Proxy(Config.build(socks=["127.0.0.1:0"], user=["u:p"])) as proxy:
        host, port = proxy.address("socks5").host, proxy.address("socks5").port
"""

from __future__ import annotations

__version__ = "0.1.0"

from gproxy.config import Config, ListenerSpec  # noqa: E402
from gproxy.errors import (  # noqa: E402
    AuthFailed,
    ClientProtocolError,
    ConfigError,
    Denied,
    DialError,
    GproxyError,
    HandshakeTimeout,
)
from gproxy.server import Proxy  # noqa: E402

__all__ = [
    "AuthFailed",
    "ClientProtocolError",
    "Config",
    "ConfigError",
    "Denied",
    "DialError",
    "GproxyError",
    "HandshakeTimeout",
    "ListenerSpec",
    "Proxy",
    "__version__",
]
