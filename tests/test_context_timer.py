"""Timers and clocks on qloop.AioContext."""
import gc
import random
import time
import weakref

import pytest

import qloop
from qloop import CLOCK_HOST, CLOCK_REALTIME, CLOCK_VIRTUAL

MS = 1_000_000
S = 1_000_000_000


def test_virtual_clock_moves_only_when_told(vctx):
    vc = vctx.virtual_clock
    t0 = vc.now()
    time.sleep(0.01)
    assert vc.now() == t0
    vc.advance(5 * MS)
    assert vc.now() == t0 + 5 * MS
    vc.set(t0 + 7 * MS)
    assert vctx.now(CLOCK_VIRTUAL) == t0 + 7 * MS
    with pytest.raises(ValueError, match="backwards"):
        vc.set(t0)
    with pytest.raises(ValueError, match="ns must be >= 0"):
        vc.advance(-1)
    with pytest.raises(TypeError, match="ns must be an int"):
        vc.advance(1.5)


def test_virtual_timer_never_fires_early():
    c = qloop.AioContext()
    fired = []
    t = c.timer(fired.append, 1, clock=CLOCK_VIRTUAL)
    t.mod_in(10 * MS)
    assert t.pending
    c.virtual_clock.advance(10 * MS - 1)
    assert c.poll(blocking=False) is False
    assert fired == []
    c.virtual_clock.advance(1)
    assert c.poll(blocking=False) is True
    assert fired == [1]
    assert not t.pending
    assert t.expire_time == -1
    c.close()


def test_autojump_runs_a_minute_of_timers_at_once(vctx):
    fired = []
    start = vctx.now(CLOCK_VIRTUAL)
    timers = []
    for i in range(60):
        t = vctx.timer(fired.append, i, clock=CLOCK_VIRTUAL)
        t.mod(start + (i + 1) * S)
        timers.append(t)
    wall = time.monotonic()
    while len(fired) < 60:
        vctx.poll(blocking=True)
    assert time.monotonic() - wall < 5
    assert fired == list(range(60))
    assert vctx.now(CLOCK_VIRTUAL) == start + 60 * S


def test_equal_deadlines_fire_in_arming_order(vctx):
    order = []
    deadline = vctx.now(CLOCK_VIRTUAL) + MS
    timers = [vctx.timer(order.append, i, clock=CLOCK_VIRTUAL) for i in range(20)]
    for i in (5, 2, 19, 0, 7, 11, 3, 1, 4, 6, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18):
        timers[i].mod(deadline)
    while len(order) < 20:
        vctx.poll()
    assert order == [5, 2, 19, 0, 7, 11, 3, 1, 4, 6, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18]


def test_timers_fire_in_deadline_order(vctx):
    rnd = random.Random(7)
    now = vctx.now(CLOCK_VIRTUAL)
    deadlines = [now + rnd.randrange(1, 10**9) for _ in range(500)]
    fired = []
    ts = []
    for d in deadlines:
        t = vctx.timer(fired.append, d, clock=CLOCK_VIRTUAL)
        t.mod(d)
        ts.append(t)
    while len(fired) < 500:
        vctx.poll()
    assert fired == sorted(deadlines)


def test_timer_cancelled_by_another_callback_does_not_fire(vctx):
    fired = []
    now = vctx.now(CLOCK_VIRTUAL)
    victim = vctx.timer(fired.append, "victim", clock=CLOCK_VIRTUAL)
    killer = vctx.timer(victim.cancel, clock=CLOCK_VIRTUAL)
    killer.mod(now + MS)
    victim.mod(now + MS)  # same deadline, armed after: runs after the killer
    vctx.poll()
    vctx.virtual_clock.advance(S)
    vctx.poll(blocking=False)
    assert fired == []
    assert not victim.pending


