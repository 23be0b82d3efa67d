"""What cli and workers share (gproxy/ops/runtime.py)."""

from __future__ import annotations

import gevent

from gproxy.ops.runtime import fast_greenlets


def test_fast_greenlets_respects_the_environment(monkeypatch):
    monkeypatch.setattr(gevent.config, "track_greenlet_tree", True)
    monkeypatch.setenv("GEVENT_TRACK_GREENLET_TREE", "1")
    fast_greenlets()
    assert gevent.config.track_greenlet_tree
    monkeypatch.delenv("GEVENT_TRACK_GREENLET_TREE")
    fast_greenlets()
    assert not gevent.config.track_greenlet_tree
