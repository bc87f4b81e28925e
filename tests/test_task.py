"""qloop.QIOTask: callback exactly once, in the context's thread; errors,
source lifetime, worker threads and wait_thread()."""
import threading
import time
import traceback
import weakref

import pytest

import qloop
from conftest import set_when_gil_released

TIMEOUT = 60.0


@pytest.fixture
def ctx():
    c = qloop.AioContext()
    while c.poll(blocking=False):
        pass
    yield c
    c.close()


class Source:
    pass


def poll_until(ctx, cond):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        ctx.poll(blocking=True)


def test_complete_runs_callback_once_synchronously(ctx):
    calls = []
    src = Source()
    task = qloop.QIOTask(src, calls.append, context=ctx)
    assert task.source is src and not task.done
    task.complete()
    assert calls == [task]
    assert task.done
    with pytest.raises(RuntimeError, match="already completed"):
        task.complete()
    with pytest.raises(RuntimeError, match="already completed"):
        task.abort(ValueError())
    assert ctx.poll(blocking=False) is False
    assert calls == [task]


def test_source_is_kept_until_the_callback_ran_then_released(ctx):
    src = Source()
    ref = weakref.ref(src)
    seen = []
    task = qloop.QIOTask(src, lambda t: seen.append(t.source), context=ctx)
    del src
    assert ref() is not None
    task.complete()
    assert seen == [ref()] and seen[0] is not None
    seen.clear()
    assert ref() is None
    assert task.source is None


def test_abort_sets_error_and_propagate_error_raises_it_once(ctx):
    errors = []

    def cb(t):
        try:
            t.propagate_error()
        except OSError as e:
            errors.append(e)
        errors.append(t.propagate_error())  # cleared: False

    task = qloop.QIOTask(Source(), cb, context=ctx)
    exc = OSError(5, "io")
    task.abort(exc)
    assert errors == [exc, False]
    assert task.error is None


def test_propagate_error_returns_false_without_error(ctx):
    out = []
    task = qloop.QIOTask(Source(), lambda t: out.append(t.propagate_error()), context=ctx)
    task.complete()
    assert out == [False]


def test_first_error_wins(ctx):
    task = qloop.QIOTask(Source(), lambda t: None, context=ctx)
    first, second = ValueError("first"), ValueError("second")
    task.set_error(None)  # no-op
    task.set_error(first)
    task.set_error(second)
    assert task.error is first
    task.abort(KeyError("third"))
    assert task.error is first
    with pytest.raises(TypeError):
        qloop.QIOTask(Source(), lambda t: None, context=ctx).set_error("not an exception")


def test_callback_exception_raised_by_complete(ctx):
    def cb(t):
        raise RuntimeError("in callback")

    task = qloop.QIOTask(Source(), cb, context=ctx)
    with pytest.raises(RuntimeError, match="in callback"):
        task.complete()
    assert task.done and task.source is None


def test_run_in_thread_result_and_callback_thread(ctx):
    main = threading.get_ident()
    seen = []

    def worker(a, b):
        return a + b, threading.get_ident()

    task = qloop.QIOTask(Source(), lambda t: seen.append((t.result, threading.get_ident(),
                                                          t.error)), context=ctx)
    task.run_in_thread(worker, 2, 3)
    with pytest.raises(RuntimeError, match="worker"):
        task.complete()
    poll_until(ctx, lambda: seen)
    (value, worker_thread), cb_thread, err = seen[0]
    assert value == 5 and worker_thread != main
    assert cb_thread == main and err is None
    for _ in range(3):
        ctx.poll(blocking=False)
    assert len(seen) == 1


def test_run_in_thread_exception_aborts_task_with_traceback(ctx):
    errors = []

    def failing_worker():
        raise ConnectionRefusedError("nope")

    def cb(t):
        try:
            t.propagate_error()
        except ConnectionRefusedError as e:
            errors.append(e)

    task = qloop.QIOTask(Source(), cb, context=ctx)
    task.run_in_thread(failing_worker)
    poll_until(ctx, lambda: errors)
    names = [f.name for f in traceback.extract_tb(errors[0].__traceback__)]
    assert "failing_worker" in names
    assert task.result is None


def test_deferred_callback_exception_is_raised_by_poll(ctx):
    def cb(t):
        raise LookupError("from task callback")

    task = qloop.QIOTask(Source(), cb, context=ctx)
    task.run_in_thread(int, "1")
    with pytest.raises(LookupError, match="from task callback"):
        poll_until(ctx, lambda: task.done)
    assert task.done


