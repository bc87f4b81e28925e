"""Cost of one Python -> C call on qloop's three call paths.

    python bench/hot_call.py [--n N] [--repeat R] [--seconds S]

Run it with an installed qloop, from any directory but the repository root
(there the source package would shadow the installed one), e.g.
``cd bench && python hot_call.py``.

Call paths (see csrc/python/README.md):
  core_noarg   qloop._core._noop(): hand-written METH_NOARGS function, GIL held
  cffi_keepgil qloop.lib.qlpy_gil_held(): cffi API-mode wrapper whose
               Py_BEGIN/END_ALLOW_THREADS are compiled out, GIL held
  cffi_release ffi.addressof(lib, "qlpy_gil_held")(): the same C function called
               through a function-pointer cdata; _cffi_backend releases and
               re-takes the GIL around the call (the script checks: the call
               returns PyGILState_Check() == 0)
  py_call      a plain Python function call, for scale

Each path is measured twice: alone (best of R runs of N calls), and while a
second Python thread spins in pure Python (calls counted for S seconds).
One JSON line per measurement, in the shape of the peer benchmarks:
  {"workload", "impl", "n", "seconds", "per_op_ns", ...}
workload "hot_call": per_op_ns includes the Python for-loop; net_ns subtracts
an empty loop.  workload "hot_call_busy_thread": n is the number of calls made
in `seconds`; calls_per_s is the figure to read.
"""
import argparse
import gc
import json
import resource
import sys
import threading
import time

import qloop
from qloop import ffi, lib

now = time.perf_counter


def emit(workload, impl, n, seconds, **extra):
    rec = {"workload": workload, "impl": impl, "n": n, "seconds": round(seconds, 6),
           "per_op_ns": round(seconds / n * 1e9, 1),
           "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    rec.update(extra)
    rec["python"] = sys.version.split()[0]
    rec["qloop"] = qloop.__version__
    sys.stdout.write(json.dumps(rec) + "\n")
    sys.stdout.flush()


def best_loop(f, n, repeat):
    r = range(n)
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = now()
        for _ in r:
            f()
        best = min(best, now() - t0)
    return best


def empty_loop(n, repeat):
    r = range(n)
    best = float("inf")
    for _ in range(repeat):
        t0 = now()
        for _ in r:
            pass
        best = min(best, now() - t0)
    return best


def busy_rate(f, seconds):
    """(calls, elapsed) of f() while another thread spins in pure Python."""
    stop = False
    running = threading.Event()

    def spin():
        x = 0
        running.set()
        while not stop:
            x += 1

    th = threading.Thread(target=spin)
    th.start()
    running.wait()
    calls = 0
    t0 = now()
    end = t0 + seconds
    while True:
        for _ in range(10):
            f()
        calls += 10
        if now() >= end:
            break
    elapsed = now() - t0
    stop = True
    th.join()
    return calls, elapsed


def py_noop():
    pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--seconds", type=float, default=1.0)
    a = p.parse_args()

    fnptr = ffi.addressof(lib, "qlpy_gil_held")
    paths = [
        ("core_noarg", qloop._core._noop, 1),
        ("cffi_keepgil", lib.qlpy_gil_held, 1),
        ("cffi_release", fnptr, 0),
        ("py_call", py_noop, None),
    ]
    # Check which paths really hold the GIL inside the call.
    assert qloop._core._gil_held() == 1
    assert lib.qlpy_gil_held() == 1
    assert fnptr() == 0, "calls through a cffi function pointer were expected to release the GIL"

    common = {"switch_interval_ms": sys.getswitchinterval() * 1e3}
    base = empty_loop(a.n, a.repeat)
    for impl, f, held in paths:
        secs = best_loop(f, a.n, a.repeat)
        emit("hot_call", impl, a.n, secs, net_ns=round((secs - base) / a.n * 1e9, 1),
             gil_held_in_call=held, **common)
    for impl, f, held in paths:
        calls, secs = busy_rate(f, a.seconds)
        emit("hot_call_busy_thread", impl, calls, secs,
             calls_per_s=round(calls / secs, 1), gil_held_in_call=held, **common)


if __name__ == "__main__":
    main()
