"""Leak checks over repeated API calls.

Each scenario runs a warm-up (free lists, caches, interned strings fill up),
then N more rounds, and checks that neither Python-allocated memory
(tracemalloc) nor the number of gc-tracked objects grew, and on a debug
build of CPython that the total reference count did not drift.  C-level
leaks of the core are the business of ASan/Valgrind (ci/sanitize,
ci/valgrind-py); this catches references the binding forgets to drop.
"""
import gc
import os
import sys
import tracemalloc

import pytest

import qloop
from qloop import CLOCK_VIRTUAL

ROUNDS = 10_000
WARMUP = 1_000
# Bytes of Python memory growth tolerated over ROUNDS rounds (allocator
# noise, e.g. a dict resize in the tracing machinery), i.e. < 2 B/round.
MAX_GROWTH = 16 * 1024
MAX_OBJECTS_GROWTH = 20


def _measure(fn, rounds=ROUNDS):
    for _ in range(WARMUP):
        fn()
    gc.collect()
    refs0 = sys.gettotalrefcount() if hasattr(sys, "gettotalrefcount") else None
    objs0 = len(gc.get_objects())
    for _ in range(rounds):
        fn()
    gc.collect()
    objs = len(gc.get_objects()) - objs0
    refs = (sys.gettotalrefcount() - refs0) if refs0 is not None else 0
    tracemalloc.start()
    try:
        snap0 = tracemalloc.take_snapshot()
        for _ in range(rounds):
            fn()
        gc.collect()
        snap1 = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    filt = [tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, __file__)]
    stats = snap1.filter_traces(filt).compare_to(snap0.filter_traces(filt), "lineno")
    growth = sum(s.size_diff for s in stats)
    return growth, objs, refs, stats[:5]


def _check(fn, rounds=ROUNDS):
    growth, objs, refs, top = _measure(fn, rounds)
    detail = "\n".join(str(s) for s in top)
    assert growth < MAX_GROWTH, "Python memory grew by %d B over %d rounds:\n%s" % (
        growth, rounds, detail)
    assert objs < MAX_OBJECTS_GROWTH, "%d more gc objects after %d rounds" % (objs, rounds)
    # debug builds only: the total refcount must not drift with the rounds
    assert refs < rounds // 10, "total refcount grew by %d" % refs


@pytest.fixture
def ctx():
    c = qloop.AioContext()
    yield c
    c.close()


def test_no_leak_bh_create_schedule_poll_delete(ctx):
    sink = []

    def round_():
        bh = ctx.bh(sink.append, 1)
        bh.schedule()
        ctx.poll(blocking=False)
        bh.delete()
        sink.clear()

    _check(round_)


def test_no_leak_bh_dropped_while_scheduled(ctx):
    sink = []

    def round_():
        ctx.bh(sink.append, object()).schedule()  # only the pending list holds it
        ctx.poll(blocking=False)
        sink.clear()

    _check(round_)


def test_no_leak_bh_dropped_unscheduled_and_cancelled(ctx):
    def round_():
        b = ctx.bh(lambda: None)
        b.schedule()
        b.cancel()
        del b
        ctx.poll(blocking=False)

    _check(round_)


def test_no_leak_oneshots_with_args(ctx):
    sink = []

    def round_():
        ctx.schedule_oneshot(sink.append, (1, 2))
        ctx.schedule_oneshot(sink.extend, [3])
        ctx.poll(blocking=False)
        sink.clear()

    _check(round_)


def test_no_leak_callback_exception(ctx):
    def boom():
        raise KeyError("x")

    def round_():
        ctx.schedule_oneshot(boom)
        with pytest.raises(KeyError):
            ctx.poll(blocking=False)

    _check(round_, rounds=3000)


def test_no_leak_timers(ctx):
    vc = ctx.virtual_clock
    sink = []

    def round_():
        t = ctx.timer(sink.append, 1, clock=CLOCK_VIRTUAL)
        t.mod_in(1000)
        u = ctx.timer(sink.append, 2, clock=CLOCK_VIRTUAL)
        u.mod_in(5000)
        vc.advance(1000)
        ctx.poll(blocking=False)
        u.cancel()
        del t, u
        sink.clear()

    _check(round_)


def test_no_leak_timer_dropped_while_armed(ctx):
    vc = ctx.virtual_clock
    sink = []

    def round_():
        ctx.timer(sink.append, object(), clock=CLOCK_VIRTUAL).mod_in(10)
        vc.advance(10)
        ctx.poll(blocking=False)
        sink.clear()

    _check(round_)


def test_no_leak_fd_handlers(ctx):
    r, w = os.pipe()
    os.set_blocking(r, False)
    sink = []

    def on_read():
        sink.append(os.read(r, 16))

    def round_():
        ctx.set_fd_handler(r, on_read)
        os.write(w, b"x")
        ctx.poll(blocking=False)
        ctx.set_fd_handler(r, None)
        ctx.set_fd_handler(w, write=lambda: None)
        ctx.poll(blocking=False)
        ctx.set_fd_handler(w, None, None)
        sink.clear()

    try:
        _check(round_, rounds=5000)
    finally:
        os.close(r)
        os.close(w)


def test_no_leak_event_notifier_handler(ctx):
    n = qloop.EventNotifier()
    sink = []

    def round_():
        ctx.set_event_notifier(n, sink.append)
        n.set()
        ctx.poll(blocking=False)
        ctx.set_event_notifier(n, None)
        sink.clear()

    try:
        _check(round_, rounds=5000)
    finally:
        n.close()


def test_no_leak_contexts_created_and_closed():
    def round_():
        c = qloop.AioContext()
        b = c.bh(lambda: None)
        b.schedule()
        c.timer(lambda: None, clock=CLOCK_VIRTUAL).mod_in(5)
        c.schedule_oneshot(print, "never runs")
        c.close()

    _check(round_, rounds=3000)


def test_no_leak_contexts_dropped_without_close():
    def round_():
        c = qloop.AioContext()
        c.bh(lambda: None).schedule()
        del c

    _check(round_, rounds=3000)


def test_no_leak_notifiers():
    def round_():
        n = qloop.EventNotifier()
        n.set()
        n.test_and_clear()
        n.close()

    _check(round_, rounds=5000)

