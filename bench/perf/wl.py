"""Performance workloads (callbacks chain/batch, timers, threadsafe wakeup)
for qloop and its peers, following the definitions of the shared peer
benchmarks (see bench/perf/README.md).

    python bench/perf/wl.py WORKLOAD --impl IMPL [--n N]

prints one JSON line: {"workload", "impl", "n", "seconds", "per_op_ns",
"cpu_per_op_ns"}.  The timed region runs inside ``_region()``, which is
entered through ``map`` so that ``valgrind --tool=callgrind
--collect-atstart=no --toggle-collect=map_next`` counts exactly the timed
region (see callgrind.py).
"""
import argparse
import gc
import json
import random
import sys
import threading
import time

BATCH = 1000
SPAN_S = 0.100


def _region(fn):
    """Run fn() as the measured region; returns (wall s, cpu s, extra)."""
    out = []

    def body(_):
        c0 = time.process_time()
        t0 = time.perf_counter()
        extra = fn()
        t1 = time.perf_counter()
        c1 = time.process_time()
        out.append((t1 - t0, c1 - c0, extra))
    gc.collect()
    list(map(body, (0,)))
    return out[0]


# ---- callbacks -------------------------------------------------------------

def _script(variant, n, post, finish):
    count = 0
    if variant == "chain":
        expected = n

        def first():
            nonlocal count
            count += 1
            if count < n:
                post(first)
            else:
                finish()
    else:
        rounds = n // BATCH
        expected = rounds * BATCH

        def noop():
            nonlocal count
            count += 1

        def first():
            nonlocal rounds
            if rounds == 0:
                finish()
                return
            rounds -= 1
            for _ in range(BATCH):
                post(noop)
            post(first)

    def check():
        assert count == expected, (count, expected)
        return expected
    return first, check


def cb_qloop(variant, n):
    from qloop import AioContext
    ctx = AioContext()
    first, check = _script(variant, n, ctx.schedule_oneshot, ctx.stop)

    def fn():
        ctx.schedule_oneshot(first)
        ctx.run_forever()
    r = _region(fn)
    ctx.close()
    return r, check()


def cb_qloop_bh(variant, n):
    from qloop import AioContext
    ctx = AioContext()
    count = 0
    stop = ctx.stop
    if variant == "chain":
        expected = n

        def cb():
            nonlocal count
            count += 1
            if count < n:
                sched()
            else:
                stop()
        sched = ctx.bh(cb).schedule
    else:
        rounds = n // BATCH
        expected = rounds * BATCH

        def noop():
            nonlocal count
            count += 1
        noops = [ctx.bh(noop).schedule for _ in range(BATCH)]

        def driver():
            nonlocal rounds
            if rounds == 0:
                stop()
                return
            rounds -= 1
            for s in noops:
                s()
            sched()
        sched = ctx.bh(driver).schedule

    def fn():
        sched()
        ctx.run_forever()
    r = _region(fn)
    ctx.close()
    assert count == expected
    return r, expected


def _aio_loop(impl):
    if impl == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    import asyncio
    return asyncio.new_event_loop()


def cb_aio(impl):
    def run(variant, n):
        loop = _aio_loop(impl)
        first, check = _script(variant, n, loop.call_soon, loop.stop)

        def fn():
            loop.call_soon(first)
            loop.run_forever()
        r = _region(fn)
        loop.close()
        return r, check()
    return run


def cb_gevent(variant, n):
    import gevent
    from gevent.event import Event
    hub = gevent.get_hub()
    done = Event()
    rc = hub.loop.run_callback
    first, check = _script(variant, n, rc, done.set)
    gevent.sleep(0)

    def fn():
        rc(first)
        done.wait()
    r = _region(fn)
    return r, check()


def cb_deque(variant, n):
    from collections import deque
    q = deque()
    first, check = _script(variant, n, q.append, lambda: None)

    def fn():
        q.append(first)
        popleft = q.popleft
        while q:
            popleft()()
    r = _region(fn)
    return r, check()


# ---- timers ----------------------------------------------------------------

def delays_s(n):
    r = random.Random(12345).random
    return [r() * SPAN_S for _ in range(n)]


def _counter(n, finish):
    fired = 0

    def cb():
        nonlocal fired
        fired += 1
        if fired == n:
            finish()

    def get():
        return fired
    return cb, get


def tm_qloop(variant, n):
    from qloop import AioContext
    delays = [int(d * 1e9) for d in delays_s(n)]
    ctx = AioContext()
    cb, fired = _counter(n, ctx.stop)
    new_timer = ctx.timer

    def fn():
        timers = []
        keep = timers.append
        for d in delays:
            t = new_timer(cb)
            t.mod_in(d)
            keep(t)
        ctx.run_forever()
        return timers
    r = _region(fn)
    assert fired() == n, fired()
    r = r[:2] + (None,)
    ctx.close()
    return r, n


