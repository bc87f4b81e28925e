"""The cycle collector sees the references a context's C lists hold."""
import gc
import os

import pytest

import qloop
from qloop import CLOCK_VIRTUAL


def _fds():
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 0


@pytest.mark.parametrize("what", ["scheduled-bh", "armed-timer", "both"])
def test_context_dropped_with_scheduled_bh_or_armed_timer_is_collected(what):
    """Regression: the pending list's reference to a scheduled BH (and the
    timer list's to an armed Timer) was invisible to the cycle collector, so
    a context dropped without close() with a scheduled BH or armed timer
    (BH -> context -> pending BH) leaked the context, its objects and its
    fds (eventfd + epoll fd)."""
    import weakref

    gc.collect()
    fds0 = _fds()
    refs = []
    for _ in range(50):
        c = qloop.AioContext()
        if what in ("scheduled-bh", "both"):
            c.bh(lambda: None).schedule()
        if what in ("armed-timer", "both"):
            c.timer(lambda: None, clock=CLOCK_VIRTUAL).mod_in(10)
        refs.append(weakref.ref(c))
        del c
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert _fds() <= fds0


@pytest.mark.parametrize("what", ["deleted-pending-bh", "oneshot-referencing-context",
                                  "oneshot-args-referencing-context"])
def test_context_dropped_with_deleted_bh_or_oneshot_cycle_is_collected(what):
    """A context dropped without close() while (a) a BH deleted after being
    scheduled is still on the pending list (pending list -> BH -> context),
    or (b) a pending schedule_oneshot's callable or arguments reference the
    context (context -> C oneshot node -> callable -> context), must be
    collected with its fds: the collector sees these references."""
    import weakref

    gc.collect()
    fds0 = _fds()
    refs = []
    for _ in range(50):
        c = qloop.AioContext()
        if what == "deleted-pending-bh":
            b = c.bh(lambda: None)
            b.schedule()
            b.delete()
            del b
        elif what == "oneshot-referencing-context":
            c.schedule_oneshot(lambda c=c: c.poll(blocking=False))
        else:
            c.schedule_oneshot(lambda x: None, c)
        refs.append(weakref.ref(c))
        del c
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    assert _fds() <= fds0


def test_bh_deleted_while_pending_is_released_by_poll_and_by_close():
    """The pending list's reference to a BH deleted while scheduled goes away
    at its dequeue: in the next poll, or when the context is closed."""
    import sys

    for finish in ("poll", "close"):
        c = qloop.AioContext()
        b = c.bh(lambda: None)
        b.schedule()
        b.delete()
        held = sys.getrefcount(b)
        if finish == "poll":
            assert c.poll(blocking=False) is False  # dequeued, not run
        c.close()
        assert sys.getrefcount(b) == held - 1
        assert b.deleted
