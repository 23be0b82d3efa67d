"""PerHub: one object per hub, made once; another thread's hub gets its own."""

from __future__ import annotations

from gevent.hub import get_hub

from gproxy.core.per_hub import PerHub


def test_one_object_per_hub_made_once_and_never_shared_across_threads():
    made: list[object] = []
    per_hub: PerHub[object] = PerHub(lambda hub: made.append(hub) or object())
    mine = per_hub.get()
    assert per_hub.get() is mine and made == [get_hub()]
    theirs = get_hub().threadpool.apply(lambda: (per_hub.get(), per_hub.get()))  # a real thread, its own hub
    assert theirs[0] is theirs[1] and theirs[0] is not mine
    assert per_hub.get() is mine  # back on this hub: its own object again, not remade
    assert len(made) == 2
