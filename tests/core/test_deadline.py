"""Handshake deadlines (gproxy/core/deadline.py)."""

from __future__ import annotations

import time

import gevent
import pytest

from gproxy.core.deadline import Deadline
from gproxy.core.errors import HandshakeTimeout


def test_deadline_raises_handshake_timeout_and_is_silent_once_left():
    started = time.monotonic()
    with pytest.raises(HandshakeTimeout), Deadline(0.05):
        gevent.sleep(5)
    assert time.monotonic() - started < 4
    with Deadline(0.05):
        pass
    gevent.sleep(0.15)  # the closed timer must not fire into this greenlet
    with Deadline(None):
        gevent.sleep(0.01)
