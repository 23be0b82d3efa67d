"""Destination rules: parsing, every rule kind, layering, the safe defaults and loops."""

from __future__ import annotations

import ipaddress

import pytest

from gproxy.core.addr import Address
from gproxy.core.config import Config, load_toml
from gproxy.core.errors import ConfigError, Denied
from gproxy.core.rules import DestinationPolicy, RuleSet, host_addresses, parse_dest_rule, parse_users_table

ip = ipaddress.ip_address


def policy(allow=(), deny=(), *, deny_local=False, own=(), users=None) -> DestinationPolicy:
    return DestinationPolicy(own, deny_local, RuleSet.parse(allow, deny), users)


def allowed(pol: DestinationPolicy, host: str, port: int, resolved: str | None = None) -> bool:
    """The verdict for ``host:port`` as given and, for a name, for the address it resolves to."""
    try:
        check = pol.check(Address(host, port))
        if resolved is not None:
            check(ip(resolved), port)
    except Denied:
        return False
    return True


@pytest.mark.parametrize(
    ("spec", "network", "name", "ports"),
    [
        ("10.0.0.0/8", "10.0.0.0/8", None, (1, 65535)),
        ("10.1.2.3:22", "10.1.2.3/32", None, (22, 22)),
        ("10.0.0.0/8:1000-2000", "10.0.0.0/8", None, (1000, 2000)),
        ("::1", "::1/128", None, (1, 65535)),
        ("fd00::/8", "fd00::/8", None, (1, 65535)),
        ("[fd00::/8]:22", "fd00::/8", None, (22, 22)),
        ("[::1]:1-1023", "::1/128", None, (1, 1023)),
        ("Example.COM.", None, "example.com", (1, 65535)),
        ("*.example.com:443", None, ".example.com", (443, 443)),
        ("*:25", None, "", (25, 25)),
    ],
)
def test_parse_dest_rule(spec, network, name, ports):
    rule = parse_dest_rule(spec, "--allow-dest")
    assert (str(rule.network) if rule.network else None, rule.name, rule.ports) == (network, name, ports)


@pytest.mark.parametrize(
    "spec", ["", ":22", "a:b", "a:0", "a:5-1", "a:1-70000", "[::1", "[::1]x", "*.", "a..b", "*x.com", "a*b"]
)
def test_parse_dest_rule_rejects(spec):
    with pytest.raises(ConfigError, match="--deny-dest"):
        parse_dest_rule(spec, "--deny-dest")


def test_bad_rule_flag_is_a_config_error():
    with pytest.raises(ConfigError, match="--allow-dest: 'x:99999'"):
        Config.build(socks=["0"], allow_dest=["x:99999"])


def test_cidr_deny():
    pol = policy(deny=["10.0.0.0/8", "[fd00::/8]:22"])
    assert not allowed(pol, "10.9.9.9", 80)
    assert allowed(pol, "11.0.0.1", 80)
    assert not allowed(pol, "fd00::1", 22)
    assert allowed(pol, "fd00::1", 23)
    assert not allowed(pol, "::ffff:10.0.0.1", 80)  # mapped addresses are the IPv4 ones


def test_name_suffix_star_and_ports():
    pol = policy(deny=["bad.example", "*.ads.example", "*:25", "*:6000-6010"])
    assert not allowed(pol, "BAD.example.", 443)
    assert allowed(pol, "notbad.example", 443)
    assert not allowed(pol, "x.ads.example", 80)
    assert allowed(pol, "ads.example", 80)  # *.suffix is the subdomains only
    assert not allowed(pol, "mail.example", 25)
    assert not allowed(pol, "192.0.2.1", 25)
    assert not allowed(pol, "192.0.2.1", 6005)
    assert allowed(pol, "192.0.2.1", 6011)


