"""qloop.ThreadPool / get_thread_pool: real worker threads, completions in
the context's thread, FIFO batches, cancel, shutdown, thread limits."""
import gc
import os
import threading
import time
import traceback

import pytest

import qloop
from conftest import set_when_gil_released

TIMEOUT = 60.0  # generous upper bound for waits; never a timing assertion


@pytest.fixture
def ctx():
    c = qloop.AioContext()
    while c.poll(blocking=False):
        pass
    yield c
    c.close()


def task_count():
    return len(os.listdir("/proc/self/task"))


def poll_until(ctx, cond):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        ctx.poll(blocking=True)


def wait_for(cond):
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_fn_runs_on_worker_and_callback_in_context_thread(ctx):
    pool = qloop.get_thread_pool(ctx)
    seen = []
    main = threading.get_ident()

    def work(i):
        return i, threading.get_ident()

    def cb(req):
        seen.append((req.result(), threading.get_ident()))

    reqs = [pool.submit(work, i, callback=cb) for i in range(8)]
    poll_until(ctx, lambda: len(seen) == 8)
    for (i, worker), cb_thread in seen:
        assert worker != main
        assert cb_thread == main
    assert sorted(r[0][0] for r in seen) == list(range(8))
    assert all(r.done and not r.cancelled for r in reqs)
    assert pool.in_flight == 0


def test_callback_runs_once_and_only_once(ctx):
    pool = qloop.get_thread_pool(ctx)
    calls = []
    req = pool.submit(lambda: 1, callback=calls.append)
    poll_until(ctx, lambda: calls)
    for _ in range(5):
        ctx.poll(blocking=False)
    assert calls == [req]


def test_nothing_is_delivered_outside_poll(ctx):
    pool = qloop.ThreadPool(context=ctx)
    calls = []
    req = pool.submit(lambda: 1, callback=calls.append)
    wait_for(lambda: pool.num_idle == 1)  # fn returned, completion queued
    assert not req.done and calls == []
    with pytest.raises(RuntimeError, match="not done"):
        req.result()
    assert ctx.poll(blocking=False) is True
    assert calls == [req] and req.result() == 1
    pool.close()


def test_completions_of_one_batch_run_in_submission_order(ctx):
    pool = qloop.ThreadPool(min_threads=0, max_threads=4, context=ctx)
    gates = [threading.Event() for _ in range(4)]
    started = []
    order = []

    def work(i):
        started.append(i)
        gates[i].wait()

    for i in range(4):
        pool.submit(work, i, callback=lambda r, i=i: order.append(i))
    wait_for(lambda: len(started) == 4)
    for n, i in enumerate(reversed(range(4))):  # finish newest first
        gates[i].set()
        wait_for(lambda: pool.num_idle == n + 1)
    assert order == []
    assert ctx.poll(blocking=False) is True
    assert order == [0, 1, 2, 3]
    pool.close()


def test_cancel_queued_request_runs_callback_cancelled(ctx):
    pool = qloop.ThreadPool(max_threads=1, context=ctx)
    gate = threading.Event()
    ran = []
    done = []
    first = pool.submit(gate.wait, callback=done.append)
    second = pool.submit(ran.append, "second", callback=done.append)
    wait_for(lambda: pool.num_idle == 0 and pool.num_threads == 1)
    assert second.cancel() is True
    assert done == []  # never called from inside cancel()
    gate.set()
    poll_until(ctx, lambda: len(done) == 2)
    assert ran == []
    assert second.cancelled and second.done
    with pytest.raises(qloop.CancelledError):
        second.result()
    assert first.result() is True
    assert second.cancel() is False  # done: a no-op
    pool.close()


def test_cancel_running_request_reports_its_real_result(ctx):
    pool = qloop.get_thread_pool(ctx)
    started = threading.Event()
    gate = threading.Event()

    def work():
        started.set()
        gate.wait()
        return "real"

    done = []
    req = pool.submit(work, callback=done.append)
    assert started.wait(TIMEOUT)
    assert req.cancel() is False
    gate.set()
    poll_until(ctx, lambda: done)
    assert not req.cancelled
    assert req.result() == "real"


def test_cancel_after_completion_is_noop(ctx):
    pool = qloop.get_thread_pool(ctx)
    inside = []
    req = pool.submit(lambda: 3, callback=lambda r: inside.append(r.cancel()))
    poll_until(ctx, lambda: inside)
    assert inside == [False]
    assert req.cancel() is False
    assert req.result() == 3


