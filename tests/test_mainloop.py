"""The process-wide main loop: main_loop_wait, iohandler fds, polling
callbacks, child watches and the iothread lock."""
import os
import threading
import time

import pytest

import qloop


def drain():
    while qloop.main_loop_wait(nonblocking=True):
        pass


def test_main_loop_wait_runs_main_context_callbacks():
    drain()
    ran = []
    qloop.get_aio_context().schedule_oneshot(ran.append, 1)
    assert qloop.main_loop_wait() is True
    assert ran == [1]
    assert qloop.main_loop_wait(nonblocking=True) is False


def test_main_contexts_are_singletons_and_cannot_be_closed():
    assert qloop.get_aio_context() is qloop.get_aio_context()
    assert qloop.get_aio_context().kind == "main"
    assert qloop.get_iohandler_context().kind == "iohandler"
    with pytest.raises(RuntimeError, match="main loop"):
        qloop.get_aio_context().close()


def test_notify_event_from_thread_wakes_main_loop():
    drain()
    t = threading.Timer(0.05, qloop.notify_event)
    t.start()
    qloop.main_loop_wait()
    t.join()


def test_iohandler_fd_runs_from_main_loop_but_not_from_aio_poll():
    drain()
    r, w = os.pipe()
    got = []
    qloop.set_fd_handler(r, read=lambda: got.append(os.read(r, 10)))
    os.write(w, b"x")
    qloop.get_aio_context().poll(blocking=False)
    assert got == []
    while not got:
        qloop.main_loop_wait()
    assert got == [b"x"]
    qloop.set_fd_handler(r, None, None)
    os.close(r)
    os.close(w)


def test_iohandler_exception_raised_by_main_loop_wait():
    drain()
    r, w = os.pipe()

    def boom():
        os.read(r, 10)
        raise LookupError("iohandler")

    qloop.set_fd_handler(r, read=boom)
    os.write(w, b"x")
    with pytest.raises(LookupError, match="iohandler"):
        for _ in range(100):
            qloop.main_loop_wait()
    qloop.set_fd_handler(r)
    os.close(r)
    os.close(w)


def test_polling_callback_runs_each_iteration_and_can_force_nonblocking():
    drain()
    calls = []

    def cb():
        calls.append(1)
        return True  # forces the iteration not to block

    qloop.add_polling_cb(cb)
    t0 = time.monotonic()
    for _ in range(3):
        qloop.main_loop_wait()  # would block forever without the callback
    assert time.monotonic() - t0 < 10
    assert len(calls) == 3
    qloop.del_polling_cb(cb)
    qloop.main_loop_wait(nonblocking=True)
    assert len(calls) == 3
    with pytest.raises(ValueError, match="not a registered"):
        qloop.del_polling_cb(cb)
    with pytest.raises(TypeError, match="fn must be callable"):
        qloop.add_polling_cb(3)


def fork_exit(code, delay=0.0):
    pid = os.fork()
    if pid == 0:
        time.sleep(delay)
        os._exit(code)
    return pid


def test_child_watch_reports_exit_status_of_several_children():
    drain()
    got = {}
    early = fork_exit(3)
    time.sleep(0.2)  # `early` has exited before its watch exists
    late1 = fork_exit(4, 0.05)
    late2 = fork_exit(5, 0.1)
    for pid in (early, late1, late2):
        assert qloop.add_child_watch(pid, lambda p, st: got.__setitem__(p, st)) is True
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        qloop.main_loop_wait()
    assert {p: os.waitstatus_to_exitcode(s) for p, s in got.items()} == {
        early: 3, late1: 4, late2: 5}


def test_child_watch_does_not_steal_other_childrens_status():
    drain()
    got = []
    watched = fork_exit(1, 0.05)
    other = fork_exit(7, 0.05)
    qloop.add_child_watch(watched, lambda p, s: got.append(p))
    while not got:
        qloop.main_loop_wait()
    time.sleep(0.1)
    drain()
    pid, status = os.waitpid(other, 0)  # still ours to reap
    assert pid == other and os.waitstatus_to_exitcode(status) == 7


def test_child_watch_arguments_validated():
    with pytest.raises(ValueError, match="pid must be > 0"):
        qloop.add_child_watch(0)
    with pytest.raises(TypeError, match="cb must be callable"):
        qloop.add_child_watch(os.getpid(), 5)


