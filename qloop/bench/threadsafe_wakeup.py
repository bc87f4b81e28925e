"""threadsafe_wakeup: other thread -> idle loop -> other thread, N round trips.

A second OS thread posts one callback into the event loop (idle, asleep in its
poll) and then blocks on a plain threading.Lock that the callback releases on
the loop thread.  One op = one full round trip.  Timed from starting the
thread until the loop ran the final "stop" callback.

qloop: ctx.schedule_oneshot(cb) from the thread (BH scheduling is thread-safe
and wakes the poll); qloop_bh: one persistent BH, BH.schedule() from the
thread.  asyncio/uvloop: call_soon_threadsafe; gevent:
loop.run_callback_threadsafe (plus a never-firing timer that keeps the loop
alive); gevent_async: one async_() watcher, send() per op; threads_lock: no
loop at all, the "loop" thread waits on a second Lock (the floor).
"""
import sys
import threading
from functools import partial

from ._common import cli, new_aio_loop, now, qloop_api, qloop_driver, settle

NAME = "threadsafe_wakeup"
VARIANTS = ()
DEFAULT_N = 100_000
QUICK_N = 5_000
CALLGRIND_N = 2_000
FLOORS = ("threads_lock",)
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent", "gevent_async": "gevent"}


class _PingPong:
    """The state both threads share: the callback the loop runs and the body
    of the posting thread."""

    def __init__(self, n):
        self.n = n
        self.count = 0
        self.back = threading.Lock()
        self.back.acquire()

    def make_cb(self):
        release = self.back.release

        def cb():
            self.count += 1
            release()
        return cb

    def thread(self, post, finish):
        def body():
            acquire = self.back.acquire
            for _ in range(self.n):
                post()
                acquire()
            finish()
        return threading.Thread(target=body)

    def check(self):
        assert self.count == self.n, (self.count, self.n)


def run_qloop(impl):
    def run(n, variant, opts):
        AioContext = qloop_api("AioContext")
        ctx = AioContext()
        pp = _PingPong(n)
        cb = pp.make_cb()
        run, stop = qloop_driver(ctx)
        if impl == "qloop_bh":
            post = ctx.bh(cb).schedule
        else:
            post = partial(ctx.schedule_oneshot, cb)
        th = pp.thread(post, partial(ctx.schedule_oneshot, stop))
        settle()
        t0 = now()
        th.start()
        run()
        t1 = now()
        th.join()
        ctx.close()
        pp.check()
        return {"seconds": t1 - t0}
    return run


def run_aio(impl):
    def run(n, variant, opts):
        loop = new_aio_loop(impl)
        pp = _PingPong(n)
        cst = loop.call_soon_threadsafe
        th = pp.thread(partial(cst, pp.make_cb()), partial(cst, loop.stop))
        settle()
        t0 = now()
        th.start()
        loop.run_forever()
        t1 = now()
        th.join()
        loop.close()
        pp.check()
        return {"seconds": t1 - t0}
    return run


def run_gevent(impl):
    def run(n, variant, opts):
        import gevent
        from gevent.event import Event
        loop = gevent.get_hub().loop
        pp = _PingPong(n)
        cb = pp.make_cb()
        done = Event()
        rcts = loop.run_callback_threadsafe
        if impl == "gevent_async":
            watcher = loop.async_()
            watcher.start(cb)
            post = watcher.send
        else:
            post = partial(rcts, cb)
        # The thread-safe callback's wake-up watcher does not keep the loop
        # alive by itself: hold a timer that never fires during the run.
        keepalive = loop.timer(3600.0)
        keepalive.start(lambda: None)
        th = pp.thread(post, partial(rcts, done.set))
        gevent.sleep(0)
        settle()
        t0 = now()
        th.start()
        done.wait()
        t1 = now()
        th.join()
        keepalive.stop()
        pp.check()
        return {"seconds": t1 - t0}
    return run


def run_threads_lock(n, variant, opts):
    pp = _PingPong(n)
    cb = pp.make_cb()
    go = threading.Lock()
    go.acquire()
    stop = []

    def finish():
        stop.append(1)
        go.release()

    th = pp.thread(go.release, finish)
    acquire = go.acquire
    settle()
    t0 = now()
    th.start()
    while True:
        acquire()
        if stop:
            break
        cb()
    t1 = now()
    th.join()
    pp.check()
    return {"seconds": t1 - t0}


IMPLS = {
    "qloop": run_qloop("qloop"),
    "qloop_bh": run_qloop("qloop_bh"),
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent("gevent"),
    "gevent_async": run_gevent("gevent_async"),
    "threads_lock": run_threads_lock,
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
