"""The binding pattern (csrc/python/README.md): the GIL is held in every call
into qloop and released only inside libqloop's blocking sections."""
import os
import sys
import threading

import qloop
from qloop import EventNotifier, ffi, lib


def test_core_entry_point_holds_gil():
    assert qloop._core._gil_held() == 1


def test_cffi_lib_call_holds_gil():
    # Fails if cffi's generated wrappers release the GIL again (the preamble
    # override in qloop/_ffi_build.py stopped working).
    assert lib.qlpy_gil_held() == 1


def test_cffi_function_pointer_call_releases_gil():
    # Calls through a function-pointer cdata go through _cffi_backend, which
    # always releases the GIL: this is why hot paths never call that way.
    fp = ffi.addressof(lib, "qlpy_gil_held")
    assert fp() == 0


def test_blocking_call_releases_gil():
    with EventNotifier() as n:
        before = qloop._core._blocked_sections()
        assert n.wait(0) is False
        assert qloop._core._blocked_sections() == before + 1
        assert qloop._core._gil_state_while_blocked() == 0
        # Back in Python the GIL is held again.
        assert qloop._core._gil_held() == 1


def test_other_thread_runs_python_while_blocked():
    # With a huge switch interval the main thread never hands the GIL over on
    # its own, so the worker can only run Python code once wait() releases the
    # GIL in its blocking section.  The worker then does some pure-Python work
    # and sets the notifier, which ends the wait.  If wait() kept the GIL, the
    # worker could never run and wait() would time out.
    progress = []
    go = threading.Event()

    with EventNotifier() as n:
        def worker():
            go.wait()
            for i in range(1000):
                progress.append(i)
            n.set()

        t = threading.Thread(target=worker)
        old = sys.getswitchinterval()
        sys.setswitchinterval(1000.0)
        try:
            t.start()
            before = qloop._core._blocked_sections()
            go.set()
            woke = n.wait(60)
        finally:
            sys.setswitchinterval(old)
            t.join()
        assert woke is True
        assert len(progress) == 1000
        assert qloop._core._blocked_sections() > before
        assert qloop._core._gil_state_while_blocked() == 0


def test_blocked_sections_are_counted_per_thread():
    result = {}

    def worker():
        with EventNotifier() as n:
            start = qloop._core._blocked_sections()
            n.wait(0)
            n.wait(0)
            result["delta"] = qloop._core._blocked_sections() - start
            result["state"] = qloop._core._gil_state_while_blocked()

    main_before = qloop._core._blocked_sections()
    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert result == {"delta": 2, "state": 0}
    assert qloop._core._blocked_sections() == main_before


def _readable_pipe():
    r, w = os.pipe()
    os.write(w, b"x")          # stays unread: r is ready at every poll
    return r, w


def test_poll_that_finds_an_fd_ready_keeps_the_gil():
    # A busy loop looks for ready fds before sleeping: when one is ready
    # the poll neither sleeps nor drops and retakes the GIL.
    r, w = _readable_pipe()
    runs = []
    try:
        with qloop.AioContext() as ctx:
            ctx.set_fd_handler(r, read=lambda: runs.append(1))
            before = qloop._core._blocked_sections()
            for _ in range(10):
                assert ctx.poll(True) is True
            assert qloop._core._blocked_sections() == before
            ctx.set_fd_handler(r, None)
    finally:
        os.close(r)
        os.close(w)
    assert len(runs) == 10


def test_loop_that_never_idles_still_releases_the_gil_every_64_polls():
    r, w = _readable_pipe()
    try:
        with qloop.AioContext() as ctx:
            ctx.set_fd_handler(r, read=lambda: None)
            before = qloop._core._blocked_sections()
            for _ in range(640):
                ctx.poll(True)
            assert qloop._core._blocked_sections() - before == 10
            assert qloop._core._gil_state_while_blocked() == 0
            ctx.set_fd_handler(r, None)
    finally:
        os.close(r)
        os.close(w)


def test_poll_with_nothing_ready_sleeps_without_the_gil():
    r, w = os.pipe()
    try:
        with qloop.AioContext() as ctx:
            ctx.set_fd_handler(r, read=lambda: os.read(r, 1))
            threading.Timer(0.05, os.write, (w, b"x")).start()
            before = qloop._core._blocked_sections()
            assert ctx.poll(True) is True
            assert qloop._core._blocked_sections() == before + 1
            assert qloop._core._gil_state_while_blocked() == 0
            ctx.set_fd_handler(r, None)
    finally:
        os.close(r)
        os.close(w)
