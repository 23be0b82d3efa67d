"""The --auth-url client against a tiny service in a greenlet, its sans-I/O parts, and the
fallback and per-user session counting in Users."""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from gproxy.core import auth_service
from gproxy.core.access import UserLimit, Users, UserSessions
from gproxy.core.addr import Address
from gproxy.core.auth_service import (
    MAX_BODY,
    AuthService,
    AuthUnavailable,
    AuthUrl,
    Exchange,
    judge,
    parse_auth_url,
)
from gproxy.core.errors import AuthFailed, ConfigError
from gproxy.core.rules import UserSettings
from gproxy.core.session import Session
from tests.fake_auth import FakeAuthService, http_answer

SETTINGS = {
    "rate": "1M",
    "max-conns": 2,
    "allow-dest": ["*.example.com:443"],
    "deny-dest": "10.0.0.0/8",
    "upstream": "socks5://u:p@127.0.0.1:9050",
    "outgoing": "192.0.2.7",
}


class Warnings:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warning(self, message: str, *args: object) -> None:
        self.lines.append(message % args)


@pytest.fixture
def warnings(monkeypatch: pytest.MonkeyPatch) -> Warnings:
    recorder = Warnings()
    monkeypatch.setattr(auth_service, "logger", recorder)
    return recorder


def client(service: FakeAuthService, **kwargs: object) -> AuthService:
    return AuthService(parse_auth_url(service.url), **kwargs)  # type: ignore[arg-type]


def test_200_without_settings_accepts_and_the_service_gets_exactly_the_json():
    with FakeAuthService({"remote": ("pw", None)}) as service:
        assert client(service).check("remote", "pw", "127.0.0.1:5555", "socks5") == UserSettings()
    assert service.requests == [{"user": "remote", "password": "pw", "client": "127.0.0.1:5555", "listener": "socks5"}]
    head = service.heads[0].decode()
    assert head.startswith("POST /check?realm=test HTTP/1.1\r\n")
    assert "content-type: application/json" in head.lower()


def test_200_with_settings_carries_them_parsed():
    with FakeAuthService({"remote": ("pw", SETTINGS)}) as service:
        settings = client(service).check("remote", "pw", "127.0.0.1:1", "http")
    assert settings is not None
    assert (settings.rate, settings.max_conns) == (1 << 20, 2)
    assert [str(rule) for rule in settings.rules.allow] == ["*.example.com:443"]
    assert [str(rule) for rule in settings.rules.deny] == ["10.0.0.0/8"]
    assert [str(up) for up in settings.upstream] == ["socks5://u:***@127.0.0.1:9050"]
    assert settings.outgoing == ipaddress.ip_address("192.0.2.7")


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_reject(status):
    assert judge(auth_service.Answer(status, b"")) is None


def test_wrong_password_is_rejected_by_the_service(warnings):
    with FakeAuthService({"remote": ("pw", None)}) as service:
        assert client(service).check("remote", "nope", "127.0.0.1:1", "http") is None
    assert warnings.lines == []


@pytest.mark.parametrize("mode", ["500", "big-head", "big-body", "garbage"])
def test_anything_else_is_unavailable_with_a_warning(mode, warnings):
    with FakeAuthService({"remote": ("hunter2", None)}) as service:
        service.mode = mode
        with pytest.raises(AuthUnavailable) as caught:
            client(service).check("remote", "hunter2", "127.0.0.1:1", "http")
    assert caught.value.reason == "auth_unavailable" and isinstance(caught.value, AuthFailed)
    assert len(warnings.lines) == 1 and "--auth-url http://127.0.0.1:" in warnings.lines[0]
    assert "hunter2" not in str(caught.value) + warnings.lines[0]
    assert "realm=test" not in warnings.lines[0]  # the query may hold a token: never shown


def test_silence_is_unavailable_after_the_timeout(warnings):
    with FakeAuthService({"remote": ("pw", None)}) as service:
        service.mode = "silent"
        started = time.monotonic()
        with pytest.raises(AuthUnavailable):
            client(service, timeout=0.5).check("remote", "pw", "127.0.0.1:1", "http")
        assert 0.4 < time.monotonic() - started < 5
    assert "no answer within 0.5 s" in warnings.lines[0]


def test_the_default_timeout_is_five_seconds():
    assert auth_service.TIMEOUT == 5.0
    assert AuthService(parse_auth_url("http://127.0.0.1:1/")).timeout == 5.0


def test_nothing_listening_is_unavailable(closed_port, warnings):
    with pytest.raises(AuthUnavailable):
        AuthService(parse_auth_url(f"http://127.0.0.1:{closed_port}/")).check("u", "p", "127.0.0.1:1", "http")
    assert len(warnings.lines) == 1


