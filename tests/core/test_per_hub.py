"""PerHub: one object per hub, made once; another thread's hub gets its own."""

from __future__ import annotations

from gevent.hub import get_hub

from gproxy.core.per_hub import PerHub, forget_hub


def test_one_object_per_hub_made_once_and_never_shared_across_threads():
    made: list[object] = []
    per_hub: PerHub[object] = PerHub(lambda hub: made.append(hub) or object())
    mine = per_hub.get()
    assert per_hub.get() is mine and made == [get_hub()]
    theirs = get_hub().threadpool.apply(lambda: (per_hub.get(), per_hub.get()))  # a real thread, its own hub
    assert theirs[0] is theirs[1] and theirs[0] is not mine
    assert per_hub.get() is mine  # back on this hub: its own object again, not remade
    assert len(made) == 2


def test_forget_closes_and_drops_the_hubs_object_and_the_next_get_makes_a_new_one():
    closed: list[object] = []

    class Closable:
        def close(self) -> None:
            closed.append(self)

    per_hub: PerHub[Closable] = PerHub(lambda hub: Closable())
    first = per_hub.get()
    per_hub.forget(get_hub())
    assert closed == [first]
    assert per_hub.get() is not first

    def in_a_thread() -> tuple[Closable, Closable]:  # forget_hub: every PerHub, for that hub only
        theirs = per_hub.get()
        forget_hub(get_hub())
        return theirs, per_hub.get()

    theirs, remade = get_hub().threadpool.apply(in_a_thread)
    assert closed == [first, theirs]  # that hub's object only: this hub's new one is left alone
    assert remade is not theirs


def test_forget_of_another_hub_leaves_this_ones_alone():
    per_hub: PerHub[object] = PerHub(lambda hub: object())
    mine = per_hub.get()
    per_hub.forget(get_hub().threadpool.apply(get_hub))  # a real thread's own hub
    assert per_hub.get() is mine
