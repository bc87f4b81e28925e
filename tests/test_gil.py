"""The binding pattern (csrc/python/README.md): the GIL is held in every call
into qloop and released only inside libqloop's blocking sections."""
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
