"""Users (constant-time check, users file) and client rules."""

from __future__ import annotations

import ipaddress

import pytest

from gproxy.core.access import ClientRules, Users, parse_network, read_users_file
from gproxy.core.errors import ConfigError


def test_users_check():
    users = Users([("alice", "s3:cret"), ("bob", "")])
    assert users.check(b"alice", b"s3:cret")
    assert users.check(b"bob", b"")
    assert not users.check(b"alice", b"s3:cre")
    assert not users.check(b"carol", b"s3:cret")
    assert not users.check(b"", b"")
    assert bool(users) and not Users()


def test_users_file(tmp_path):
    path = tmp_path / "users"
    path.write_text("# staff\nalice:one\n\n  bob:two:three  \n")
    assert read_users_file(str(path)) == [("alice", "one"), ("bob", "two:three")]


def test_users_file_errors_name_the_line(tmp_path):
    path = tmp_path / "users"
    path.write_text("alice:one\nbroken line\n")
    with pytest.raises(ConfigError, match=r"users:2"):
        read_users_file(str(path))
    with pytest.raises(ConfigError, match="No such file"):
        read_users_file(str(tmp_path / "missing"))


def test_client_rules():
    rules = ClientRules(
        allow=[parse_network("127.0.0.0/8", "--allow"), parse_network("::1", "--allow")],
        deny=[parse_network("127.0.0.2", "--deny")],
    )
    ip = ipaddress.ip_address
    assert rules.permits(ip("127.0.0.1"))
    assert rules.permits(ip("::ffff:127.0.0.1"))
    assert rules.permits(ip("::1"))
    assert not rules.permits(ip("127.0.0.2"))
    assert not rules.permits(ip("10.0.0.1"))
    assert ClientRules().permits(ip("10.0.0.1"))
