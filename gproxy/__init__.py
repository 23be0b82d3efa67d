"""gproxy: a SOCKS and HTTP proxy server on gevent.

Public API::

    from gproxy import Config, Proxy, serve_in_thread
    with Proxy(Config.build(socks=["127.0.0.1:0"], user=["u:p"])) as proxy:
        host, port = proxy.address("socks5").host, proxy.address("socks5").port

    # from an ordinary (not monkey-patched) program: the proxy gets its own thread
    proxy = serve_in_thread(socks=["127.0.0.1:0"], user=["u:p"])
    proxy.url()  # 'socks5h://u:p@127.0.0.1:PORT'
    proxy.stop()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from gproxy.core.config import Config, ListenerSpec  # noqa: E402
from gproxy.core.errors import (  # noqa: E402
    AuthFailed,
    ClientProtocolError,
    ConfigError,
    Denied,
    DialError,
    GproxyError,
    HandshakeTimeout,
)
from gproxy.ops.threaded import ProxyThread, serve_in_thread  # noqa: E402

if TYPE_CHECKING:
    from gproxy.server.proxy import Proxy


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
    "ProxyThread",
    "__version__",
    "serve_in_thread",
]


def __getattr__(name: str) -> Any:
    """``gproxy.Proxy`` is imported on first use: ``import gproxy`` (and the pytest
    plugin, which every pytest run loads) must not import gevent."""
    if name == "Proxy":
        from gproxy.server.proxy import Proxy

        return Proxy
    raise AttributeError(f"module 'gproxy' has no attribute {name!r}")
