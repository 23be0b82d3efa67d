"""Secrets (plain, bcrypt, Argon2), the auth cache, and Users checking hashed entries."""

from __future__ import annotations

import argon2
import bcrypt
import pytest

from gproxy.core import passwords
from gproxy.core.access import Users, parse_user, read_users_file
from gproxy.core.errors import ConfigError
from gproxy.core.passwords import AuthCache, Secret, SecretKind, hash_password, verify

# cost 4: the format is what matters here, not the work factor
BCRYPT_PW = bcrypt.hashpw(b"right horse", bcrypt.gensalt(4)).decode()
ARGON2_PW = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash("right horse")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("prefix", ["$2a$", "$2b$", "$2y$"])
def test_bcrypt_under_every_prefix(prefix):
    secret = Secret.parse(prefix + BCRYPT_PW[4:])
    assert secret.kind is SecretKind.BCRYPT and secret.is_hash
    assert verify(secret, b"right horse")
    assert not verify(secret, b"wrong horse")


@pytest.mark.parametrize("kind", [argon2.Type.ID, argon2.Type.I, argon2.Type.D])
def test_argon2_every_type(kind):
    text = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=kind).hash("pw")
    secret = Secret.parse(text)
    assert secret.kind is SecretKind.ARGON2
    assert verify(secret, b"pw")
    assert not verify(secret, b"pW")


def test_plain_text_is_compared_exactly():
    secret = Secret.parse("s3:cret")
    assert secret.kind is SecretKind.PLAIN and not secret.is_hash
    assert verify(secret, b"s3:cret")
    assert not verify(secret, b"s3:cre")
    assert not verify(secret, b"s3:crett")


def test_verify_never_raises_on_odd_passwords():
    secret = Secret.parse(BCRYPT_PW)
    assert not verify(secret, b"a\0b")
    assert not verify(secret, b"x" * 255)  # bcrypt 5 refuses > 72 bytes; verify cuts as htpasswd does
    long_hash = Secret.parse(bcrypt.hashpw(b"y" * 72, bcrypt.gensalt(4)).decode())
    assert verify(long_hash, b"y" * 100)


@pytest.mark.parametrize(
    "text",
    [
        "$2b$12$short",
        "$2x$12$" + BCRYPT_PW[7:],  # unknown variant
        "$2b$99$" + BCRYPT_PW[7:],  # cost out of range
        BCRYPT_PW + "x",
        "$argon2id$v=19$m=8,t=1,p=1$garbage",
        "$argon2q$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        "$argon2id$",
        "$argon2id$v=19$m=1024,t=1,p=1$c2FsdHNhbHQ$NotBase64Hash!!",
        ARGON2_PW + "$",
        ARGON2_PW.replace("$m=", "$x="),
    ],
)
def test_malformed_hashes_are_refused_without_the_text(text):
    with pytest.raises(ValueError) as info:
        Secret.parse(text)
    message = str(info.value)
    assert message.startswith("malformed ")
    body = text[10:]  # past the "$2b$12$" or "$argon2id$" that the message may name
    assert not body or body not in message


def test_malformed_hash_in_users_file_names_file_and_line_not_secret(tmp_path):
    path = tmp_path / "users"
    bad = "$2y$05$tooShortToBeAHashXYZ"
    path.write_text(f"# users\nalice:{BCRYPT_PW}\nbob:{bad}\n")
    with pytest.raises(ConfigError) as info:
        read_users_file(str(path))
    message = str(info.value)
    assert f"{path}:3" in message and "bcrypt" in message and "'bob'" in message
    assert bad not in message and "tooShort" not in message


def test_users_file_and_user_flag_accept_hashes(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"alice:{BCRYPT_PW}\ncarol:{ARGON2_PW}\ndave:plain\n")
    users = Users(read_users_file(str(path)) + [parse_user(f"erin:{BCRYPT_PW}")])
    for name in (b"alice", b"carol", b"erin"):
        assert users.check(name, b"right horse")
        assert not users.check(name, b"wrong horse")
    assert users.check(b"dave", b"plain")
    assert not users.check(b"mallory", b"right horse")
    with pytest.raises(ConfigError, match="--user: user 'x': malformed bcrypt"):
        parse_user("x:$2b$nope")


def test_malformed_hash_through_replace_is_a_config_error():
    with pytest.raises(ConfigError, match="malformed Argon2") as info:
        Users([("bob", "$argon2id$broken")])
    assert "broken" not in str(info.value)


class CountingVerify:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.hashed = 0  # calls with a hash (the slow ones)
        self._real = passwords.verify
        monkeypatch.setattr(passwords, "verify", self)

    def __call__(self, secret: Secret, password: bytes) -> bool:
        self.calls += 1
        self.hashed += secret.is_hash
        return self._real(secret, password)