def tm_aio(impl):
    def run(variant, n):
        delays = delays_s(n)
        loop = _aio_loop(impl)
        cb, fired = _counter(n, loop.stop)
        call_later = loop.call_later

        def fn():
            handles = [call_later(d, cb) for d in delays]
            loop.run_forever()
            return handles
        r = _region(fn)
        loop.close()
        assert fired() == n
        return r[:2] + (None,), n
    return run


def tm_gevent(variant, n):
    import gevent
    from gevent.event import Event
    delays = delays_s(n)
    loop = gevent.get_hub().loop
    done = Event()
    cb, fired = _counter(n, done.set)
    timer = loop.timer
    gevent.sleep(0)

    def fn():
        watchers = []
        append = watchers.append
        for d in delays:
            t = timer(d)
            t.start(cb)
            append(t)
        done.wait()
        return watchers
    r = _region(fn)
    assert fired() == n
    return r[:2] + (None,), n


# ---- threadsafe wakeup -----------------------------------------------------

def _pingpong(n, post, finish):
    sem = threading.Lock()
    sem.acquire()
    count = 0
    release = sem.release

    def cb():
        nonlocal count
        count += 1
        release()

    def body():
        acquire = sem.acquire
        for _ in range(n):
            post(cb)
            acquire()
        finish()

    def check():
        assert count == n, count
        return n
    return threading.Thread(target=body), check


def wk_qloop(variant, n):
    from qloop import AioContext
    ctx = AioContext()
    so = ctx.schedule_oneshot
    th, check = _pingpong(n, so, lambda: so(ctx.stop))

    def fn():
        th.start()
        ctx.run_forever()
    r = _region(fn)
    th.join()
    ctx.close()
    return r, check()


def wk_aio(impl):
    def run(variant, n):
        loop = _aio_loop(impl)
        cst = loop.call_soon_threadsafe
        th, check = _pingpong(n, cst, lambda: cst(loop.stop))

        def fn():
            th.start()
            loop.run_forever()
        r = _region(fn)
        th.join()
        loop.close()
        return r, check()
    return run


def wk_gevent(variant, n):
    import gevent
    from gevent.event import Event
    loop = gevent.get_hub().loop
    done = Event()
    rcts = loop.run_callback_threadsafe
    th, check = _pingpong(n, rcts, lambda: rcts(done.set))
    keepalive = loop.timer(3600.0)
    keepalive.start(lambda: None)
    gevent.sleep(0)

    def fn():
        th.start()
        done.wait()
    r = _region(fn)
    th.join()
    keepalive.stop()
    return r, check()


def wk_threads_lock(variant, n):
    """Floor: the "loop" thread blocks on a second Lock instead of a poll."""
    req = threading.Lock()
    req.acquire()
    stop = []
    cbs = []

    def post(cb):
        cbs.append(cb)
        req.release()
    th, check = _pingpong(n, post, lambda: (stop.append(1), req.release()))

    def fn():
        th.start()
        acquire = req.acquire
        pop = cbs.pop
        while True:
            acquire()
            if stop:
                break
            pop()()
    r = _region(fn)
    th.join()
    return r, check()


WORKLOADS = {
    "chain": {"qloop": cb_qloop, "qloop_bh": cb_qloop_bh, "asyncio": cb_aio("asyncio"),
              "uvloop": cb_aio("uvloop"), "gevent": cb_gevent, "deque": cb_deque},
    "batch": {"qloop": cb_qloop, "qloop_bh": cb_qloop_bh, "asyncio": cb_aio("asyncio"),
              "uvloop": cb_aio("uvloop"), "gevent": cb_gevent, "deque": cb_deque},
    "timers": {"qloop": tm_qloop, "asyncio": tm_aio("asyncio"), "uvloop": tm_aio("uvloop"),
               "gevent": tm_gevent},
    "wakeup": {"qloop": wk_qloop, "asyncio": wk_aio("asyncio"), "uvloop": wk_aio("uvloop"),
               "gevent": wk_gevent, "threads_lock": wk_threads_lock},
}
DEFAULT_N = {"chain": 1_000_000, "batch": 1_000_000, "timers": 200_000, "wakeup": 100_000}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--impl", required=True)
    p.add_argument("--n", type=int)
    a = p.parse_args()
    n = a.n or DEFAULT_N[a.workload]
    (wall, cpu, _), ops = WORKLOADS[a.workload][a.impl](a.workload, n)
    rec = {"workload": a.workload, "impl": a.impl, "n": n, "seconds": round(wall, 6),
           "per_op_ns": round(wall / ops * 1e9, 1), "cpu_per_op_ns": round(cpu / ops * 1e9, 1)}
    sys.stdout.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
