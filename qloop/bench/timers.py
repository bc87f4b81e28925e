"""timers: N one-shot timers with delays uniform in [0, 100) ms, all fired.

The delays come from random.Random(12345) (the same sequence for every impl,
drawn before the timed region).  Each callback counts; the N-th stops the
loop.  Timed from before creating the first timer until the last one fired
(fired == N is checked); extra ``create_s`` = time spent creating them.  The
timer objects are kept alive until the end in every impl.

qloop: base = ctx.now() once, then per timer t = ctx.timer(cb);
t.mod(base + delay_ns) (CLOCK_REALTIME); asyncio/uvloop: loop.call_later(delay_s,
cb); gevent: loop.timer(delay_s).start(cb).

Where the deadlines start from: gevent's timers count from libev's cached
"now" and uvloop's call_later from libuv's cached loop time, both read before
the first timer is created, while asyncio's call_later reads the clock for
each timer.  qloop reads its clock once, like the first two: with a deadline
per timer counted from its own creation the run could not end before
create_s + 100 ms.
"""
import random
import sys

from ._common import cli, new_aio_loop, now, qloop_api, qloop_driver, settle

NAME = "timers"
VARIANTS = ()
DEFAULT_N = 200_000
QUICK_N = 20_000
CALLGRIND_N = 5_000
FLOORS = ()
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent"}
SPAN_S = 0.100


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


def run_qloop(n, variant, opts):
    AioContext = qloop_api("AioContext")
    delays = [int(d * 1e9) for d in delays_s(n)]   # the API's unit is ns
    ctx = AioContext()
    run, stop = qloop_driver(ctx)
    cb, fired = _counter(n, stop)
    new_timer = ctx.timer
    clock_now = ctx.now
    settle()
    t0 = now()
    base = clock_now()       # one reading, as libev's / libuv's cached "now"
    timers = []
    keep = timers.append
    for d in delays:
        t = new_timer(cb)
        t.mod(base + d)
        keep(t)
    t_created = now()
    run()
    t1 = now()
    assert fired() == n, fired()
    del timers
    ctx.close()
    return {"seconds": t1 - t0, "create_s": round(t_created - t0, 6)}


def run_aio(impl):
    def run(n, variant, opts):
        delays = delays_s(n)
        loop = new_aio_loop(impl)
        cb, fired = _counter(n, loop.stop)
        call_later = loop.call_later
        settle()
        t0 = now()
        handles = [call_later(d, cb) for d in delays]
        t_created = now()
        loop.run_forever()
        t1 = now()
        loop.close()
        assert fired() == n, fired()
        del handles
        return {"seconds": t1 - t0, "create_s": round(t_created - t0, 6)}
    return run


def run_gevent(n, variant, opts):
    import gevent
    from gevent.event import Event
    delays = delays_s(n)
    loop = gevent.get_hub().loop
    done = Event()
    cb, fired = _counter(n, done.set)
    new_timer = loop.timer
    gevent.sleep(0)
    settle()
    t0 = now()
    # Deadlines are relative to libev's cached "now" (update=False, the default).
    watchers = []
    keep = watchers.append
    for d in delays:
        w = new_timer(d)
        w.start(cb)
        keep(w)
    t_created = now()
    done.wait()
    t1 = now()
    assert fired() == n, fired()
    del watchers
    return {"seconds": t1 - t0, "create_s": round(t_created - t0, 6)}


IMPLS = {
    "qloop": run_qloop,
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent,
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
