"""Timers and the cyclic GC: an armed timer is kept alive by the context (and
not walked by the collector); once disarmed, a reference cycle through it is
collected like any other."""
import gc
import weakref

import pytest

from qloop import AioContext, CLOCK_VIRTUAL


@pytest.fixture
def ctx():
    c = AioContext()
    yield c
    c.close()


def _cyclic_timer(ctx, log):
    class Holder:
        pass
    h = Holder()
    h.timer = ctx.timer(lambda: log.append(h), clock=CLOCK_VIRTUAL)  # h -> timer -> cb -> h
    return h, weakref.ref(h.timer)


def test_armed_cycle_survives_collection_and_fires(ctx):
    log = []
    h, wr = _cyclic_timer(ctx, log)
    h.timer.mod(10)
    del h
    gc.collect()
    assert wr() is not None and wr().pending
    ctx.virtual_clock.advance(10)
    assert ctx.poll(False)
    assert len(log) == 1
    log.clear()
    gc.collect()
    assert wr() is None


def test_cancelled_cycle_is_collected(ctx):
    log = []
    h, wr = _cyclic_timer(ctx, log)
    h.timer.mod(10)
    h.timer.cancel()
    del h
    gc.collect()
    assert wr() is None


def test_rearmed_from_callback_stays_alive(ctx):
    fired = []

    def make():
        class Holder:
            pass
        h = Holder()

        def cb():
            fired.append(1)
            if len(fired) < 3:
                h.timer.mod_in(5)
        h.timer = ctx.timer(cb, clock=CLOCK_VIRTUAL)
        h.timer.mod_in(5)
        return weakref.ref(h.timer)
    wr = make()
    for _ in range(3):
        gc.collect()
        assert wr() is not None
        ctx.virtual_clock.advance(5)
        ctx.poll(False)
    assert len(fired) == 3
    gc.collect()
    assert wr() is None


def test_closing_the_context_releases_armed_cycles():
    c = AioContext()
    log = []
    h, wr = _cyclic_timer(c, log)
    h.timer.mod(10)
    del h
    c.close()
    gc.collect()
    assert wr() is None and log == []


def test_many_armed_timers_are_tracked_again_once_fired(ctx):
    n = 2000
    ts = [ctx.timer(lambda: None, clock=CLOCK_VIRTUAL) for _ in range(n)]
    for i, t in enumerate(ts):
        t.mod(i)
    ctx.virtual_clock.advance(n)
    while ctx.poll(False):
        pass
    assert not any(t.pending for t in ts)
    assert all(gc.is_tracked(t) for t in ts)