def test_exception_is_carried_with_its_traceback(ctx):
    pool = qloop.get_thread_pool(ctx)

    def failing_work(x):
        raise ValueError("bad %d" % x)

    done = []
    req = pool.submit(failing_work, 7, callback=done.append)
    poll_until(ctx, lambda: done)
    exc = req.exception()
    assert isinstance(exc, ValueError)
    names = [f.name for f in traceback.extract_tb(exc.__traceback__)]
    assert "failing_work" in names
    with pytest.raises(ValueError, match="bad 7") as info:
        req.result()
    assert "failing_work" in [f.name for f in traceback.extract_tb(info.value.__traceback__)]


def test_callback_exception_is_raised_by_the_poll_that_ran_it(ctx):
    pool = qloop.get_thread_pool(ctx)
    order = []

    def cb(req):
        order.append(req.result())
        if req.result() == 0:
            raise KeyError("from callback")

    pool.submit(lambda: 0, callback=cb)
    with pytest.raises(KeyError, match="from callback"):
        poll_until(ctx, lambda: order)
    pool.submit(lambda: 1, callback=cb)
    poll_until(ctx, lambda: len(order) == 2)
    assert order == [0, 1]


def test_10000_requests_in_flight_all_complete(ctx):
    pool = qloop.get_thread_pool(ctx)
    count = [0]

    def cb(req):
        count[0] += 1

    for i in range(10000):
        pool.submit(int, i, callback=cb)
    assert pool.in_flight > 0
    poll_until(ctx, lambda: count[0] == 10000)
    assert pool.in_flight == 0
    assert pool.num_threads <= 64


def test_request_without_callback_completes(ctx):
    pool = qloop.get_thread_pool(ctx)
    req = pool.submit(sum, [1, 2, 3])
    poll_until(ctx, lambda: req.done)
    assert req.result() == 6


def test_closing_context_waits_running_cancels_queued_and_joins_workers():
    threads_before = threading.enumerate()
    tasks_before = task_count()
    ctx = qloop.AioContext()
    pool = qloop.get_thread_pool(ctx)
    pool.set_sizes(0, 2)
    release = threading.Event()
    started = []
    finished = []

    def work(i):
        started.append(i)
        release.wait()
        finished.append(i)
        return i

    results = {}
    reqs = [pool.submit(work, i, callback=lambda r, i=i: results.setdefault(i, r)) for i in range(5)]
    wait_for(lambda: len(started) == 2)
    assert pool.num_threads == 2
    assert task_count() <= tasks_before + 2  # other tests' threads may be exiting
    go, done = set_when_gil_released(release)
    go()
    ctx.close()  # releases the GIL while it waits for the running two
    done()
    assert sorted(finished) == [0, 1]
    assert sorted(results) == [0, 1, 2, 3, 4]  # every callback ran, once
    assert [r.result() for r in reqs[:2]] == [0, 1]
    assert all(r.cancelled for r in reqs[2:])
    assert pool.closed
    with pytest.raises(RuntimeError):
        pool.submit(int)
    assert set(threading.enumerate()) <= set(threads_before)
    # the helper thread may still be on its way out of the kernel; our
    # workers were joined by close() (tests/c checks that exactly)
    wait_for(lambda: task_count() <= tasks_before)  # other tests' threads may exit meanwhile


def test_closing_standalone_pool_waits_and_cancels(ctx):
    tasks_before = task_count()
    pool = qloop.ThreadPool(max_threads=1, context=ctx)
    started = threading.Event()
    release = threading.Event()

    def work():
        started.set()
        release.wait()
        return "ran"

    a = pool.submit(work)
    b = pool.submit(work)
    assert started.wait(TIMEOUT)
    go, done = set_when_gil_released(release)
    go()
    pool.close()
    done()
    assert a.result() == "ran"
    assert b.cancelled
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit(int)
    wait_for(lambda: task_count() <= tasks_before)  # other tests' threads may exit meanwhile


def test_pool_context_manager_closes(ctx):
    with qloop.ThreadPool(context=ctx) as pool:
        req = pool.submit(int, "5")
    assert pool.closed
    assert req.done  # ran (5) or was still queued (cancelled): either way, done
    assert req.cancelled or req.result() == 5


