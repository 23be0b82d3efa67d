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


def test_settle_heap_freezes_the_startup_objects_and_widens_the_youngest_generation():
    """What a serving process does once: the objects made so far leave the collector's
    sight, and the youngest generation grows to GC_YOUNG_THRESHOLD before a pass (the
    older generations' thresholds untouched). Restored after, for the other tests: the
    threshold, and nothing frozen if nothing was (else settle_heap() froze it all again)."""
    import gc

    from gproxy.ops.runtime import GC_YOUNG_THRESHOLD, settle_heap

    threshold, was_frozen = gc.get_threshold(), gc.get_freeze_count() > 0
    try:
        gc.unfreeze()  # what an earlier test froze, if any: settle_heap() must freeze it all again
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *threshold[1:])
    finally:
        if not was_frozen:
            gc.unfreeze()
        gc.set_threshold(*threshold)
