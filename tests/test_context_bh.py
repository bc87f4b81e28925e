"""Bottom halves and oneshot callbacks on qloop.AioContext."""
import gc
import os
import threading
import time
import weakref

import pytest

import qloop


def test_bh_scheduled_twice_runs_once(ctx):
    runs = []
    bh = ctx.bh(runs.append, 1)
    bh.schedule()
    bh.schedule()
    assert ctx.poll(blocking=False) is True
    assert runs == [1]
    assert ctx.poll(blocking=False) is False


def test_bhs_run_in_scheduling_order(ctx):
    order = []
    bhs = [ctx.bh(order.append, i) for i in range(10)]
    for i in (3, 1, 4, 0, 9, 2, 8, 5, 7, 6):
        bhs[i].schedule()
    ctx.poll(blocking=False)
    assert order == [3, 1, 4, 0, 9, 2, 8, 5, 7, 6]


def test_oneshots_and_bhs_share_one_fifo(ctx):
    order = []
    bh = ctx.bh(order.append, "bh")
    ctx.schedule_oneshot(order.append, "a")
    bh.schedule()
    ctx.schedule_oneshot(order.append, "b")
    ctx.poll(blocking=False)
    assert order == ["a", "bh", "b"]


def test_bh_scheduled_during_dispatch_runs_in_next_poll(ctx):
    runs = []

    def cb():
        runs.append(len(runs))
        bh.schedule()

    bh = ctx.bh(cb)
    bh.schedule()
    assert ctx.poll(blocking=False)
    assert runs == [0]
    assert ctx.poll(blocking=False)
    assert runs == [0, 1]
    bh.delete()


def test_self_rescheduling_bh_does_not_starve_fd_handlers(ctx):
    r, w = os.pipe()
    seen = []
    bh = ctx.bh(lambda: bh.schedule())
    bh.schedule()
    ctx.set_fd_handler(r, read=lambda: seen.append(os.read(r, 10)))
    os.write(w, b"x")
    for _ in range(3):
        ctx.poll(blocking=False)
    assert seen == [b"x"]
    ctx.set_fd_handler(r)
    bh.delete()
    os.close(r)
    os.close(w)


def test_bh_cancel_prevents_run_and_poll_reports_no_progress(ctx):
    runs = []
    bh = ctx.bh(runs.append, 1)
    bh.schedule()
    bh.cancel()
    assert ctx.poll(blocking=False) is False
    assert runs == []
    bh.schedule()  # still usable
    assert ctx.poll(blocking=False) is True
    assert runs == [1]


def test_bh_deleted_before_run_never_runs(ctx):
    runs = []
    bh = ctx.bh(runs.append, 1)
    bh.schedule()
    bh.delete()
    assert ctx.poll(blocking=False) is False
    assert runs == []
    assert bh.deleted
    with pytest.raises(RuntimeError, match="deleted"):
        bh.schedule()
    bh.delete()  # idempotent


def test_bh_delete_from_inside_its_own_callback(ctx):
    runs = []

    def cb():
        runs.append(1)
        bh.delete()

    bh = ctx.bh(cb)
    bh.schedule()
    ctx.poll(blocking=False)
    ctx.poll(blocking=False)
    assert runs == [1]
    assert bh.deleted


def test_bh_dropped_while_scheduled_still_runs(ctx):
    runs = []
    ctx.bh(runs.append, "kept").schedule()
    gc.collect()
    ctx.poll(blocking=False)
    assert runs == ["kept"]


def test_bh_object_freed_after_it_ran(ctx):
    class Cb:
        def __call__(self):
            pass

    cb = Cb()
    ref = weakref.ref(cb)
    bh = ctx.bh(cb)
    bh.schedule()
    del cb, bh
    ctx.poll(blocking=False)
    gc.collect()
    assert ref() is None


def test_schedule_oneshot_passes_arguments(ctx):
    got = []
    ctx.schedule_oneshot(lambda *a: got.append(a), 1, "two", None)
    ctx.poll(blocking=False)
    assert got == [(1, "two", None)]


def test_schedule_oneshot_rejects_non_callable(ctx):
    with pytest.raises(TypeError, match="cb must be callable"):
        ctx.schedule_oneshot(42)
    with pytest.raises(TypeError, match="cb"):
        ctx.schedule_oneshot()
    with pytest.raises(TypeError, match="cb must be callable"):
        ctx.bh("nope")


def test_idle_bh_runs_but_is_not_progress(ctx):
    runs = []
    bh = ctx.bh(runs.append, 1)
    bh.schedule_idle()
    # idle BHs wait at most 10 ms in a blocking poll
    assert ctx.poll(blocking=True) is False
    assert runs == [1]


def test_bare_notify_wakes_blocking_poll_which_returns_false(ctx):
    ctx.notify()
    assert ctx.poll(blocking=True) is False


def test_notify_from_thread_wakes_blocking_poll(ctx):
    t = threading.Timer(0.05, ctx.notify)
    t.start()
    assert ctx.poll(blocking=True) is False
    t.join()