def test_wait_thread_runs_callback_now_and_only_once(ctx):
    calls = []
    gate = threading.Event()

    def worker():
        gate.wait()
        return "w"

    task = qloop.QIOTask(Source(), lambda t: calls.append(t.result), context=ctx)
    task.run_in_thread(worker)
    go, done = set_when_gil_released(gate)
    go()
    task.wait_thread()
    done()
    assert calls == ["w"]
    # the worker's own completion still comes, and does nothing
    poll_until(ctx, lambda: qloop.get_thread_pool(ctx).in_flight == 0)
    assert calls == ["w"]
    with pytest.raises(RuntimeError, match="no worker"):
        task.wait_thread()


def test_wait_thread_without_worker_raises(ctx):
    task = qloop.QIOTask(Source(), lambda t: None, context=ctx)
    with pytest.raises(RuntimeError, match="no worker"):
        task.wait_thread()


def test_complete_from_another_thread_runs_callback_in_context_thread(ctx):
    seen = []
    task = qloop.QIOTask(Source(), lambda t: seen.append(threading.get_ident()), context=ctx)
    t = threading.Thread(target=task.complete)
    t.start()
    t.join()
    assert seen == []
    poll_until(ctx, lambda: seen)
    assert seen == [threading.get_ident()]


def test_closing_context_completes_running_task():
    ctx = qloop.AioContext()
    gate = threading.Event()
    started = threading.Event()
    out = []

    def worker():
        started.set()
        gate.wait()
        return 1

    task = qloop.QIOTask(Source(), lambda t: out.append((t.result, t.error)), context=ctx)
    task.run_in_thread(worker)
    assert started.wait(TIMEOUT)
    go, done = set_when_gil_released(gate)
    go()
    ctx.close()
    done()
    assert out == [(1, None)]


def test_closing_context_cancels_queued_task():
    ctx = qloop.AioContext()
    qloop.get_thread_pool(ctx).set_sizes(0, 1)
    gate = threading.Event()
    out = []
    blocker = qloop.QIOTask(Source(), lambda t: out.append("blocker"), context=ctx)
    blocker.run_in_thread(gate.wait)
    queued = qloop.QIOTask(Source(), lambda t: out.append(type(t.error)), context=ctx)
    queued.run_in_thread(int, "1")
    go, done = set_when_gil_released(gate)
    go()
    ctx.close()
    done()
    assert out == ["blocker", qloop.CancelledError]


def test_bad_arguments(ctx):
    with pytest.raises(TypeError, match="callback"):
        qloop.QIOTask(Source(), 3, context=ctx)
    with pytest.raises(TypeError, match="context"):
        qloop.QIOTask(Source(), print, context=object())
    task = qloop.QIOTask(Source(), print, context=ctx)
    with pytest.raises(TypeError, match="worker"):
        task.run_in_thread(5)


def test_default_context_is_the_main_context():
    seen = []
    task = qloop.QIOTask(Source(), lambda t: seen.append((t.result, threading.get_ident())))
    assert task.context is qloop.get_aio_context()
    task.run_in_thread(pow, 2, 10)
    deadline = time.monotonic() + TIMEOUT
    while not seen:
        assert time.monotonic() < deadline
        qloop.main_loop_wait()
    assert seen == [(1024, threading.get_ident())]


def test_wait_thread_from_the_worker_itself_is_refused(ctx):
    out = []

    def worker():
        try:
            task.wait_thread()
        except RuntimeError as e:
            out.append(str(e))

    task = qloop.QIOTask(Source(), lambda t: None, context=ctx)
    task.run_in_thread(worker)
    poll_until(ctx, lambda: task.done)
    assert out and "own worker" in out[0]


def test_10000_tasks_in_flight_each_complete_once(ctx):
    calls = {}

    def cb(t):
        calls[t.source] = calls.get(t.source, 0) + 1

    for i in range(10000):
        qloop.QIOTask(i, cb, context=ctx).run_in_thread(abs, -i)
    poll_until(ctx, lambda: len(calls) == 10000)
    assert set(calls.values()) == {1}
    assert qloop.get_thread_pool(ctx).in_flight == 0


def test_complete_from_another_thread_on_a_closed_context_leaves_the_task_pending():
    ctx = qloop.AioContext()
    seen = []
    task = qloop.QIOTask(object(), seen.append, context=ctx)
    ctx.close()
    errors = []

    def other():
        try:
            task.complete()
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(errors) == 1 and "closed" in str(errors[0])
    assert not task.done
    task.complete()  # the owner thread can still complete it
    assert seen == [task]
