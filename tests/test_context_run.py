"""AioContext.run / qloop.run and AioContext.co_schedule."""
import threading
import time
import traceback

import pytest

import qloop


def test_run_returns_the_coroutines_result():
    def add(a, b):
        qloop.co_sleep_ns(1_000_000)
        return a + b

    with qloop.AioContext() as ctx:
        assert ctx.run(add, 2, 3) == 5
    assert qloop.run(add, 4, 5) == 9


def test_run_raises_the_coroutines_exception_with_its_frames():
    def inner():
        qloop.co_sleep_ns(1000)
        raise KeyError("deep")

    def outer():
        inner()

    with qloop.AioContext() as ctx:
        with pytest.raises(KeyError) as ei:
            ctx.run(outer)
    names = [f.name for f in traceback.extract_tb(ei.value.__traceback__)]
    assert "outer" in names and "inner" in names


def test_sleeping_an_hour_on_the_virtual_clock_finishes_at_once():
    def sleeper():
        qloop.co_sleep_ns(3600 * 10**9, clock=qloop.CLOCK_VIRTUAL)
        return "woke"

    with qloop.AioContext() as ctx:
        ctx.virtual_clock.autojump = True
        start = ctx.now(qloop.CLOCK_VIRTUAL)
        t0 = time.monotonic()
        assert ctx.run(sleeper) == "woke"
        assert time.monotonic() - t0 < 5
        assert ctx.now(qloop.CLOCK_VIRTUAL) - start == 3600 * 10**9


def test_co_schedule_runs_the_coroutine_in_the_next_poll():
    ran = []
    with qloop.AioContext() as ctx:
        co = qloop.Coroutine(ran.append, "co")
        ctx.co_schedule(co)
        assert ran == []
        ctx.poll(blocking=False)
        assert ran == ["co"]
        assert co.done


def test_co_schedule_from_another_thread_wakes_the_context():
    ran = []
    with qloop.AioContext() as ctx:
        co = qloop.Coroutine(lambda: ran.append(threading.current_thread().name))
        t = threading.Timer(0.05, ctx.co_schedule, (co,))
        t.start()
        while not co.done:
            ctx.poll()
        t.join()
    assert ran == [threading.current_thread().name]


def test_co_schedule_twice_is_refused():
    with qloop.AioContext() as ctx:
        co = qloop.Coroutine(lambda: None)
        ctx.co_schedule(co)
        with pytest.raises(RuntimeError):
            ctx.co_schedule(co)
        ctx.poll(blocking=False)
        with pytest.raises(RuntimeError, match="finished"):
            ctx.co_schedule(co)
        with pytest.raises(TypeError, match="qloop.Coroutine"):
            ctx.co_schedule(lambda: None)
