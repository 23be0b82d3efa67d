"""Address parsing, option types and the open-proxy refusal."""

from __future__ import annotations

import pytest

from gproxy.core.config import OPTIONS, Config, load_toml, parse_hostport
from gproxy.core.errors import ConfigError


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1080", ("127.0.0.1", 1080)),
        ("0", ("127.0.0.1", 0)),
        ("0.0.0.0:1080", ("0.0.0.0", 1080)),
        ("[::1]:1080", ("::1", 1080)),
        ("[::]:9", ("::", 9)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_hostport(spec, expected):
    assert parse_hostport(spec, "--socks") == expected


@pytest.mark.parametrize("spec", ["", "abc", "1080:", ":1080", "::1:1080", "[::1]", "[x]:1", "h:65536", "h:-1"])
def test_parse_hostport_rejects(spec):
    with pytest.raises(ConfigError, match="--socks"):
        parse_hostport(spec, "--socks")


def test_open_proxy_refused_with_a_way_out():
    with pytest.raises(ConfigError, match=r"--user USER:PASS, or --allow CIDR"):
        Config.build(socks=["0.0.0.0:1080"])
    Config.build(socks=["0.0.0.0:1080"], user=["u:p"])
    Config.build(socks=["0.0.0.0:1080"], allow=["10.0.0.0/8"])
    Config.build(socks=["1080"], http=["[::1]:0"])  # loopback needs neither


def test_forwarders_are_not_proxies():
    config = Config.build(forward=["0.0.0.0:8080=example.com:80"])
    (listener,) = config.listeners
    assert (listener.kind, listener.port, str(listener.target)) == ("forward", 8080, "example.com:80")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "nothing to serve"),
        ({"socks": ["0"], "user": ["nopassword"]}, "USER:PASS"),
        ({"socks": ["0"], "allow": ["10.0.0.300/8"]}, "--allow"),
        ({"socks": ["0"], "connect_timeout": 0}, "--connect-timeout"),
        ({"socks": ["0"], "workers": 0}, "--workers"),
        ({"socks": ["0"], "log_level": "loud"}, "--log-level"),
        ({"https": ["0"]}, "--cert"),
        ({"forward": ["8080"]}, "ADDR=HOST:PORT"),
        ({"forward": ["8080=host:0"]}, "port may not be 0"),
        ({"socks": ["0"], "idle_timeout": "soon"}, "'idle-timeout' must be a number"),
        ({"socks": ["0"], "bogus": 1}, "unknown setting 'bogus'"),
    ],
)
def test_bad_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        Config.build(**settings)


@pytest.mark.parametrize("key", [option.key.replace("-", "_") for option in OPTIONS if option.repeat])
def test_none_is_not_given_for_repeated_settings_too(key):
    """``Config.build(user=None)`` is the default, as ``idle_timeout=None`` is; it was a TypeError."""
    settings = {"socks": ["127.0.0.1:0"], key: None}
    if key == "socks":
        settings["http"] = ["127.0.0.1:0"]
    config = Config.build(**settings)
    assert config == Config.build(**{name: value for name, value in settings.items() if name != key})


def test_password_not_echoed_in_errors():
    with pytest.raises(ConfigError) as info:
        Config.build(socks=["0"], user=[":secret-password"])
    assert "secret-password" not in str(info.value)


def test_toml(tmp_path):
    path = tmp_path / "gproxy.toml"
    path.write_text('socks = ["127.0.0.1:0"]\nuser = ["u:p"]\nidle-timeout = 30\nproxy-protocol = true\n')
    settings, extra = load_toml(str(path))
    config = Config.from_settings(settings, extra)
    assert config.idle_timeout == 30.0 and config.proxy_protocol and config.users == (("u", "p"),)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sock = ['0']", "unknown setting 'sock'"),
        ("socks = 1080", "'socks' must be a string or an array of strings"),
        ("workers = '2'", "'workers' must be an integer"),
        ("workers = true", "'workers' must be an integer"),
        ("socks = [", "gproxy.toml"),
    ],
)
def test_toml_errors_name_the_key(tmp_path, text, message):
    path = tmp_path / "gproxy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_toml(str(path))