def test_timer_rearmed_from_its_own_callback(vctx):
    fired = []

    def cb():
        fired.append(vctx.now(CLOCK_VIRTUAL))
        if len(fired) < 5:
            t.mod_in(MS)

    t = vctx.timer(cb, clock=CLOCK_VIRTUAL)
    start = vctx.now(CLOCK_VIRTUAL)
    t.mod_in(MS)
    while len(fired) < 5:
        vctx.poll()
    assert fired == [start + (i + 1) * MS for i in range(5)]


def test_timer_modified_by_another_callback_moves(vctx):
    fired = []
    now = vctx.now(CLOCK_VIRTUAL)
    late = vctx.timer(fired.append, "moved", clock=CLOCK_VIRTUAL)
    late.mod(now + 10 * MS)
    mover = vctx.timer(late.mod, now + 2 * MS, clock=CLOCK_VIRTUAL)
    mover.mod(now + MS)
    while not fired:
        vctx.poll()
    assert vctx.now(CLOCK_VIRTUAL) == now + 2 * MS


def test_timer_dropped_while_armed_still_fires(vctx):
    fired = []
    vctx.timer(fired.append, 1, clock=CLOCK_VIRTUAL).mod_in(MS)
    gc.collect()
    while not fired:
        vctx.poll()
    assert fired == [1]


def test_cancelled_timer_releases_its_callback(vctx):
    class Cb:
        def __call__(self):
            pass

    cb = Cb()
    ref = weakref.ref(cb)
    t = vctx.timer(cb, clock=CLOCK_VIRTUAL)
    t.mod_in(S)
    t.cancel()
    t.cancel()
    del cb, t
    gc.collect()
    assert ref() is None


def test_mod_anticipate_only_moves_earlier(vctx):
    now = vctx.now(CLOCK_VIRTUAL)
    t = vctx.timer(lambda: None, clock=CLOCK_VIRTUAL)
    t.mod(now + 10 * MS)
    t.mod_anticipate(now + 20 * MS)
    assert t.expire_time == now + 10 * MS
    t.mod_anticipate(now + 5 * MS)
    assert t.expire_time == now + 5 * MS
    t.cancel()


def test_realtime_timer_fires_after_its_deadline(ctx):
    fired = []
    t = ctx.timer(lambda: fired.append(ctx.now(CLOCK_REALTIME)))
    t.mod_in(20 * MS)
    deadline = t.expire_time
    while not fired:
        ctx.poll()
    assert fired[0] >= deadline
    assert ctx.now() >= deadline


def test_host_clock_is_wall_clock(ctx):
    assert abs(ctx.now(CLOCK_HOST) - time.time_ns()) < 5 * S
    fired = []
    ctx.timer(fired.append, 1, clock=CLOCK_HOST).mod_in(MS)
    while not fired:
        ctx.poll()


def test_timer_arguments_validated(ctx):
    with pytest.raises(ValueError, match="clock"):
        ctx.timer(print, clock=7)
    with pytest.raises(TypeError, match="clock"):
        ctx.timer(print, clock="virtual")
    t = ctx.timer(print)
    with pytest.raises(TypeError, match="expire_ns"):
        t.mod(1.0)
    with pytest.raises(TypeError, match="delay_ns"):
        t.mod_in("1")
    with pytest.raises(TypeError, match="cb must be callable"):
        ctx.timer(None)


def test_timer_exception_raised_by_poll(vctx):
    def boom():
        raise KeyError("timer")

    vctx.timer(boom, clock=CLOCK_VIRTUAL).mod_in(MS)
    with pytest.raises(KeyError):
        while True:
            vctx.poll()


def test_one_million_pending_timers_work():
    c = qloop.AioContext()
    count = [0]

    def cb():
        count[0] += 1

    now = c.now(CLOCK_VIRTUAL)
    ts = []
    for i in range(1_000_000):
        t = c.timer(cb, clock=CLOCK_VIRTUAL)
        t.mod(now + (i * 7919) % 1_000_003 + 1)
        ts.append(t)
    c.virtual_clock.advance(2_000_000)
    while c.poll(blocking=False):
        pass
    assert count[0] == 1_000_000
    c.close()
