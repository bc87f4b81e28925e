"""qloop.Coroutine API: enter/yield/result/join, misuse errors, locks."""
import sys
import threading
import traceback

import pytest

import qloop
from qloop import (
    CoMutex,
    CoQueue,
    CoRwlock,
    Coroutine,
    co_wake,
    coroutine_self,
    coroutine_yield,
    in_coroutine,
)


def test_enter_runs_until_yield_then_until_end():
    steps = []

    def fn(a, b):
        steps.append(1)
        coroutine_yield()
        steps.append(2)
        return a + b

    co = Coroutine(fn, 40, 2)
    assert not co.done and steps == []
    assert co.enter() is None
    assert steps == [1] and not co.done
    co.enter()
    assert steps == [1, 2] and co.done
    assert co.result() == 42


def test_yield_from_any_call_depth():
    def deep(n):
        if n == 0:
            coroutine_yield()
            return 0
        return 1 + deep(n - 1)

    co = Coroutine(deep, 100, stack_size=1 << 20)
    co.enter()
    assert not co.done
    co.enter()
    assert co.result() == 100


def test_enter_reraises_with_coroutine_frames_in_traceback():
    def inner_failure():
        raise KeyError("boom")

    def fn():
        coroutine_yield()
        inner_failure()

    co = Coroutine(fn)
    co.enter()
    with pytest.raises(KeyError) as ei:
        co.enter()
    names = [f.name for f in traceback.extract_tb(ei.value.__traceback__)]
    assert "fn" in names and "inner_failure" in names
    assert co.done
    with pytest.raises(KeyError):
        co.result()


def test_result_before_done_is_runtime_error():
    co = Coroutine(coroutine_yield)
    with pytest.raises(RuntimeError, match="not finished"):
        co.result()
    co.enter()
    with pytest.raises(RuntimeError, match="not finished"):
        co.result()
    co.enter()
    assert co.result() is None


def test_enter_finished_coroutine_is_runtime_error():
    co = Coroutine(lambda: 1)
    co.enter()
    with pytest.raises(RuntimeError, match="finished"):
        co.enter()


def test_enter_running_coroutine_is_runtime_error():
    def fn():
        with pytest.raises(RuntimeError, match="already running"):
            coroutine_self().enter()
        return "ok"

    co = Coroutine(fn)
    co.enter()
    assert co.result() == "ok"


def test_yield_outside_coroutine_is_runtime_error():
    with pytest.raises(RuntimeError, match="coroutine"):
        coroutine_yield()


def test_self_and_in_coroutine():
    assert coroutine_self() is None and not in_coroutine()
    seen = []

    def fn():
        seen.append((coroutine_self(), in_coroutine()))

    co = Coroutine(fn)
    co.enter()
    assert seen == [(co, True)]


def test_bad_arguments_name_the_argument():
    with pytest.raises(TypeError, match="fn"):
        Coroutine(42)
    with pytest.raises(TypeError, match="fn"):
        Coroutine()
    with pytest.raises(TypeError, match="stack_size"):
        Coroutine(print, stack_size="big")
    with pytest.raises(ValueError, match="stack_size"):
        Coroutine(print, stack_size=100)
    with pytest.raises(ValueError, match="stack_size"):
        Coroutine(print, stack_size=-1)
    with pytest.raises(TypeError, match="nope"):
        Coroutine(print, nope=1)
    with pytest.raises(TypeError, match="co"):
        co_wake(42)
    assert Coroutine(print, stack_size=None).stack_size > 0
    assert Coroutine(print, stack_size=1 << 20).stack_size >= 1 << 20


def test_nested_enter_returns_to_the_entering_coroutine():
    order = []

    def inner():
        order.append("inner1")
        coroutine_yield()
        order.append("inner2")

    def outer():
        c = Coroutine(inner)
        c.enter()
        order.append("outer")
        coroutine_yield()
        c.enter()
        order.append("outer-end")

    co = Coroutine(outer)
    co.enter()
    assert order == ["inner1", "outer"]
    co.enter()
    assert order == ["inner1", "outer", "inner2", "outer-end"]


