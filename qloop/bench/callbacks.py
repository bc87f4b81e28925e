"""callbacks: cost of scheduling and running a no-op callback (a bottom half).

chain: each callback, when it runs, counts and schedules itself again until
       it has run N times.  One op = one callback run plus its scheduling.
batch: a driver schedules BATCH no-op callbacks and then itself, N/BATCH
       rounds.  One op = one no-op callback (driver runs are timed, not counted).

qloop: AioContext.schedule_oneshot(cb), the loop driven by
ctx.run_forever() (a C loop over poll) until ctx.stop();
qloop_bh: persistent BH objects (ctx.bh(cb) made before the timed region,
BH.schedule() per run), QEMU's usual pattern.  asyncio/uvloop: call_soon;
gevent: hub.loop.run_callback; deque: a bare Python run queue (floor).
"""
import sys

from ._common import cli, new_aio_loop, now, qloop_api, qloop_driver, settle

NAME = "callbacks"
VARIANTS = ("chain", "batch")
DEFAULT_N = 1_000_000
QUICK_N = 100_000
CALLGRIND_N = 10_000
FLOORS = ("deque",)
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent"}
BATCH = 1000


def script(variant, n, post, finish):
    """The callbacks of one run, written once for every impl.

    ``post(cb)`` schedules cb on the loop under test, ``finish()`` tells the
    loop to stop.  Returns (first, check): ``first`` is what the timed region
    schedules first; ``check()`` asserts every callback ran and returns the
    op count.  Counters are closure cells (as cheap as Python state gets).
    """
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


def _n(n, variant):
    return max(n, BATCH) if variant == "batch" else n


def run_qloop(n, variant, opts):
    AioContext = qloop_api("AioContext")
    n = _n(n, variant)
    ctx = AioContext()
    run, stop = qloop_driver(ctx)
    first, check = script(variant, n, ctx.schedule_oneshot, stop)
    settle()
    t0 = now()
    ctx.schedule_oneshot(first)
    run()
    t1 = now()
    ctx.close()
    return {"seconds": t1 - t0, "ops": check()}


def run_qloop_bh(n, variant, opts):
    AioContext = qloop_api("AioContext")
    n = _n(n, variant)
    ctx = AioContext()
    run, stop = qloop_driver(ctx)
    # One persistent BH per distinct callback, made before the timed region.
    # batch needs BATCH distinct no-op BHs: scheduling a scheduled BH is a
    # no-op, so the driver schedules each of them once per round.
    count = 0
    if variant == "chain":
        def cb():
            nonlocal count
            count += 1
            if count < n:
                sched()
            else:
                stop()
        sched = ctx.bh(cb).schedule
        expected = n
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
    settle()
    t0 = now()
    sched()
    run()
    t1 = now()
    ctx.close()
    assert count == expected, (count, expected)
    return {"seconds": t1 - t0, "ops": expected}


def run_aio(impl):
    def run(n, variant, opts):
        n = _n(n, variant)
        loop = new_aio_loop(impl)
        first, check = script(variant, n, loop.call_soon, loop.stop)
        settle()
        t0 = now()
        loop.call_soon(first)
        loop.run_forever()
        t1 = now()
        loop.close()
        return {"seconds": t1 - t0, "ops": check()}
    return run


def run_gevent(n, variant, opts):
    import gevent
    from gevent.event import Event
    n = _n(n, variant)
    loop = gevent.get_hub().loop
    done = Event()
    first, check = script(variant, n, loop.run_callback, done.set)
    gevent.sleep(0)  # start the hub before timing
    settle()
    t0 = now()
    loop.run_callback(first)
    done.wait()
    t1 = now()
    return {"seconds": t1 - t0, "ops": check()}


def run_deque(n, variant, opts):
    from collections import deque
    n = _n(n, variant)
    q = deque()
    first, check = script(variant, n, q.append, lambda: None)
    pop = q.popleft
    settle()
    t0 = now()
    q.append(first)
    while q:
        pop()()
    t1 = now()
    return {"seconds": t1 - t0, "ops": check()}


IMPLS = {
    "qloop": run_qloop,
    "qloop_bh": run_qloop_bh,
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent,
    "deque": run_deque,
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