def test_allow_rules_allow_only_what_they_name():
    pol = policy(allow=["*.example.com:443", "192.0.2.0/24"])
    assert allowed(pol, "www.example.com", 443, resolved="203.0.113.9")  # allowed by its name
    assert not allowed(pol, "www.example.com", 80, resolved="203.0.113.9")
    assert allowed(pol, "192.0.2.5", 80)
    assert not allowed(pol, "198.51.100.1", 80)
    assert allowed(pol, "intranet", 80, resolved="192.0.2.7")  # a name allowed by its address
    assert not allowed(pol, "elsewhere", 80, resolved="198.51.100.1")


def test_name_only_allow_list_refuses_other_names_before_resolving():
    pol = policy(allow=["example.com"])
    with pytest.raises(Denied):
        pol.check(Address("other.example", 80))


def test_deny_wins_over_allow():
    pol = policy(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    assert allowed(pol, "10.2.0.1", 80)
    assert not allowed(pol, "10.1.0.1", 80)


def test_dns_rebinding_a_name_resolving_into_a_denied_network_is_denied():
    pol = policy(allow=["*.example.com"], deny=["10.0.0.0/8"])
    assert not allowed(pol, "evil.example.com", 80, resolved="10.0.0.1")
    assert not allowed(policy(deny_local=True), "evil.example.com", 80, resolved="127.0.0.1")
    # an allowed *name* does not open loopback either: only an address rule does
    assert not allowed(policy(allow=["evil.example.com"], deny_local=True), "evil.example.com", 80, "127.0.0.1")


@pytest.mark.parametrize("dest", ["127.0.0.1", "127.5.5.5", "::1", "169.254.169.254", "fe80::1", "fd00:ec2::254"])
def test_non_loopback_listeners_deny_local_destinations(dest):
    assert not allowed(policy(deny_local=True), dest, 80)
    assert allowed(policy(deny_local=False), dest, 80)


def test_explicit_allow_opens_a_local_destination():
    assert allowed(policy(allow=["127.0.0.1:8080"], deny_local=True), "127.0.0.1", 8080)
    assert not allowed(policy(allow=["127.0.0.1:8080"], deny_local=True), "127.0.0.1", 8081)
    assert allowed(policy(allow=["127.0.0.0/8"], deny_local=True), "127.0.0.2", 22)
    assert allowed(policy(allow=["169.254.169.254"], deny_local=True), "169.254.169.254", 80)
    # "everything" is not an explicit opening of loopback
    assert not allowed(policy(allow=["0.0.0.0/0"], deny_local=True), "127.0.0.1", 80)
    assert not allowed(policy(allow=["*"], deny_local=True), "127.0.0.1", 80)


def test_own_host_addresses_are_local():
    addrs = host_addresses()
    assert ip("127.0.0.1") in addrs
    others = [a for a in addrs if not a.is_loopback and not a.is_link_local]
    if not others:
        pytest.skip("this host has no non-loopback address")
    assert not allowed(policy(deny_local=True), str(others[0]), 80)


@pytest.mark.parametrize("dest", [("0.0.0.0", 80), ("::", 80), ("192.0.2.1", 0), ("name", 0)])
def test_unspecified_and_port_zero_always_denied(dest):
    assert not allowed(policy(allow=["*"]), *dest)


def test_loops_to_our_listeners_are_refused_even_when_allowed():
    pol = policy(allow=["127.0.0.0/8"], own=[(ip("127.0.0.1"), 1080)])
    assert not allowed(pol, "127.0.0.1", 1080)
    assert allowed(pol, "127.0.0.1", 1081)


def test_wildcard_listener_counts_every_host_address():
    pol = policy(own=[(ip("0.0.0.0"), 1080), (ip("::"), 1080)])
    for addr in host_addresses():
        assert not allowed(pol, str(addr), 1080), addr
        assert allowed(pol, str(addr), 1081)
    assert allowed(pol, "192.0.2.1", 1080)  # not ours


def test_per_user_rules_add_a_layer():
    users = {"alice": RuleSet.parse(["*.example.com"], []), "bob": RuleSet.parse([], ["*.example.com"])}
    pol = policy(deny=["10.0.0.0/8"], users=users)
    alice, bob = pol.for_user("alice"), pol.for_user("bob")
    assert pol.for_user(None) is pol and pol.for_user("carol") is pol and pol.for_user("alice") is alice
    assert allowed(alice, "www.example.com", 443, "203.0.113.1")
    assert not allowed(alice, "other.org", 443, "203.0.113.1")
    assert not allowed(alice, "www.example.com", 443, "10.0.0.1")  # the global deny still holds
    assert not allowed(bob, "www.example.com", 443)
    assert allowed(bob, "other.org", 443, "203.0.113.1")


def test_users_table(tmp_path):
    path = tmp_path / "gproxy.toml"
    path.write_text(
        'socks = ["0"]\nuser = ["carol:pw"]\n'
        '[users.alice]\npassword = "s3cret"\nallow-dest = ["*.example.com:443"]\n'
        '[users.carol]\ndeny-dest = "10.0.0.0/8"\n'
    )
    settings, extra = load_toml(str(path))
    config = Config.from_settings(settings, extra)
    assert ("alice", "s3cret") in config.users
    assert [str(r) for r in config.user_rules["alice"].allow] == ["*.example.com:443"]
    assert [str(r) for r in config.user_rules["carol"].deny] == ["10.0.0.0/8"]
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"alice": {"pasword": "x"}}, "users.alice.pasword"),
        ({"alice": {"password": 1}}, "users.alice.password"),
        ({"alice": {"password": "x", "allow-dest": [1]}}, "users.alice.allow-dest"),
        ({"alice": {"password": "x", "deny-dest": ["a:0"]}}, "users.alice.deny-dest"),
        ({"alice": "x"}, "users.alice"),
    ],
)
def test_users_table_errors_name_the_key(table, message):
    with pytest.raises(ConfigError, match=message):
        parse_users_table(table)


