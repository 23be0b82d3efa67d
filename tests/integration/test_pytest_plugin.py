"""The pytest plugin, used the way its users use it: a test suite of their own."""

import sys
from importlib.metadata import entry_points

import pytest

from gproxy.server.proxy import HANDLERS
from tests.helpers import HELLO_HANDLER_SOURCE, ROOT

pytest_plugins = ["pytester"]

#: gproxy installed (tox, pip): its pytest11 entry point loads the plugin, and
#: naming it again with -p would register it twice. From a source tree: name it.
PLUGIN = (
    []
    if any(ep.value == "gproxy.pytest_plugin" for ep in entry_points(group="pytest11"))
    else ["-p", "gproxy.pytest_plugin"]
)

#: an ordinary, unpatched test suite that tests "an application" through the fixtures
USER_SUITE = """
import http.server
import threading

import pytest
import requests
from gevent import monkey

HELLO_HANDLER


@pytest.fixture
def web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_socks_fixture(gproxy_socks, web):
    url = gproxy_socks.url()
    assert url.startswith("socks5h://gproxy:") and "@127.0.0.1:" in url
    assert requests.get(web + "/app", proxies={"http": url}, timeout=10).text == "hello /app"
    assert not monkey.is_module_patched("socket")


def test_factory_with_settings(gproxy_proxy, web):
    proxy = gproxy_proxy(socks=["127.0.0.1:0"], user=["alice:s3cret"], allow=["10.0.0.0/8"])
    assert proxy.url() == f"socks5h://alice:s3cret@127.0.0.1:{proxy.address('socks5').port}"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(web, proxies={"http": proxy.url()}, timeout=10)


def test_default_listener(gproxy_proxy, web):
    proxy = gproxy_proxy()
    assert requests.get(web + "/x", proxies={"http": proxy.url()}, timeout=10).text == "hello /x"
""".replace("HELLO_HANDLER\n", HELLO_HANDLER_SOURCE)

HTTP_TEST = """

def test_http_fixture(gproxy_http, web):
    assert gproxy_http.url().startswith("http://gproxy:")
    proxies = {"http": gproxy_http.url()}
    assert requests.get(web + "/via-http", proxies=proxies, timeout=10).text == "hello /via-http"
"""


@pytest.fixture
def suite(pytester, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    pytester.makeini("[pytest]\nfilterwarnings = error\n")
    return pytester


def test_fixtures_in_an_unpatched_suite(suite):
    """A separate pytest process, as a user runs it (the plugin given with -p, as the entry point would)."""
    suite.makepyfile(test_app=USER_SUITE)
    result = suite.runpytest_subprocess(*PLUGIN, "-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=3)


@pytest.mark.skipif("http" not in HANDLERS, reason="the HTTP front end is not in this build")
def test_http_fixture(suite):
    suite.makepyfile(test_app=USER_SUITE + HTTP_TEST)
    result = suite.runpytest_subprocess(*PLUGIN, "-k", "http_fixture", timeout=120)
    result.assert_outcomes(passed=1)


def test_plugin_tolerates_a_patched_process(suite):
    """In-process, inside this monkey-patched suite: the proxy runs as a greenlet of our hub."""
    suite.makepyfile(test_app=USER_SUITE.replace("assert not monkey", "assert monkey"))
    result = suite.runpytest_inprocess(*PLUGIN, "-p", "no:cacheprovider", "-p", "no:anyio")
    result.assert_outcomes(passed=3)


def test_import_costs_only_pytest(suite):
    """Loaded in every pytest run of anyone who installs gproxy: no gevent, no gproxy until used."""
    heavy = "('gevent', 'gproxy.server', 'gproxy.frontends', 'gproxy.services')"
    code = f"import sys, gproxy.pytest_plugin; print([m for m in sys.modules if m.startswith({heavy})])"
    result = suite.run(sys.executable, "-c", code)
    assert result.ret == 0
    assert result.outlines[-1] == "[]"  # no gevent, no gproxy.server.proxy / gproxy.frontends.socks5


def test_entry_point_is_declared():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"gproxy": "gproxy.pytest_plugin"}
