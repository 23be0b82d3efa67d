"""--upstream URLs: parsed once, errors name the flag, passwords never shown."""

from __future__ import annotations

import pytest

from gproxy import Config
from gproxy.core.errors import ConfigError
from gproxy.core.upstream_url import parse_upstream, redact_url


@pytest.mark.parametrize(
    ("url", "parts", "shown"),
    [
        ("socks5://h:1080", ("socks5", "h", 1080, None, None), "socks5://h:1080"),
        ("socks5h://u:p%40ss@h:1", ("socks5", "h", 1, "u", "p@ss"), "socks5://u:***@h:1"),
        ("socks4://10.0.0.1:1080", ("socks4", "10.0.0.1", 1080, None, None), "socks4://10.0.0.1:1080"),
        ("socks4a://h:1080", ("socks4a", "h", 1080, None, None), "socks4a://h:1080"),
        ("http://u:pw@[::1]:3128", ("http", "::1", 3128, "u", "pw"), "http://u:***@[::1]:3128"),
        ("HTTP://h:3128/", ("http", "h", 3128, None, None), "http://h:3128"),
        (
            "https://u:pw@proxy.example:8443",
            ("https", "proxy.example", 8443, "u", "pw"),
            "https://u:***@proxy.example:8443",
        ),
        ("socks5+tls://10.0.0.1:1443", ("socks5+tls", "10.0.0.1", 1443, None, None), "socks5+tls://10.0.0.1:1443"),
    ],
)
def test_parse_upstream(url, parts, shown):
    up = parse_upstream(url)
    assert (up.scheme, up.host, up.port, up.username, up.password) == parts
    assert str(up) == shown and shown in repr(up)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://u:SECRET@h:21",
        "socks5://u:SECRET@h",
        "socks5://u:SECRET@h:0",
        "socks5://u:SECRET@h:99999",
        "http://u:SECRET@h:3128/path",
        "socks4://u:SECRET@h:1080",
        "socks5://u:SECRET@:1080",
        "u:SECRET@h:1080",
        "socks5+tls://u:SECRET@h",
        "https://u:SECRET@bad_host!:443",
        "https://u:SECRET@-h.example:443",
        "ss://u:SECRET@h:8388",
    ],
)
def test_bad_upstream_is_a_config_error_without_the_password(url):
    with pytest.raises(ConfigError, match="--upstream") as info:
        Config.build(socks=["0"], upstream=url)
    assert "SECRET" not in str(info.value)


def test_tls_schemes_say_so():
    assert [parse_upstream(url).tls for url in ("https://h:1", "socks5+tls://h:1", "http://h:1", "socks5://h:1")] == [
        True,
        True,
        False,
        False,
    ]


def test_config_repr_hides_upstream_password():
    config = Config.build(socks=["0"], upstream="socks5://u:SECRET@127.0.0.1:1080", user=["a:SECRET2"])
    assert "SECRET" not in repr(config) and "SECRET" not in str(config)


def test_redact_url():
    assert redact_url("socks5://u:p@h:1") == "socks5://u:***@h:1"
    assert redact_url("socks5://h:1") == "socks5://h:1"
    assert redact_url("http://h:1/check?token=SECRET") == "http://h:1/check?..."  # a query may carry a token
    assert redact_url("socks5://u:p@h:1?q=a@b") == "socks5://u..."  # an '@' past the host: user name only
    assert redact_url("http://u:SEC@RET@h:1") == "http://u:***@h:1"
