"""The one table that maps connect failures to SOCKS5 reply codes."""

from __future__ import annotations

import errno
import socket

import pytest

from gproxy.codec.replies import ReplyCode
from gproxy.core.dial import connect_any, reply_for
from gproxy.core.errors import DialError


@pytest.mark.parametrize(
    ("exc", "reply"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ReplyCode.CONNECTION_REFUSED),
        (OSError(errno.ENETUNREACH, "unreachable"), ReplyCode.NETWORK_UNREACHABLE),
        (OSError(errno.EHOSTUNREACH, "no route"), ReplyCode.HOST_UNREACHABLE),
        (socket.gaierror(socket.EAI_NONAME, "no name"), ReplyCode.HOST_UNREACHABLE),
        (TimeoutError("timed out"), ReplyCode.TTL_EXPIRED),
        (OSError(errno.EACCES, "denied"), ReplyCode.GENERAL_FAILURE),
        (DialError("x", ReplyCode.TTL_EXPIRED), ReplyCode.TTL_EXPIRED),
    ],
)
def test_reply_for(exc, reply):
    assert reply_for(exc) == reply


def test_connect_any_tries_every_address(monkeypatch, closed_port):
    """The first address refuses, the second answers: connect_any returns the second."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    try:
        addrs = [(socket.AF_INET, ("127.0.0.1", closed_port)), (socket.AF_INET, listener.getsockname())]
        sock = connect_any(addrs, 5)
        assert sock.getpeername() == listener.getsockname()
        sock.close()
    finally:
        listener.close()


def test_connect_any_reports_the_last_failure(closed_port):
    with pytest.raises(DialError) as info:
        connect_any([(socket.AF_INET, ("127.0.0.1", closed_port))], 5)
    assert info.value.reply == ReplyCode.CONNECTION_REFUSED