def test_oneshot_from_thread_wakes_blocking_poll(ctx):
    done = []
    t = threading.Timer(0.05, ctx.schedule_oneshot, (done.append, 1))
    t.start()
    while not done:
        ctx.poll(blocking=True)
    t.join()
    assert done == [1]


def test_callback_exception_raised_by_poll_and_other_callbacks_not_lost(ctx):
    order = []

    def boom():
        order.append("boom")
        raise ValueError("from callback")

    ctx.schedule_oneshot(order.append, "a")
    ctx.schedule_oneshot(boom)
    ctx.schedule_oneshot(order.append, "b")
    ctx.schedule_oneshot(order.append, "c")
    with pytest.raises(ValueError, match="from callback") as ei:
        ctx.poll(blocking=False)
    assert "boom" in [f.name for f in ei.traceback]
    assert order == ["a", "boom"]
    ctx.poll(blocking=False)
    assert order == ["a", "boom", "b", "c"]


def test_nested_poll_from_callback_continues_outer_batch(ctx):
    order = []

    def outer():
        order.append("outer")
        ctx.poll(blocking=False)
        order.append("outer-end")

    ctx.schedule_oneshot(outer)
    ctx.schedule_oneshot(order.append, "second")
    ctx.poll(blocking=False)
    assert order == ["outer", "second", "outer-end"]


def test_poll_from_second_thread_while_polling_raises(ctx):
    errors = []
    started = threading.Event()

    def other():
        started.wait()
        time.sleep(0.1)  # let the main thread block in poll()
        try:
            ctx.poll(blocking=False)
        except RuntimeError as e:
            errors.append(e)
        ctx.notify()

    t = threading.Thread(target=other)
    t.start()
    started.set()
    ctx.poll(blocking=True)
    t.join()
    assert errors and "being polled" in str(errors[0])


def test_eight_threads_schedule_one_million_oneshots_none_lost(ctx):
    n_threads, per_thread = 8, 125_000
    count = [0]

    def inc():
        count[0] += 1

    def worker():
        so = ctx.schedule_oneshot
        for _ in range(per_thread):
            so(inc)

    threads = [threading.Thread(target=worker) for _ in range(n_threads)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        ctx.poll(blocking=False)
    for t in threads:
        t.join()
    while ctx.poll(blocking=False):
        pass
    assert count[0] == n_threads * per_thread


def test_close_drops_pending_callbacks_and_their_references(fdmon):
    class Cb:
        def __call__(self):
            raise AssertionError("must not run")

    c = qloop.AioContext()
    cb = Cb()
    ref = weakref.ref(cb)
    bh = c.bh(cb)
    bh.schedule()
    c.schedule_oneshot(cb)
    c.timer(cb).mod_in(10**9)
    del cb
    c.close()
    c.close()  # idempotent
    gc.collect()
    assert ref() is None
    assert bh.deleted
    with pytest.raises(RuntimeError, match="closed"):
        c.poll()
    with pytest.raises(RuntimeError, match="closed"):
        bh.schedule()


def test_context_manager_closes(fdmon):
    with qloop.AioContext() as c:
        assert not c.closed
    assert c.closed


def test_close_while_polling_is_refused(ctx):
    errors = []

    def cb():
        try:
            ctx.close()
        except RuntimeError as e:
            errors.append(e)

    ctx.schedule_oneshot(cb)
    ctx.poll(blocking=False)
    assert errors and "while it is polling" in str(errors[0])


def test_run_forever_returns_after_stop_from_callback(ctx):
    count = [0]

    def chain():
        count[0] += 1
        if count[0] < 1000:
            ctx.schedule_oneshot(chain)
        else:
            ctx.stop()

    ctx.schedule_oneshot(chain)
    ctx.run_forever()
    assert count[0] == 1000


def test_run_forever_stopped_from_another_thread(ctx):
    threading.Timer(0.05, ctx.stop).start()
    ctx.run_forever()  # returns; nothing else to do


def test_stop_before_run_forever_makes_it_return_at_once(ctx):
    ctx.stop()
    ctx.run_forever()


def test_run_forever_raises_callback_exception_and_keeps_the_rest(ctx):
    ran = []
    ctx.schedule_oneshot(lambda: 1 / 0)
    ctx.schedule_oneshot(ran.append, "later")
    with pytest.raises(ZeroDivisionError):
        ctx.run_forever()
    ctx.poll(blocking=False)
    assert ran == ["later"]


@pytest.mark.parametrize("scheduled", [False, True])
def test_close_releases_a_bh_whose_callback_holds_its_last_reference(scheduled):
    """The BH is kept alive only by its own callback's closure: releasing the
    callback on close frees the BH in the middle of its release, which must
    not touch it afterwards (a use-after-free under ASan)."""
    import gc
    import weakref

    ctx = qloop.AioContext()

    def make():
        bh = None

        def cb():
            return bh

        bh = ctx.bh(cb)
        if scheduled:
            bh.schedule()
        return weakref.ref(bh)

    ref = make()
    assert ref() is not None  # alive through the cycle only
    ctx.close()
    gc.collect()
    assert ref() is None