def test_thread_limits_and_idle_timeout():
    ctx = qloop.AioContext()
    pool = qloop.ThreadPool(min_threads=1, max_threads=3, idle_timeout=0.005, context=ctx)
    assert pool.num_threads == 1  # min started at once
    gate = threading.Event()
    lock = threading.Lock()
    running = [0, 0]  # now, peak

    def work():
        with lock:
            running[0] += 1
            running[1] = max(running[1], running[0])
        gate.wait()
        with lock:
            running[0] -= 1

    reqs = [pool.submit(work) for _ in range(6)]
    wait_for(lambda: running[0] == 3)
    assert pool.num_threads == 3
    gate.set()
    poll_until(ctx, lambda: all(r.done for r in reqs))
    assert running[1] == 3
    wait_for(lambda: pool.num_threads == 1)  # idle workers exit down to min
    time.sleep(0.05)  # many idle timeouts later, min_threads still lives
    assert pool.num_threads == 1
    pool.set_idle_timeout(None)
    pool.set_sizes(2, 3)
    assert pool.num_threads == 2
    pool.close()
    ctx.close()


@pytest.mark.parametrize("mn,mx", [(1, 0), (0, 0), (-1, 4), (5, 4), (0, -2)])
def test_bad_sizes_are_rejected(ctx, mn, mx):
    with pytest.raises(ValueError, match="min_threads"):
        qloop.ThreadPool(min_threads=mn, max_threads=mx, context=ctx)
    with pytest.raises(ValueError, match="min_threads"):
        qloop.get_thread_pool(ctx).set_sizes(mn, mx)


def test_bad_arguments(ctx):
    pool = qloop.get_thread_pool(ctx)
    with pytest.raises(TypeError, match="fn must be callable"):
        pool.submit(42)
    with pytest.raises(TypeError, match="callback"):
        pool.submit(int, callback=3)
    with pytest.raises(ValueError, match="idle_timeout"):
        qloop.ThreadPool(idle_timeout=-1, context=ctx)
    with pytest.raises(TypeError, match="context"):
        qloop.ThreadPool(context=object())


def test_default_pool_is_shared_and_closes_with_its_context():
    ctx = qloop.AioContext()
    p1 = qloop.get_thread_pool(ctx)
    p2 = qloop.get_thread_pool(ctx)
    assert p1.is_default and p1.context is ctx
    p1.set_sizes(2, 4)
    assert p2.num_threads == 2  # same underlying pool
    with pytest.raises(RuntimeError, match="closing the context"):
        p1.close()
    ctx.close()
    assert p1.closed and p2.closed
    with pytest.raises(RuntimeError, match="closed"):
        p2.submit(int)


def test_context_defaults_to_the_one_being_polled(ctx):
    found = []
    ctx.schedule_oneshot(lambda: found.append(qloop.get_thread_pool().context))
    ctx.poll(blocking=False)
    assert found == [ctx]


def test_submit_from_another_thread_completes_in_context_thread(ctx):
    pool = qloop.get_thread_pool(ctx)
    seen = []
    t = threading.Thread(target=lambda: [pool.submit(int, i, callback=lambda r: seen.append(
        threading.get_ident())) for i in range(10)])
    t.start()
    t.join()
    poll_until(ctx, lambda: len(seen) == 10)
    assert set(seen) == {threading.get_ident()}


def test_requests_do_not_leak_objects(ctx):
    pool = qloop.get_thread_pool(ctx)

    class Payload:
        pass

    import weakref

    p = Payload()
    ref = weakref.ref(p)
    req = pool.submit(lambda x: x, p, callback=lambda r: None)
    del p
    poll_until(ctx, lambda: req.done)
    assert ref() is not None  # the result holds it
    del req
    gc.collect()
    assert ref() is None


def test_run_in_thread_outside_a_coroutine_raises():
    with pytest.raises(RuntimeError, match="coroutine"):
        qloop.run_in_thread(int, 1)


needs_coroutines = pytest.mark.skipif(not hasattr(qloop, "Coroutine"),
                                      reason="qloop.Coroutine is not in this tree yet")


def run_coroutines(ctx, *fns):
    """Enter each fn as a coroutine from a BH of ctx; poll until all ended."""
    cos = []
    ctx.schedule_oneshot(lambda: [cos.append(qloop.Coroutine(fn)) or cos[-1].enter()
                                  for fn in fns])
    poll_until(ctx, lambda: len(cos) == len(fns) and all(c.done for c in cos))
    return [c.result() for c in cos]


@needs_coroutines
def test_run_in_thread_returns_fn_result_in_the_coroutine(ctx):
    main = threading.get_ident()

    def body():
        value, worker = qloop.run_in_thread(lambda a, b: (a * b, threading.get_ident()), 6, 7)
        return value, worker, threading.get_ident()

    [(value, worker, resumed)] = run_coroutines(ctx, body)
    assert value == 42
    assert worker != main and resumed == main


