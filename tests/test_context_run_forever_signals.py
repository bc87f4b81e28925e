"""run_forever() and signals: a handler's exception ends run_forever() whether
the signal interrupts a sleeping poll, arrives while only C callbacks run
before the loop goes to sleep, or arrives in a loop that never sleeps."""
import os
import signal
import threading

import cffi
import pytest

from qloop import AioContext
from qloop._qloop import ffi, lib

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signals go to the main thread")


class Boom(Exception):
    pass


@pytest.fixture
def usr1():
    def handler(signum, frame):
        raise Boom()
    old = signal.signal(signal.SIGUSR1, handler)
    yield
    signal.signal(signal.SIGUSR1, old)


@pytest.fixture
def ctx():
    c = AioContext()
    yield c
    c.close()


def _c_raise_bh():
    """A C bottom-half callback that raises SIGUSR1 (libc raise(); no Python
    code runs around it)."""
    cffi_libc = cffi.FFI()
    cffi_libc.cdef("int raise(int);")
    libc = cffi_libc.dlopen(None)
    addr = int(cffi_libc.cast("uintptr_t", getattr(libc, "raise")))
    return ffi.cast("QLBHFunc *", addr), ffi.cast("void *", signal.SIGUSR1), (cffi_libc, libc)


def test_signal_interrupting_a_sleeping_run_forever(ctx, usr1):
    # Sent once the loop runs, so that the handler runs inside run_forever().
    ctx.schedule_oneshot(
        lambda: threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGUSR1)).start())
    guard = ctx.timer(ctx.stop)
    guard.mod_in(30 * 10**9)
    with pytest.raises(Boom):
        ctx.run_forever()
    guard.cancel()


def test_signal_from_c_callback_then_sleep(ctx, usr1):
    fn, arg, keep = _c_raise_bh()
    # The guard is a C method (no Python code runs when it fires): if the
    # handler did not run before the poll slept, the guard would end the loop.
    guard = ctx.timer(ctx.stop)
    guard.mod_in(5 * 10**9)

    def schedule_c():
        assert lib.ql_bh_schedule_oneshot(ctx.cdata, fn, arg, ffi.NULL) == 0
    ctx.schedule_oneshot(schedule_c)
    with pytest.raises(Boom):
        ctx.run_forever()
    assert guard.pending
    guard.cancel()


def test_signal_in_a_loop_that_never_sleeps(ctx, usr1):
    fn, arg, keep = _c_raise_bh()
    bh = lib.ql_bh_new(ctx.cdata, fn, arg, ffi.NULL)
    # A busy loop (every poll has work, none sleeps): the signal raised by
    # the C callback still ends run_forever() within a few polls.
    count = [0]

    def busy():
        count[0] += 1
        if count[0] == 1:
            lib.ql_bh_schedule(bh)
        if count[0] < 100000:
            ctx.schedule_oneshot(busy)
        else:
            ctx.stop()
    ctx.schedule_oneshot(busy)
    with pytest.raises(Boom):
        ctx.run_forever()
    assert count[0] < 100000
    lib.ql_bh_delete(bh)
