"""Thread-pool round trip: hand a trivial function to a worker thread and get
its result back in the loop's thread, N times in sequence.

    python bench/threadpool_roundtrip.py                 # every impl, fresh processes
    python bench/threadpool_roundtrip.py --impl NAME [--n N]

Impls:
  qloop-run_in_thread  a qloop coroutine calls qloop.run_in_thread(fn) N times
                       (needs qloop.Coroutine)
  qloop-submit         ThreadPool.submit(fn, callback=...) where each callback
                       submits the next request (no coroutine)
  asyncio              `await loop.run_in_executor(None, fn)` N times
  gevent               gevent's hub threadpool `.apply(fn)` N times (if installed)

Each run prints one JSON line {"workload", "impl", "n", "seconds", "per_op_ns",
"peak_rss_kb", "python"}; the driver then prints one line with each impl's
median per_op_ns and its ratio to asyncio.  Timing covers the N round trips
only (setup and the first warm-up trip are outside it).
"""
import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

WORKLOAD = "threadpool_roundtrip"


def fn():
    return 1


def emit(impl, n, seconds):
    rec = {"workload": WORKLOAD, "impl": impl, "n": n, "seconds": round(seconds, 6),
           "per_op_ns": round(seconds / n * 1e9, 1),
           "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "python": sys.version.split()[0]}
    print(json.dumps(rec), flush=True)
    return rec


def run_qloop_coroutine(n):
    import qloop

    ctx = qloop.AioContext()
    out = {}

    def body():
        qloop.run_in_thread(fn)  # warm-up: start a worker
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(n):
            qloop.run_in_thread(fn)
        out["t"] = time.perf_counter() - t0

    co = []
    ctx.schedule_oneshot(lambda: co.append(qloop.Coroutine(body)) or co[0].enter())
    while "t" not in out:
        ctx.poll()
    ctx.close()
    return out["t"]


def run_qloop_submit(n):
    import qloop

    ctx = qloop.AioContext()
    pool = qloop.get_thread_pool(ctx)
    left = [n]
    done = []

    def cb(req):
        req.result()
        left[0] -= 1
        if left[0]:
            pool.submit(fn, callback=cb)
        else:
            done.append(1)

    warm = pool.submit(fn)
    while not warm.done:
        ctx.poll()
    gc.collect()
    t0 = time.perf_counter()
    pool.submit(fn, callback=cb)
    while not done:
        ctx.poll()
    t = time.perf_counter() - t0
    ctx.close()
    return t


def run_asyncio(n):
    import asyncio

    async def main():
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, fn)
        gc.collect()
        t0 = time.perf_counter()
        for _ in range(n):
            await loop.run_in_executor(None, fn)
        return time.perf_counter() - t0

    return asyncio.run(main())


def run_gevent(n):
    import gevent

    pool = gevent.get_hub().threadpool
    pool.apply(fn)
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        pool.apply(fn)
    return time.perf_counter() - t0


IMPLS = {
    "qloop-run_in_thread": run_qloop_coroutine,
    "qloop-submit": run_qloop_submit,
    "asyncio": run_asyncio,
    "gevent": run_gevent,
}


def available(impl):
    try:
        if impl.startswith("qloop"):
            import qloop
            return impl != "qloop-run_in_thread" or hasattr(qloop, "Coroutine")
        if impl == "gevent":
            import gevent  # noqa: F401
        return True
    except ImportError:
        return False


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", choices=sorted(IMPLS))
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.impl:
        emit(args.impl, args.n, IMPLS[args.impl](args.n))
        return
    results = {}
    impls = [i for i in IMPLS if available(i)]
    for _ in range(args.repeats):  # round-robin: drift hits every impl alike
        for impl in impls:
            out = subprocess.run([sys.executable, os.path.abspath(__file__), "--impl", impl,
                                  "--n", str(args.n)], capture_output=True, text=True,
                                 check=True).stdout
            print(out, end="", flush=True)
            results.setdefault(impl, []).append(json.loads(out)["per_op_ns"])
    med = {i: statistics.median(v) for i, v in results.items()}
    base = med.get("asyncio")
    summary = {"workload": WORKLOAD, "summary": True, "median_per_op_ns": med}
    if base:
        summary["ratio_to_asyncio"] = {i: round(v / base, 3) for i, v in med.items()}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
