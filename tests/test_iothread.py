"""qloop.IOThread: a context per thread; cross-thread BHs and notify."""
import threading

import pytest

import qloop


def test_iothread_runs_oneshots_in_its_own_thread():
    seen = []
    done = threading.Event()
    with qloop.IOThread(name="io1") as io:
        io.context.schedule_oneshot(lambda: (seen.append(threading.current_thread().name),
                                             done.set()))
        assert done.wait(10)
    assert seen == ["io1"]
    assert not io.is_running


def test_bh_scheduled_from_main_thread_runs_in_iothread():
    ran_in = []
    done = threading.Event()
    with qloop.IOThread() as io:
        bh = io.context.bh(lambda: (ran_in.append(threading.get_ident()), done.set()))
        bh.schedule()
        assert done.wait(10)
    assert ran_in and ran_in[0] != threading.get_ident()


def test_iothread_stop_reraises_callback_exception():
    io = qloop.IOThread().start()
    ev = threading.Event()

    def boom():
        ev.set()
        raise ValueError("in iothread")

    io.context.schedule_oneshot(boom)
    assert ev.wait(10)
    with pytest.raises(ValueError, match="in iothread"):
        io.stop()


def test_iothread_context_unavailable_when_stopped():
    io = qloop.IOThread()
    with pytest.raises(RuntimeError, match="not running"):
        io.context
    io.start()
    io.stop()
    with pytest.raises(RuntimeError, match="not running"):
        io.context


def test_eight_threads_schedule_into_one_iothread_none_lost():
    n_threads, per_thread = 8, 20_000
    count = [0]
    finished = threading.Event()

    def inc():
        count[0] += 1
        if count[0] == n_threads * per_thread:
            finished.set()

    with qloop.IOThread() as io:
        so = io.context.schedule_oneshot

        def worker():
            for _ in range(per_thread):
                so(inc)

        ts = [threading.Thread(target=worker) for _ in range(n_threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert finished.wait(60)
    assert count[0] == n_threads * per_thread


def test_restart_after_stop_forgets_the_previous_runs_exception():
    io = qloop.IOThread()
    io.start()
    ran = threading.Event()

    def boom():
        ran.set()
        raise KeyError("first run")

    io.context.schedule_oneshot(boom)
    assert ran.wait(60)
    with pytest.raises(KeyError, match="first run"):
        io.stop()
    io.start()
    assert io.exceptions == []
    again = threading.Event()
    io.context.schedule_oneshot(again.set)
    assert again.wait(60)
    io.stop()  # nothing raised in this run
