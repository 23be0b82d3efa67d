"""Destination names: one canonical ASCII spelling, the one the resolver looks up, before any rule."""

from __future__ import annotations

import pytest

from gproxy.codec import socks4, socks5
from gproxy.codec.replies import ReplyCode
from gproxy.core.addr import Address, canonical_host
from gproxy.core.errors import ClientProtocolError, Denied
from gproxy.core.rules import DestinationPolicy, RuleSet

#: spellings of "localhost" that getaddrinfo's IDNA step maps to it (NFKC, case folding, Unicode full stops)
LOCALHOST_SPELLINGS = [
    "LOCALHOST",
    "ｌｏｃａｌｈｏｓｔ",  # full-width
    "LOCALHOſT",  # U+017F LATIN SMALL LETTER LONG S folds to "s"
    "localhost\u3002",  # ideographic full stop
    "localhost\uff0e",  # full-width full stop
    "localhost\uff61",  # half-width ideographic full stop
    "ＬＯＣＡＬＨＯＳＴ.",
]

BAD_NAMES = [
    "a" * 64 + ".example",  # a label over 63 bytes
    "a..example",  # an empty label
    ".example",
    ".",
    ("a" * 63 + ".") * 4,  # 256 bytes
    "local host",
    "local\\104ost",  # resolver escape syntax (glibc's res_mkquery reads \DDD)
    "x\x00y",
    "\u00ad",  # soft hyphen: nameprep maps it to nothing, an empty label
]


@pytest.mark.parametrize("spelling", LOCALHOST_SPELLINGS)
def test_every_spelling_the_resolver_folds_is_folded_first(spelling):
    resolver_sees = spelling.encode("idna").decode("ascii").lower()  # what socket.getaddrinfo would look up
    assert canonical_host(spelling) == resolver_sees
    assert canonical_host(spelling).rstrip(".") == "localhost"


def test_international_names_become_their_idna_form():
    assert canonical_host("Bücher.DE") == "xn--bcher-kva.de"
    assert canonical_host("xn--bcher-kva.de") == "xn--bcher-kva.de"


def test_full_width_digits_are_an_ip_literal():
    host = canonical_host("１２７.０.０.１")
    assert host == "127.0.0.1" and Address(host, 80).ip is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "fe80::1%eth0", "0", "under_score.example", "a-b.example."])
def test_literals_and_plain_names_are_kept(host):
    assert canonical_host(host) == host


def test_longest_names_pass():
    name = ("a" * 63 + ".") * 3 + "a" * 61  # 253 bytes
    assert canonical_host(name) == name and canonical_host(name + ".") == name + "."
    with pytest.raises(ClientProtocolError):
        canonical_host(name + "a")


@pytest.mark.parametrize("name", BAD_NAMES)
def test_names_no_resolver_takes_are_refused_as_host_unreachable(name):
    with pytest.raises(ClientProtocolError) as caught:
        canonical_host(name)
    assert caught.value.reply == ReplyCode.HOST_UNREACHABLE and caught.value.reason == "bad_name"


@pytest.mark.parametrize("spelling", LOCALHOST_SPELLINGS)
def test_socks5_request_and_udp_header_carry_the_canonical_name(spelling):
    name = spelling.encode()
    raw_address = bytes((3, len(name))) + name + b"\x00\x50"
    request, _ = socks5.parse_request(b"\x05\x01\x00" + raw_address)
    header, _ = socks5.parse_udp_header(b"\x00\x00\x00" + raw_address + b"payload")
    assert request.address.host.rstrip(".") == header.address.host.rstrip(".") == "localhost"


def test_socks4a_hostname_is_canonical_and_checked():
    request, _ = socks4.parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00LocalHost\x00")
    assert request.address.host == "localhost"
    with pytest.raises(ClientProtocolError):
        socks4.parse_request(b"\x04\x01\x00\x50\x00\x00\x00\x01\x00a..b\x00")


@pytest.mark.parametrize("spelling", LOCALHOST_SPELLINGS)
def test_deny_rule_catches_every_spelling_a_client_sends(spelling):
    policy = DestinationPolicy(rules=RuleSet.parse([], ["localhost", "*.example.com"]))
    name = spelling.encode()
    request, _ = socks5.parse_request(b"\x05\x01\x00" + bytes((3, len(name))) + name + b"\x00\x50")
    with pytest.raises(Denied):
        policy.check(request.address)


@pytest.mark.parametrize("rule", ["bücher.de", "BÜCHER.de", "*.ｂüｃｈｅｒ.de"])
def test_unicode_rules_match_the_idna_form(rule):
    policy = DestinationPolicy(rules=RuleSet.parse([], [rule]))
    host = "www.xn--bcher-kva.de" if rule.startswith("*.") else "xn--bcher-kva.de"
    with pytest.raises(Denied):
        policy.check(Address(canonical_host(host), 443))