def test_cache_spares_the_second_hash_and_expires(monkeypatch):
    counting = CountingVerify(monkeypatch)
    clock = Clock()
    users = Users([("alice", BCRYPT_PW)], cache_seconds=300, clock=clock)
    assert users.check(b"alice", b"right horse")
    assert users.check(b"alice", b"right horse")
    assert counting.calls == 1
    clock.now += 299
    assert users.check(b"alice", b"right horse")
    assert counting.calls == 1
    clock.now += 2  # 301 s after the first check: checked again, then remembered again
    assert users.check(b"alice", b"right horse")
    assert users.check(b"alice", b"right horse")
    assert counting.calls == 2


def test_failures_are_not_cached(monkeypatch):
    counting = CountingVerify(monkeypatch)
    users = Users([("alice", BCRYPT_PW)], cache_seconds=300, clock=Clock())
    for _ in range(3):
        assert not users.check(b"alice", b"wrong horse")
    assert counting.calls == 3
    assert users.check(b"alice", b"right horse")  # a good password after bad ones still works
    assert not users.check(b"alice", b"wrong horse")
    assert counting.calls == 5


def test_cache_zero_is_off(monkeypatch):
    counting = CountingVerify(monkeypatch)
    users = Users([("alice", BCRYPT_PW)], cache_seconds=0)
    for _ in range(3):
        assert users.check(b"alice", b"right horse")
    assert counting.calls == 3


def test_reload_forgets_the_cache(monkeypatch):
    users = Users([("alice", BCRYPT_PW)], cache_seconds=300, clock=Clock())
    assert users.check(b"alice", b"right horse")
    users.replace(Users.table([("alice", bcrypt.hashpw(b"new horse", bcrypt.gensalt(4)).decode())]), required=True)
    assert not users.check(b"alice", b"right horse")  # the old password no longer works
    assert users.check(b"alice", b"new horse")
    users.replace(Users.table([("bob", "pw")]), required=True)
    assert not users.check(b"alice", b"new horse")  # a removed user is gone at once


def test_plain_users_never_reach_the_slow_path(monkeypatch):
    counting = CountingVerify(monkeypatch)
    users = Users([("alice", "pw")])
    assert users.check(b"alice", b"pw") and not users.check(b"alice", b"px")
    assert not users.check(b"nobody", b"pw")
    assert counting.calls == 2  # no decoy hash without hashed users


def test_unknown_user_costs_a_real_hash_when_users_are_hashed(monkeypatch):
    counting = CountingVerify(monkeypatch)
    users = Users([("alice", BCRYPT_PW)])
    assert not users.check(b"mallory", b"right horse")  # even alice's password: a decoy check only
    assert counting.calls == 1


def test_a_wrong_password_of_a_clear_text_user_costs_a_hash_like_an_unknown_user(monkeypatch):
    # a table of hashes and clear text: timing must not tell which names are in clear
    counting = CountingVerify(monkeypatch)
    users = Users([("alice", BCRYPT_PW), ("bob", "clear")])
    assert not users.check(b"bob", b"wrong") and counting.hashed == 1
    assert not users.check(b"mallory", b"wrong") and counting.hashed == 2
    assert users.check(b"bob", b"clear") and counting.hashed == 2  # the right password: no decoy


def test_cache_keys_are_keyed_hashes_not_passwords():
    cache = AuthCache(60, clock=Clock())
    cache.remember(b"alice", b"right horse")
    (entry,) = cache._expiry
    assert b"right horse" not in entry and len(entry) == 32
    assert AuthCache(60)._entry(b"alice", b"right horse") != cache._entry(b"alice", b"right horse")  # per-instance key
    # the user/password split is part of the key: ("a", "b\0c") is not ("a\0b", "c")
    assert cache._entry(b"a", b"b\0c") != cache._entry(b"a\0b", b"c")


def test_cache_is_bounded_oldest_out():
    clock = Clock()
    cache = AuthCache(60, max_entries=3, clock=clock)
    for n in range(5):
        cache.remember(b"u%d" % n, b"pw")
    assert len(cache) == 3
    assert not cache.hit(b"u0", b"pw") and not cache.hit(b"u1", b"pw")
    assert all(cache.hit(b"u%d" % n, b"pw") for n in (2, 3, 4))
    clock.now += 61
    cache.remember(b"u5", b"pw")  # the expired ones go on the next insert
    assert len(cache) == 1


def test_hash_password_makes_a_bcrypt_hash():
    text = hash_password(b"right horse")
    assert text.startswith("$2b$12$")
    secret = Secret.parse(text)
    assert verify(secret, b"right horse") and not verify(secret, b"right hors")
    with pytest.raises(ValueError, match="72 bytes"):
        hash_password(b"x" * 73)