def test_one_warning_per_ten_seconds(warnings):
    now = [100.0]
    with FakeAuthService() as service:
        service.mode = "500"
        checker = client(service, clock=lambda: now[0])
        for step in (0.0, 1.0, 8.0, 2.0, 0.5):  # t = 100, 101, 109, 111, 111.5
            now[0] += step
            with pytest.raises(AuthUnavailable):
                checker.check("u", "p", "127.0.0.1:1", "http")
    assert len(warnings.lines) == 2
    assert "(2 more since the last warning)" in warnings.lines[1]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"max-conns": -1}', "'answer.max-conns'"),
        (b'{"rate": "fast"}', "answer.rate"),
        (b'{"allow-dest": ["no such thing:x"]}', "answer.allow-dest"),
        (b'{"deny_dest": "10.0.0.0/8"}', "unknown setting 'deny_dest'"),
        (b'{"password": "x"}', "unknown setting 'password'"),
        (b'{"outgoing": "nowhere"}', "'answer.outgoing'"),
        (b'{"upstream": "ftp://x:1"}', "answer.upstream"),
        (b"[1, 2]", "not a JSON object"),
        (b"{", "not JSON"),
    ],
)
def test_bad_settings_in_the_answer_are_unavailable_not_accepted(body, message):
    with pytest.raises(auth_service.AnswerError, match=message.replace("(", r"\(")):
        judge(auth_service.Answer(200, body))


def test_exchange_reads_an_answer_fed_byte_by_byte():
    exchange = Exchange(AuthUrl(False, "auth.example", 80, "/c"), b"{}")
    assert exchange.outgoing.startswith(b"POST /c HTTP/1.1\r\n") and exchange.outgoing.endswith(b"\r\n\r\n{}")
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    answers = [exchange.feed(reply[i : i + 1]) for i in range(len(reply))]
    assert answers[:-1] == [None] * (len(reply) - 1)
    assert answers[-1] == auth_service.Answer(200, b"{}")


def test_exchange_caps_the_body():
    exchange = Exchange(AuthUrl(False, "a", 80, "/"), b"{}")
    with pytest.raises(auth_service.AnswerError, match="body over"):
        exchange.feed(http_answer(200, b" " * (MAX_BODY + 1)))


def test_exchange_early_close():
    exchange = Exchange(AuthUrl(False, "a", 80, "/"), b"{}")
    assert exchange.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}") is None
    with pytest.raises(auth_service.AnswerError):
        exchange.feed(b"")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000/check", AuthUrl(False, "127.0.0.1", 8000, "/check")),
        ("https://auth.example", AuthUrl(True, "auth.example", 443, "/")),
        ("HTTP://[::1]/a?b=c", AuthUrl(False, "::1", 80, "/a?b=c")),
    ],
)
def test_parse_auth_url(url, expected):
    assert parse_auth_url(url) == expected


@pytest.mark.parametrize(
    "url",
    ["ftp://x/", "127.0.0.1:8000", "http://", "http://x:99999/", "http://u:secret@x/", "http://x:0/", "http://x/#f"],
)
def test_parse_auth_url_refuses(url):
    with pytest.raises(ConfigError, match="^--auth-url: ") as caught:
        parse_auth_url(url)
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:99999/check?token=TOKEN", "'http://127.0.0.1:99999/check?...' is not a valid URL"),
        ("ftp://127.0.0.1/check?token=TOKEN", "'ftp://127.0.0.1/check?...' must start with http://"),
        ("http:///check?token=TOKEN", "'http:///check?...' needs a host"),
        ("http://u:pw@x/check?token=TOKEN", "'http://u:***@x/check?...': credentials"),
        ("http://x/check?token=TOKEN#TOKEN", "'http://x/check?...' may not have a fragment"),
        ("http://x/check#token=TOKEN", "'http://x/check#...' may not have a fragment"),
        ("http://x:0/check?token=TOKEN", "'http://x:0/check?...' may not have a fragment or port 0"),
        ("h:1/check?next=http://TOKEN", "'h:1/check?...' must start with http://"),
        # an '@' after the host: in the query, or in a password holding '?' or '/': only the start is shown
        ("http://x:0/check?q=a@b:TOKEN", "'http://x...' may not have a fragment or port 0"),
        ("http://u:pw?TOKEN@x/check", "'http://u...' is not a valid URL"),
        ("http://u:pw/TOKEN@x/check", "'http://u...' is not a valid URL"),
    ],
)
def test_refusals_never_show_the_query_which_may_hold_a_token(url, shown):
    """As AuthUrl.__str__ leaves the query out, so do the errors (on stderr, or logged on SIGHUP)."""
    with pytest.raises(ConfigError) as caught:
        parse_auth_url(url)
    assert str(caught.value).startswith(f"--auth-url: {shown}"), caught.value
    assert "TOKEN" not in str(caught.value) and "pw" not in str(caught.value)


# -- Users: the fallback, the cache, settings, session counting ---------------------------


NO_SETTINGS = UserSettings()


class CountingService:
    def __init__(self, answer: UserSettings | None | Exception = NO_SETTINGS) -> None:
        self.answer = answer
        self.calls: list[tuple[str, str, str, str]] = []

    def check(self, user: str, password: str, client: str, listener: str) -> UserSettings | None:
        self.calls.append((user, password, client, listener))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def users_with(service: CountingService, **kwargs: object) -> Users:
    users = Users([("local", "pw")], required=True, **kwargs)  # type: ignore[arg-type]
    users.set_policy({}, 0, service)  # type: ignore[arg-type]
    return users


