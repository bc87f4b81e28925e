"""qloop.EventNotifier on both backends (eventfd and the pipe fallback)."""
import os
import select
import signal
import threading

import pytest

from qloop import EventNotifier


@pytest.fixture(params=["eventfd", "pipe"])
def make_notifier(request, monkeypatch):
    """Factory for notifiers of one backend; closes them after the test.

    QLOOP_NOTIFIER is read when a notifier is created, so the fixture sets or
    unsets it before each creation.
    """
    kind = request.param
    if kind == "pipe":
        monkeypatch.setenv("QLOOP_NOTIFIER", "pipe")
    else:
        monkeypatch.delenv("QLOOP_NOTIFIER", raising=False)
    made = []

    def make():
        n = EventNotifier()
        made.append(n)
        assert n.kind == kind
        return n

    make.kind = kind
    yield make
    for n in made:
        n.close()


def readable(n, timeout):
    r, _, _ = select.select([n], [], [], timeout)
    return r == [n]


def test_kind_follows_environment(make_notifier):
    n = make_notifier()
    assert n.kind == make_notifier.kind
    assert "closed" not in repr(n) and make_notifier.kind in repr(n)


def test_new_notifier_is_clear(make_notifier):
    n = make_notifier()
    assert not readable(n, 0)
    assert n.test_and_clear() is False


def test_set_twice_clears_once(make_notifier):
    n = make_notifier()
    n.set()
    n.set()
    assert readable(n, 0)
    assert n.test_and_clear() is True
    assert n.test_and_clear() is False
    assert not readable(n, 0)


def test_set_from_thread_wakes_select(make_notifier):
    n = make_notifier()
    started = threading.Event()

    def setter():
        started.wait()
        n.set()

    t = threading.Thread(target=setter)
    t.start()
    started.set()
    try:
        # The upper bound only stops a broken notifier from hanging the run.
        assert readable(n, 60)
    finally:
        t.join()
    assert n.test_and_clear() is True


def test_many_sets_from_four_threads_leave_it_set_once(make_notifier):
    n = make_notifier()
    barrier = threading.Barrier(4)

    def setter():
        barrier.wait()
        for _ in range(2500):
            n.set()

    threads = [threading.Thread(target=setter) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert readable(n, 0)
    assert n.test_and_clear() is True
    assert n.test_and_clear() is False
    assert not readable(n, 0)


def test_set_from_signal_handler(make_notifier):
    # A Python-level handler (the C-level async-signal-safety of set() is
    # tested in tests/c/test-notifier.c with a real sigaction handler).
    n = make_notifier()
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        n.set()

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        # The handler runs in the main thread at the next bytecode boundary;
        # waiting on the notifier also guarantees it has run.
        assert n.wait(60) is True
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert hits == [signal.SIGUSR1]
    assert n.test_and_clear() is True


@pytest.mark.parametrize("timeout", [None, 60.0])
def test_signal_handler_runs_while_waiting(make_notifier, timeout):
    # The timer fires while wait() is blocked in the kernel; the handler must
    # get to run (wait must not swallow EINTR), and its set() ends the wait.
    n = make_notifier()
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        n.set()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        assert n.wait(timeout) is True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert hits == [signal.SIGALRM]


class _Interrupt(Exception):
    pass


def test_exception_from_signal_handler_interrupts_wait(make_notifier):
    # Like Ctrl-C: a handler that raises ends an untimed wait with its exception.
    n = make_notifier()

    def handler(signum, frame):
        raise _Interrupt()

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        with pytest.raises(_Interrupt):
            n.wait()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert n.test_and_clear() is False


def test_signal_does_not_end_timed_wait_early(make_notifier):
    # A signal whose handler does not set the notifier must not end a timed
    # wait as if it had timed out.  Once the handler has run, another thread
    # sets the notifier: the wait, resumed after the signal, reports it.
    n = make_notifier()
    handled = threading.Event()
    old = signal.signal(signal.SIGALRM, lambda s, f: handled.set())

    def setter():
        handled.wait()
        n.set()

    t = threading.Thread(target=setter)
    t.start()
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.02)
        assert n.wait(60) is True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        handled.set()
        t.join()


def test_wait_times_out(make_notifier):
    n = make_notifier()
    assert n.wait(0) is False
    assert n.wait(0.01) is False


def test_wait_sees_set_and_does_not_clear(make_notifier):
    n = make_notifier()
    n.set()
    assert n.wait() is True
    assert n.wait(0) is True
    assert n.test_and_clear() is True
    assert n.wait(0) is False


def test_wait_rejects_negative_timeout(make_notifier):
    n = make_notifier()
    with pytest.raises(ValueError, match="timeout"):
        n.wait(-1)
    with pytest.raises(ValueError, match="timeout"):
        n.wait(-0.001)


def test_close_is_idempotent_and_closes_the_fds(make_notifier):
    n = make_notifier()
    fd = n.fileno()
    assert os.fstat(fd)
    n.close()
    n.close()
    assert n.closed
    assert repr(n) == "<EventNotifier closed>"
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("use", [
    lambda n: n.fileno(),
    lambda n: n.set(),
    lambda n: n.test_and_clear(),
    lambda n: n.wait(0),
    lambda n: n.wait(),
    lambda n: n.kind,
    lambda n: n.__enter__(),
], ids=["fileno", "set", "test_and_clear", "wait0", "wait", "kind", "enter"])
def test_use_after_close_raises_value_error(make_notifier, use):
    n = make_notifier()
    n.close()
    with pytest.raises(ValueError, match="closed"):
        use(n)


def test_context_manager_closes(make_notifier):
    with make_notifier() as n:
        assert not n.closed
        n.set()
        assert n.test_and_clear() is True
    assert n.closed
    with pytest.raises(ValueError):
        n.fileno()


def test_context_manager_closes_on_exception(make_notifier):
    n = make_notifier()
    with pytest.raises(KeyError):
        with n:
            raise KeyError("x")
    assert n.closed


def test_fileno_is_pollable(make_notifier):
    n = make_notifier()
    p = select.poll()
    p.register(n.fileno(), select.POLLIN)
    assert p.poll(0) == []
    n.set()
    assert p.poll(0) == [(n.fileno(), select.POLLIN)]


def test_untimed_wait_never_misses_a_set_from_another_thread(make_notifier):
    # Ping-pong: a thread sets `ping` at any moment relative to the waiter's
    # wait() (before it, while it enters the kernel, while it blocks); the
    # untimed wait must return every time.  A lost wake-up hangs: the
    # faulthandler turns that into a failure with the stacks.
    import faulthandler
    ping, pong = make_notifier(), make_notifier()
    rounds = 3000
    stop = []

    def setter():
        for _ in range(rounds):
            ping.set()
            pong.wait()
            pong.test_and_clear()
            if stop:
                return

    t = threading.Thread(target=setter)
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        t.start()
        for _ in range(rounds):
            assert ping.wait() is True
            assert ping.test_and_clear() is True
            pong.set()
    finally:
        stop.append(1)
        pong.set()
        t.join()
        faulthandler.cancel_dump_traceback_later()