@pytest.mark.parametrize(
    "entry",
    [{"rate": 1}, {"password": "x"}, {"bogus": 1}, "not a table", {"allow-dest": [1]}],
    ids=["table", "password", "unknown_key", "not_a_table", "bad_setting"],
)
def test_a_user_table_named_user_colon_password_never_shows_the_password(entry):
    """[users."alice:PW"] is the USER:PASS typo; every error about it stops at the ':'."""
    with pytest.raises(ConfigError) as caught:
        parse_users_table({"alice:hunter2:more": entry})
    message = str(caught.value)
    assert "hunter2" not in message and "more" not in message
    assert message.startswith("'users.alice:...': a user name may not hold ':'"), message


def test_user_rules_without_a_password_need_the_user_elsewhere():
    with pytest.raises(ConfigError, match="users.dave"):
        Config.from_settings({"socks": ["0"]}, {"users": {"dave": {"allow-dest": ["x"]}}})


def test_check_ip_remembers_only_what_passed():
    policy = DestinationPolicy(rules=RuleSet(deny=(parse_dest_rule("10.0.0.0/8", "--deny-dest"),)))
    allowed = ipaddress.ip_address("192.0.2.1")
    denied = ipaddress.ip_address("10.1.2.3")
    for _ in range(3):
        policy.check_ip(allowed, 80)
        with pytest.raises(Denied):
            policy.check_ip(denied, 80)
    assert (allowed, 80) in policy._passed
    assert (denied, 80) not in policy._passed


def test_check_ip_memory_is_bounded(monkeypatch):
    monkeypatch.setattr("gproxy.core.rules._PASSED_MAX", 8)
    policy = DestinationPolicy()
    for n in range(50):
        policy.check_ip(ipaddress.ip_address(f"192.0.2.{n + 1}"), 80)
    assert len(policy._passed) <= 8