def test_iothread_lock_waits_while_main_loop_dispatches():
    drain()
    events = []
    inside = threading.Event()

    def slow_bh():
        inside.set()
        time.sleep(0.2)
        events.append("bh-end")

    def worker():
        inside.wait()
        with qloop.iothread_lock():
            events.append("worker-locked")

    t = threading.Thread(target=worker)
    t.start()
    qloop.get_aio_context().schedule_oneshot(slow_bh)
    qloop.main_loop_wait()
    t.join()
    assert events == ["bh-end", "worker-locked"]


def test_iothread_lock_is_free_while_main_loop_blocks():
    drain()
    got = []

    def worker():
        with qloop.iothread_lock() as lk:
            got.append(lk.locked())
        qloop.notify_event()

    t = threading.Timer(0.05, worker)
    t.start()
    qloop.main_loop_wait()  # blocked until the worker's notify_event
    t.join()
    assert got == [True]


def test_iothread_lock_misuse_raises():
    lk = qloop.iothread_lock()
    with pytest.raises(RuntimeError, match="not held"):
        lk.unlock()
    with lk:
        with pytest.raises(RuntimeError, match="already held"):
            lk.lock()
    assert not lk.locked()


def test_aio_wait_and_aio_flush_poll_the_main_context():
    drain()
    ran = []
    qloop.get_aio_context().schedule_oneshot(ran.append, 1)
    assert qloop.aio_wait() is True
    qloop.aio_flush()
    assert ran == [1]


def test_main_loop_wait_iohandler_failing_callbacks_none_unraisable(unraisable):
    drain()
    main = qloop.get_aio_context()
    ran = []

    def fail(what):
        ran.append(what)
        raise LookupError(what)

    pipes = []
    for i in range(2):
        r, w = os.pipe()
        pipes.append((r, w))
        os.write(w, b"x")
        qloop.set_fd_handler(r, read=lambda r=r, i=i: (os.read(r, 10), fail("io%d" % i)))
    main.schedule_oneshot(fail, "main0")
    main.schedule_oneshot(fail, "main1")
    raised = []
    try:
        for _ in range(20):
            before = len(ran)
            try:
                qloop.main_loop_wait(nonblocking=True)
            except LookupError as e:
                raised.append(e.args[0])
                assert len(ran) == before + 1  # the rest waits for the next calls
            if len(ran) == 4:
                break
    finally:
        for r, w in pipes:
            qloop.set_fd_handler(r)
            os.close(r)
            os.close(w)
    assert raised == ran
    assert sorted(ran) == ["io0", "io1", "main0", "main1"]
    assert ran[:2] == ["main0", "main1"]  # main context first
    assert unraisable == []


def test_main_loop_wait_polling_callback_failure_stops_the_iteration(unraisable):
    drain()
    ran = []

    def failing_poll():
        raise KeyError("polling")

    qloop.get_aio_context().schedule_oneshot(ran.append, 1)
    qloop.add_polling_cb(failing_poll)
    try:
        with pytest.raises(KeyError, match="polling"):
            qloop.main_loop_wait()  # raises at once: no wait, nothing dispatched
        assert ran == []
    finally:
        qloop.del_polling_cb(failing_poll)
    assert qloop.main_loop_wait(nonblocking=True) is True
    assert ran == [1]
    assert unraisable == []


def test_child_watch_failing_callbacks_raise_one_per_main_loop_wait(unraisable):
    drain()
    pids = [fork_exit(i) for i in (1, 2, 3)]
    for pid in pids:  # all have exited (not reaped) before their watches exist
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    got = []

    def cb(pid, status):
        got.append(pid)
        raise ChildProcessError(pid)

    for pid in pids:
        assert qloop.add_child_watch(pid, cb) is True
    raised = []
    deadline = time.monotonic() + 20
    while len(got) < 3 and time.monotonic() < deadline:
        before = len(got)
        try:
            qloop.main_loop_wait(nonblocking=True)
        except ChildProcessError as e:
            raised.append(e.args[0])
            assert len(got) == before + 1  # the others wait for the next calls
    assert raised == got
    assert sorted(got) == sorted(pids)
    assert unraisable == []
