"""lock: W coroutines contend for one lock held across a yield.

Each of W = 100 coroutines does ITERS times: acquire; v = counter; yield once
to the scheduler; counter = v + 1; release.  counter == W * ITERS is checked.
One op = one acquisition (``n`` is ITERS, ``acquisitions`` = W * ITERS).
Extra ``handoff_ratio``: the fraction of acquisitions made by a different
coroutine than the previous one (1.0 = FIFO hand-off, ~0 = barging).

qloop: qloop.CoMutex lock()/unlock(); yield = reschedule the running
coroutine in its context (ctx.co_schedule(self), written inline as a user
would) and coroutine_yield(); W qloop.Coroutine woken (co_wake) by a main coroutine
that ctx.run() runs and that joins them.  asyncio/uvloop: asyncio.Lock, await asyncio.sleep(0).  gevent:
gevent.lock.Semaphore(1); gevent_rlock: gevent.lock.RLock; gevent.sleep(0).
"""
import sys

from ._common import cli, new_aio_loop, now, qloop_api, qloop_run, settle

NAME = "lock"
VARIANTS = ()
DEFAULT_N = 2_000
QUICK_N = 200
CALLGRIND_N = 20
FLOORS = ()
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent", "gevent_rlock": "gevent"}


def add_arguments(p):
    p.add_argument("--workers", type=int, default=100, help="W, coroutines sharing the lock")


class _Tally:
    """Counter, hand-off statistics and the final check, shared by all impls."""

    def __init__(self, workers, iters):
        self.workers, self.iters = workers, iters
        self.counter = 0
        self.handoffs = 0
        self.last = -1

    def result(self, seconds):
        total = self.workers * self.iters
        assert self.counter == total, (self.counter, total)
        return {"seconds": seconds, "ops": total, "workers": self.workers,
                "acquisitions": total, "handoff_ratio": round(self.handoffs / total, 4)}


def run_qloop(n, variant, opts):
    AioContext, Coroutine, CoMutex, co_wake, coroutine_self, coroutine_yield = qloop_api(
        "AioContext", "Coroutine", "CoMutex", "co_wake", "coroutine_self", "coroutine_yield")
    qloop_api("Coroutine.join")
    w = opts.get("workers", 100)
    tally = _Tally(w, n)
    ctx = AioContext()
    qloop_api("AioContext.co_schedule")
    co_schedule = ctx.co_schedule

    def worker(lock, me):
        t = tally
        acquire, release = lock.lock, lock.unlock
        co = coroutine_self()
        for _ in range(n):
            acquire()
            if me != t.last:
                t.handoffs += 1
                t.last = me
            v = t.counter
            co_schedule(co)     # yield once to the scheduler: back in the
            coroutine_yield()   # next poll (asyncio.sleep(0))
            t.counter = v + 1
            release()

    def main():
        lock = CoMutex()
        cos = [Coroutine(worker, lock, i) for i in range(w)]
        for co in cos:
            co_wake(co)
        for co in cos:
            co.join()

    settle()
    t0 = now()
    qloop_run(ctx, main)
    t1 = now()
    ctx.close()
    return dict(tally.result(t1 - t0), yield_via="co_schedule")


def run_aio(impl):
    def run(n, variant, opts):
        import asyncio
        w = opts.get("workers", 100)
        tally = _Tally(w, n)
        loop = new_aio_loop(impl)
        asyncio.set_event_loop(loop)

        async def worker(lock, me):
            t = tally
            sleep = asyncio.sleep
            for _ in range(n):
                async with lock:
                    if me != t.last:
                        t.handoffs += 1
                        t.last = me
                    v = t.counter
                    await sleep(0)
                    t.counter = v + 1

        async def main():
            lock = asyncio.Lock()
            await asyncio.gather(*[worker(lock, i) for i in range(w)])

        settle()
        t0 = now()
        loop.run_until_complete(main())
        t1 = now()
        loop.close()
        return tally.result(t1 - t0)
    return run


def run_gevent(impl):
    def run(n, variant, opts):
        import gevent
        from gevent.lock import RLock, Semaphore
        w = opts.get("workers", 100)
        tally = _Tally(w, n)
        lock = Semaphore(1) if impl == "gevent" else RLock()

        def worker(me):
            t = tally
            sleep = gevent.sleep
            for _ in range(n):
                with lock:
                    if me != t.last:
                        t.handoffs += 1
                        t.last = me
                    v = t.counter
                    sleep(0)
                    t.counter = v + 1

        gevent.sleep(0)
        settle()
        t0 = now()
        gs = [gevent.spawn(worker, i) for i in range(w)]
        gevent.joinall(gs, raise_error=True)
        t1 = now()
        return tally.result(t1 - t0)
    return run


IMPLS = {
    "qloop": run_qloop,
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent("gevent"),
    "gevent_rlock": run_gevent("gevent_rlock"),
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