@needs_coroutines
def test_run_in_thread_raises_fn_exception_in_the_coroutine(ctx):
    def failing_fn():
        raise OSError(2, "gone")

    def body():
        try:
            qloop.run_in_thread(failing_fn)
        except OSError as e:
            return e.errno, [f.name for f in traceback.extract_tb(e.__traceback__)]

    [(errno_, names)] = run_coroutines(ctx, body)
    assert errno_ == 2
    assert "failing_fn" in names and "body" in names


@needs_coroutines
def test_run_in_thread_from_many_coroutines(ctx):
    def make(i):
        def body():
            return sum(qloop.run_in_thread(int, str(i)) for _ in range(5))
        return body

    assert run_coroutines(ctx, *[make(i) for i in range(50)]) == [5 * i for i in range(50)]


def test_pool_without_context_delivers_into_the_main_context():
    pool = qloop.get_thread_pool()
    assert pool.context is qloop.get_aio_context()
    with qloop.ThreadPool() as own:
        assert own.context is qloop.get_aio_context()
    req = pool.submit(abs, -3)
    deadline = time.monotonic() + TIMEOUT
    while not req.done:
        assert time.monotonic() < deadline
        qloop.main_loop_wait()
    assert req.result() == 3


def test_pool_works_in_a_forked_child(ctx):
    import warnings

    pool = qloop.get_thread_pool(ctx)
    pool.set_sizes(1, 4)
    assert pool.submit(int) is not None
    poll_until(ctx, lambda: pool.in_flight == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            req = pool.submit(lambda: threading.get_ident())
            deadline = time.monotonic() + TIMEOUT
            while not req.done and time.monotonic() < deadline:
                ctx.poll(blocking=True)
            code = 0 if req.done and req.result() != threading.get_ident() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert pool.num_threads >= 1


def test_close_refused_while_another_thread_polls_the_context():
    # The shutdown delivers completions and frees the pool in the closing
    # thread; the thread polling the context would deliver from the same
    # pool meanwhile (and end up in freed memory).  Refused instead.
    io = qloop.IOThread().start()
    try:
        pool = qloop.ThreadPool(context=io.context)
        got = []
        pool.submit(lambda: 5, callback=lambda r: got.append(r.result()))
        deadline = time.monotonic() + TIMEOUT
        while not got:
            assert time.monotonic() < deadline
            time.sleep(0.001)
        with pytest.raises(RuntimeError, match="polls its AioContext"):
            pool.close()
        assert not pool.closed
        closed = threading.Event()
        io.context.schedule_oneshot(lambda: (pool.close(), closed.set()))
        assert closed.wait(TIMEOUT)
        assert pool.closed and got == [5]
    finally:
        io.stop()


def _poll_until_each_raised(ctx, n, delivered):
    """Poll until n callbacks raised ValueError(value); check that each poll
    ran exactly one failing callback (``delivered`` grows by one) and return
    the raised values in order."""
    raised = []
    deadline = time.monotonic() + TIMEOUT
    while len(raised) < n:
        assert time.monotonic() < deadline, "completions not delivered"
        before = len(delivered)
        try:
            ctx.poll(blocking=True)
        except ValueError as e:
            raised.append(e.args[0])
            # one failing callback per poll: the rest wait for the next ones
            assert len(delivered) == before + 1
    return raised


def test_thread_pool_failing_completions_raise_one_per_poll(ctx, unraisable):
    n = 6
    pool = qloop.ThreadPool(min_threads=0, max_threads=n, context=ctx)
    results = []
    entered = []

    def cb(req):
        results.append(req.result())
        raise ValueError(req.result())

    def work(gate, i):
        entered.append(i)
        gate.wait(TIMEOUT)
        return i

    gate = threading.Event()
    for i in range(n):
        pool.submit(work, gate, i, callback=cb)
    wait_for(lambda: len(entered) == n)
    gate.set()
    # A worker goes idle only once its request is on the done list: all n
    # completions are one batch for the first poll.
    wait_for(lambda: pool.num_idle == n)
    raised = _poll_until_each_raised(ctx, n, results)
    assert raised == results == list(range(n))
    assert unraisable == []
    assert ctx.poll(blocking=False) is False
    pool.close()


def test_qiotask_failing_completions_raise_one_per_poll(ctx, unraisable):
    n = 4
    gate = threading.Event()
    done = []

    def cb(task):
        done.append(task.result)
        raise ValueError(task.result)

    for i in range(n):
        qloop.QIOTask(object(), cb, context=ctx).run_in_thread(
            lambda i=i: gate.wait(TIMEOUT) and i)
    gate.set()
    raised = _poll_until_each_raised(ctx, n, done)
    assert sorted(raised) == sorted(done) == list(range(n))
    assert unraisable == []
