"""A coroutine that runs a poll itself may not switch away inside it."""
import os

import qloop


def test_yield_inside_a_poll_run_by_the_coroutine_is_refused():
    errors = []

    def in_callback():
        try:
            qloop.coroutine_yield()
        except RuntimeError as e:
            errors.append(str(e))

    def body(ctx):
        ctx.schedule_oneshot(in_callback)
        ctx.poll(blocking=False)  # the callback runs on our stack, inside our poll
        qloop.coroutine_yield()   # outside the poll: allowed
        return "done"

    with qloop.AioContext() as ctx:
        co = qloop.Coroutine(body, ctx)
        co.enter()
        assert errors and "inside an AioContext.poll()" in errors[0]
        co.enter()
        assert co.result() == "done"


def test_lock_wait_inside_a_poll_run_by_the_coroutine_is_refused():
    m = qloop.CoMutex()
    errors = []

    def holder():
        m.lock()
        qloop.coroutine_yield()
        m.unlock()

    def in_callback():
        try:
            m.lock()
        except RuntimeError as e:
            errors.append(str(e))

    def body(ctx):
        ctx.schedule_oneshot(in_callback)
        ctx.poll(blocking=False)

    with qloop.AioContext() as ctx:
        h = qloop.Coroutine(holder)
        h.enter()
        qloop.Coroutine(body, ctx).enter()
        assert errors and "CoMutex.lock()" in errors[0]
        h.enter()


def test_coroutine_entered_from_a_callback_may_yield_and_be_resumed_from_another_poll():
    # The normal case stays allowed: the poll belongs to the caller, not to us.
    log = []

    def body():
        log.append("start")
        qloop.coroutine_yield()
        log.append("resumed")

    with qloop.AioContext() as ctx:
        co = qloop.Coroutine(body)
        ctx.schedule_oneshot(co.enter)
        ctx.poll(blocking=False)
        ctx.schedule_oneshot(co.enter)
        ctx.poll(blocking=False)
    assert log == ["start", "resumed"] and co.done


def test_channel_read_all_inside_a_poll_run_by_the_coroutine_is_refused():
    r, w = os.pipe()
    errors = []

    def in_callback(ch):
        try:
            ch.read_all(1)
        except RuntimeError as e:
            errors.append(str(e))

    def body(ctx, ch):
        ctx.schedule_oneshot(in_callback, ch)
        ctx.poll(blocking=False)

    with qloop.AioContext() as ctx:
        ch = qloop.QIOChannelFile(r)
        ch.set_blocking(False)
        qloop.Coroutine(body, ctx, ch).enter()
        ch.close()
    os.close(w)
    assert errors and "read_all()" in errors[0]