def test_enter_from_another_thread_is_runtime_error():
    co = Coroutine(coroutine_yield)
    errors = []

    def other():
        try:
            co.enter()
        except RuntimeError as e:
            errors.append(str(e))

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert errors and "another thread" in errors[0]
    co.enter()  # fine in the owner thread
    co.enter()
    assert co.done


def test_enter_after_owner_thread_exited_is_runtime_error():
    box = []

    def other():
        c = Coroutine(coroutine_yield)
        c.enter()
        box.append(c)

    t = threading.Thread(target=other)
    t.start()
    t.join()
    with pytest.raises(RuntimeError, match="exited"):
        box[0].enter()


def test_join_waits_and_returns_result():
    q = CoQueue()

    def worker():
        q.wait()
        return "result"

    def joiner(w):
        return w.join()

    w = Coroutine(worker)
    w.enter()
    j = Coroutine(joiner, w)
    j.enter()
    assert not j.done
    assert q.next() is True  # worker runs, ends, wakes the joiner
    assert w.done and j.done
    assert j.result() == "result"


def test_join_reraises_and_exception_is_not_deferred():
    q = CoQueue()
    unraisable = []
    old = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        def worker():
            q.wait()
            raise ValueError("from worker")

        def joiner(w):
            with pytest.raises(ValueError, match="from worker"):
                w.join()
            return "caught"

        w = Coroutine(worker)
        w.enter()
        j = Coroutine(joiner, w)
        j.enter()
        q.next()
        assert j.result() == "caught"
    finally:
        sys.unraisablehook = old
    assert unraisable == []


def test_join_misuse():
    with pytest.raises(RuntimeError, match="another coroutine"):
        Coroutine(print).join()

    def selfjoin():
        coroutine_self().join()

    co = Coroutine(selfjoin)
    with pytest.raises(RuntimeError, match="itself"):
        co.enter()
    done = Coroutine(lambda: 5)
    done.enter()
    assert done.join() == 5  # finished: no waiting needed


def test_exception_of_coroutine_resumed_by_c_goes_to_the_loop():
    # Resumed by CoMutex.unlock (C), nobody joins: handed to
    # qlpy_defer_exception (reported as unraisable until the context glue
    # takes it over).
    m = CoMutex()
    unraisable = []
    old = sys.unraisablehook
    sys.unraisablehook = unraisable.append
    try:
        def holder():
            m.lock()
            coroutine_yield()
            m.unlock()

        def waiter():
            m.lock()
            m.unlock()
            raise OSError("lost?")

        h = Coroutine(holder)
        h.enter()
        w = Coroutine(waiter)
        w.enter()
        h.enter()
        assert w.done
    finally:
        sys.unraisablehook = old
    assert len(unraisable) == 1 and isinstance(unraisable[0].exc_value, OSError)


def test_co_wake_from_coroutine_runs_after_caller_yields():
    order = []

    def sleeper():
        order.append("sleep")
        coroutine_yield()
        order.append("woken")

    s = Coroutine(sleeper)
    s.enter()

    def waker():
        co_wake(s)
        order.append("waker-after-wake")

    Coroutine(waker).enter()
    assert order == ["sleep", "waker-after-wake", "woken"]
    assert s.done


def test_co_wake_outside_coroutine_enters_now_and_refuses_waiters():
    s = Coroutine(coroutine_yield)
    s.enter()
    co_wake(s)
    assert s.done
    with pytest.raises(RuntimeError, match="finished"):
        co_wake(s)
    q = CoQueue()
    w = Coroutine(q.wait)
    w.enter()
    with pytest.raises(RuntimeError, match="waiting"):
        co_wake(w)
    with pytest.raises(RuntimeError, match="waiting"):
        w.enter()
    q.next()
    assert w.done


# ---- CoMutex ----------------------------------------------------------------

def test_comutex_fifo_handoff():
    m = CoMutex()
    order = []

    def user(name):
        m.lock()
        order.append(name + "+")
        coroutine_yield()
        order.append(name + "-")
        m.unlock()

    cos = [Coroutine(user, n) for n in "abc"]
    for c in cos:
        c.enter()
    assert order == ["a+"] and m.locked
    cos[0].enter()  # a unlocks -> b gets it (runs after a ends)
    assert order == ["a+", "a-", "b+"]
    cos[1].enter()
    assert order == ["a+", "a-", "b+", "b-", "c+"]
    cos[2].enter()
    assert not m.locked and all(c.done for c in cos)


