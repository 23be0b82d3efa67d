"""Session.logfmt(): the access-log line, field by field (the integration tests read it from the file)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from gproxy.core import session as session_mod
from gproxy.core.addr import Address
from gproxy.core.errors import Outcome
from gproxy.core.session import MAX_FIELD, Session
from tests.helpers import logfmt_fields


def test_every_field_in_order_with_its_value():
    session = Session(Address("::1", 4321), "socks5 [::1]:1080", proto="socks5", cmd="connect", dest="example.com:443")
    session.user, session.via, session.up, session.down = "alice", "direct", 10, 2000
    session.outcome = Outcome.CONNECTION_REFUSED
    got = logfmt_fields(session.logfmt())
    assert list(got) == ["ts", "client", "user", "proto", "cmd", "dest", "via", "up", "down", "dur", "outcome"]
    assert (got["client"], got["user"], got["proto"], got["cmd"]) == ("[::1]:4321", "alice", "socks5", "connect")
    assert (got["dest"], got["via"], got["up"], got["down"]) == ("example.com:443", "direct", "10", "2000")
    assert got["outcome"] == "connection_refused"
    assert re.fullmatch(r"\d+\.\d{3}", got["dur"])


def test_status_and_counts_since_the_last_logged_request():
    session = Session(Address("127.0.0.1", 5), "http", proto="http", cmd="get", dest="a:80", status=404)
    session.up, session.down = 100, 5000
    session.request_logged()
    session.up, session.down = 130, 5600
    got = logfmt_fields(session.logfmt())
    assert (got["status"], got["up"], got["down"]) == ("404", "30", "600")
    assert "via" not in got and got["user"] == "-"


def test_values_from_clients_are_quoted_escaped_and_capped():
    session = Session(Address("127.0.0.1", 5), "socks5")
    session.user = 'bob "the" user\n\x00=x'
    session.dest = "h" * 1000 + ".example"
    line = session.logfmt()
    assert "\n" not in line and "\x00" not in line
    got = logfmt_fields(line)
    assert got["user"] == 'bob "the" user\n\x00=x'
    assert got["dest"] == "h" * MAX_FIELD


def test_the_timestamp_is_utc_to_the_millisecond(monkeypatch):
    before = datetime.now(UTC)
    stamp = logfmt_fields(Session(Address("127.0.0.1", 5), "socks5").logfmt())["ts"]
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((parsed - before).total_seconds()) < 5
    # the second is formatted once and reused; a new second formats a new one
    clock = [1_700_000_000.25]
    formatted = []
    strftime = session_mod.time.strftime
    monkeypatch.setattr(session_mod.time, "time", lambda: clock[0])
    monkeypatch.setattr(session_mod.time, "strftime", lambda *args: formatted.append(args) or strftime(*args))
    session = Session(Address("127.0.0.1", 5), "socks5")
    assert logfmt_fields(session.logfmt())["ts"] == "2023-11-14T22:13:20.250Z"
    clock[0] = 1_700_000_000.999
    assert logfmt_fields(session.logfmt())["ts"] == "2023-11-14T22:13:20.999Z"
    assert len(formatted) == 1  # the same second: formatted once
    clock[0] = 1_700_000_061.007
    assert logfmt_fields(session.logfmt())["ts"] == "2023-11-14T22:14:21.007Z"
    assert len(formatted) == 2