def test_a_local_user_with_a_wrong_password_never_reaches_the_service():
    service = CountingService()
    users = users_with(service)
    assert not users.check(b"local", b"wrong")
    assert users.check(b"local", b"pw")
    assert service.calls == []


def test_an_unknown_user_goes_to_the_service_once_then_the_cache():
    service = CountingService(UserSettings(max_conns=3))
    users = users_with(service)
    assert users.check(b"remote", b"pw", client="127.0.0.1:9", listener="http")
    assert users.check(b"remote", b"pw", client="127.0.0.1:9", listener="http")
    assert service.calls == [("remote", "pw", "127.0.0.1:9", "http")]
    assert users.settings("remote").max_conns == 3
    assert users.check(b"remote", b"other")  # another password is asked about again
    assert len(service.calls) == 2


def test_without_the_cache_every_check_asks():
    service = CountingService()
    users = users_with(service, cache_seconds=0)
    for _ in range(3):
        assert users.check(b"remote", b"pw")
    assert len(service.calls) == 3


def test_rejections_and_failures_are_not_cached():
    service = CountingService(None)
    users = users_with(service)
    assert not users.check(b"remote", b"pw")
    service.answer = AuthUnavailable("down")
    with pytest.raises(AuthUnavailable):
        users.check(b"remote", b"pw")
    service.answer = UserSettings()
    assert users.check(b"remote", b"pw")
    assert len(service.calls) == 3


def test_the_services_settings_overlay_the_users_table():
    from gproxy.core.rules import parse_user_settings

    service = CountingService(parse_user_settings({"max-conns": 5}, "answer"))
    users = users_with(service)
    table = {"remote": parse_user_settings({"rate": "2k", "deny-dest": "10.0.0.0/8"}, "users.remote")}
    users.set_policy(table, 0, service)  # type: ignore[arg-type]
    assert users.check(b"remote", b"pw")
    settings = users.settings("remote")
    assert (settings.rate, settings.max_conns, [str(r) for r in settings.rules.deny]) == (2048, 5, ["10.0.0.0/8"])
    assert [str(r) for r in users.rules["remote"].deny] == ["10.0.0.0/8"]


def session_of(user: str | None) -> Session:
    session = Session(Address("127.0.0.1", 1), "socks5")
    session.user = user
    return session


def test_admit_counts_per_user_and_release_gives_back():
    users = Users([("a", "pw"), ("b", "pw")], required=True)
    users.set_policy({"b": UserSettings(max_conns=0)}, 2)
    first, second, third = session_of("a"), session_of("a"), session_of("a")
    users.admit(first)
    users.admit(first)  # once per session
    users.admit(second)
    with pytest.raises(UserLimit) as caught:
        users.admit(third)
    assert caught.value.reason == "user_limit"
    for _ in range(5):  # b's own 0 overrides the global 2: no limit
        users.admit(session_of("b"))
    assert first.user_slot is not None
    first.user_slot.release()
    first.user_slot.release()  # idempotent
    users.admit(third)
    assert users.sessions.count("a") == 2
    users.admit(session_of(None))  # no user, nothing counted


def test_user_sessions_without_a_limit_still_count():
    sessions = UserSessions()
    slots = [sessions.acquire("u", 0) for _ in range(3)]
    assert sessions.count("u") == 3
    for slot in slots:
        slot.release()
    assert sessions.count("u") == 0


def test_auth_unavailable_payload_is_json_and_never_logged_in_the_error():
    body = auth_service.request_body("u", 'p"w', "1.2.3.4:5", "https")
    assert json.loads(body) == {"user": "u", "password": 'p"w', "client": "1.2.3.4:5", "listener": "https"}


def test_users_tables_carry_every_setting():
    from gproxy.core.rules import parse_users_table

    tables = parse_users_table({"alice": {"password": "pw", **SETTINGS}, "bob": {"rate": 0}})
    alice = tables["alice"].settings
    assert (alice.rate, alice.max_conns, str(alice.outgoing)) == (1 << 20, 2, "192.0.2.7")
    assert [str(up) for up in alice.upstream] == ["socks5://u:***@127.0.0.1:9050"]
    assert (tables["bob"].settings.rate, tables["bob"].settings.max_conns) == (0, None)
    assert "u:p@" not in repr(tables["alice"])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"max-conns": True}, "'users.a.max-conns' must be an integer"),
        ({"rate": [1]}, "'users.a.rate' must be a rate"),
        ({"upstream": "socks5://u:hidden@x"}, "users.a.upstream: 'socks5://u:***@x' needs a host and a port"),
        ({"outgoing": "::zz"}, "'users.a.outgoing' must be an IP address"),
    ],
)
def test_users_table_setting_errors_name_the_key(entry, message):
    from gproxy.core.rules import parse_users_table

    with pytest.raises(ConfigError) as caught:
        parse_users_table({"a": entry})
    assert message in str(caught.value) and "hidden" not in str(caught.value)