def test_comutex_with_statement_and_trylock():
    m = CoMutex()

    def fn():
        with m:
            assert m.locked
            with pytest.raises(RuntimeError, match="already holds"):
                m.trylock()
            with pytest.raises(RuntimeError, match="already holds"):
                m.lock()
        assert not m.locked
        assert m.trylock() is True
        m.unlock()
        return "ok"

    co = Coroutine(fn)
    co.enter()
    assert co.result() == "ok"


def test_comutex_misuse():
    m = CoMutex()
    with pytest.raises(RuntimeError, match="not locked"):
        m.unlock()
    with pytest.raises(RuntimeError, match="coroutine"):
        m.lock()

    def holder():
        m.lock()
        coroutine_yield()
        m.unlock()

    def thief():
        with pytest.raises(RuntimeError, match="does not hold"):
            m.unlock()
        return "refused"

    h = Coroutine(holder)
    h.enter()
    t = Coroutine(thief)
    t.enter()
    assert t.result() == "refused"
    h.enter()
    assert not m.locked
    with pytest.raises(TypeError):
        CoMutex(1)


# ---- CoQueue ------------------------------------------------------------------

def test_coqueue_fifo_next_restart_all_empty():
    q = CoQueue()
    order = []

    def waiter(name, head=False):
        (q.wait_insert_head if head else q.wait)()
        order.append(name)

    assert q.empty()
    for n in "ab":
        Coroutine(waiter, n).enter()
    Coroutine(waiter, "h", True).enter()
    assert not q.empty()
    assert q.next() is True
    assert order == ["h"]
    q.restart_all()
    assert order == ["h", "a", "b"]
    assert q.empty() and q.next() is False


def test_coqueue_wait_releases_and_retakes_lock():
    q = CoQueue()
    m = CoMutex()
    seen = []

    def consumer():
        with m:
            q.wait(m)
            seen.append(m.locked)

    def producer():
        with m:  # free while the consumer waits
            q.next()
        seen.append("produced")

    Coroutine(consumer).enter()
    assert not m.locked
    Coroutine(producer).enter()
    assert seen == ["produced", True] and not m.locked


def test_coqueue_bad_lock_argument():
    q = CoQueue()

    def fn():
        with pytest.raises(TypeError, match="lock"):
            q.wait(lock=42)
        with pytest.raises(RuntimeError, match="lock"):
            q.wait(CoMutex())  # not held

    co = Coroutine(fn)
    co.enter()
    co.result()
    with pytest.raises(RuntimeError, match="coroutine"):
        q.wait()


# ---- CoRwlock -----------------------------------------------------------------

def test_corwlock_readers_share_writer_excludes_upgrade_downgrade():
    lk = CoRwlock()
    log = []

    def reader(name):
        lk.rdlock()
        log.append(name + "+")
        coroutine_yield()
        log.append(name + "-")
        lk.unlock()

    def writer():
        lk.wrlock()
        log.append("w+")
        lk.downgrade()
        log.append("w-down")
        lk.upgrade()
        log.append("w-up")
        lk.unlock()

    r1, r2 = Coroutine(reader, "r1"), Coroutine(reader, "r2")
    r1.enter()
    r2.enter()
    w = Coroutine(writer)
    w.enter()
    assert log == ["r1+", "r2+"]  # writer waits for the readers
    r1.enter()
    r2.enter()
    assert w.done
    assert log == ["r1+", "r2+", "r1-", "r2-", "w+", "w-down", "w-up"]


def test_corwlock_unlock_without_hold_is_runtime_error():
    lk = CoRwlock()

    def fn():
        with pytest.raises(RuntimeError):
            lk.unlock()
        return 1

    co = Coroutine(fn)
    co.enter()
    assert co.result() == 1
    with pytest.raises(RuntimeError, match="coroutine"):
        lk.rdlock()


def test_coroutine_exit_is_base_exception():
    assert issubclass(qloop.CoroutineExit, BaseException)
    assert not issubclass(qloop.CoroutineExit, Exception)
