"""pytest fixtures: a running gproxy on a free port, for testing your own application.

Registered through the ``pytest11`` entry point. Importing this module costs
only pytest: gproxy (and gevent) are imported when a test first asks for a
fixture, and nothing is ever monkey-patched. Proxies run on their own thread
(``gproxy.serve_in_thread``), so the fixtures work in ordinary test suites.

    def test_through_proxy(gproxy_socks):
        proxies = {"http": gproxy_socks.url(), "https": gproxy_socks.url()}
        assert requests.get("http://example.test/", proxies=proxies).ok
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gproxy.ops.threaded import ProxyThread

ProxyFactory = Callable[..., "ProxyThread"]


@pytest.fixture
def gproxy_proxy() -> Iterator[ProxyFactory]:
    """``gproxy_proxy(**settings)`` -> a started ProxyThread; stopped after the test.

    Settings are ``gproxy.Config.build`` keywords; with no listener given, a
    SOCKS listener on ``127.0.0.1:0`` (a free port).
    """
    from gproxy.core.config import LISTENER_KINDS
    from gproxy.ops.threaded import serve_in_thread

    started: list[ProxyThread] = []

    def factory(**settings: Any) -> ProxyThread:
        if not any(key.replace("_", "-") in LISTENER_KINDS for key in settings):
            settings["socks"] = ["127.0.0.1:0"]
        proxy = serve_in_thread(**settings)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in reversed(started):
        proxy.stop()


def _user() -> str:
    return f"gproxy:{secrets.token_urlsafe(12)}"


@pytest.fixture
def gproxy_socks(gproxy_proxy: ProxyFactory) -> ProxyThread:
    """A SOCKS5 (and 4a) proxy with a random user; ``.url()`` is ``socks5h://gproxy:PASS@127.0.0.1:PORT``."""
    return gproxy_proxy(socks=["127.0.0.1:0"], user=[_user()])


@pytest.fixture
def gproxy_http(gproxy_proxy: ProxyFactory) -> ProxyThread:
    """An HTTP proxy (CONNECT and absolute URIs) with a random user; ``.url()`` is ``http://...``."""
    return gproxy_proxy(http=["127.0.0.1:0"], user=[_user()])
