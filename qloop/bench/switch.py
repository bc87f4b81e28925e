"""switch: coroutine switch round trip (give control away, get it back), N times.

qloop: the caller enters a qloop.Coroutine whose body loops on
qloop.coroutine_yield() (enter + yield = one round trip, like greenlet's
switch ping-pong).  qloop_loop: a coroutine run by ctx.run() reschedules
itself in its context and yields (coroutine -> loop -> coroutine, like
asyncio.sleep(0)).  greenlet: main and child switch() to each other.
asyncio/uvloop: a task awaits asyncio.sleep(0) N times.  gevent: a greenlet
calls gevent.sleep(0) N times (spawn + join timed).  generator: gen.send()
into a generator that loops on yield (the floor).
"""
import sys

from ._common import cli, new_aio_loop, now, qloop_api, qloop_rescheduler, qloop_run, settle

NAME = "switch"
VARIANTS = ()
DEFAULT_N = 1_000_000
QUICK_N = 100_000
CALLGRIND_N = 20_000
FLOORS = ("generator",)
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent", "greenlet": "greenlet"}


def run_qloop(n, variant, opts):
    Coroutine, coroutine_yield = qloop_api("Coroutine", "coroutine_yield")
    running = True

    def body():
        y = coroutine_yield
        while running:
            y()

    co = Coroutine(body)
    enter = co.enter
    enter()  # start it: it yields straight back
    settle()
    t0 = now()
    for _ in range(n):
        enter()
    t1 = now()
    running = False
    enter()  # let it return
    assert co.done
    return {"seconds": t1 - t0}


def run_qloop_loop(n, variant, opts):
    AioContext = qloop_api("AioContext")
    ctx = AioContext()
    again, how = qloop_rescheduler(ctx)

    def body():
        for _ in range(n):
            again()

    settle()
    t0 = now()
    qloop_run(ctx, body)
    t1 = now()
    ctx.close()
    return {"seconds": t1 - t0, "yield_via": how()}


def run_greenlet(n, variant, opts):
    from greenlet import getcurrent, greenlet
    main = getcurrent()

    def child():
        back = main.switch
        while True:
            back()

    g = greenlet(child)
    sw = g.switch
    sw()
    settle()
    t0 = now()
    for _ in range(n):
        sw()
    t1 = now()
    g.throw()  # GreenletExit ends the child
    return {"seconds": t1 - t0}


def run_aio(impl):
    def run(n, variant, opts):
        import asyncio
        loop = new_aio_loop(impl)
        sleep = asyncio.sleep

        async def task():
            for _ in range(n):
                await sleep(0)

        settle()
        t0 = now()
        loop.run_until_complete(task())
        t1 = now()
        loop.close()
        return {"seconds": t1 - t0}
    return run


def run_gevent(n, variant, opts):
    import gevent
    sleep = gevent.sleep

    def body():
        for _ in range(n):
            sleep(0)

    gevent.sleep(0)
    settle()
    t0 = now()
    g = gevent.spawn(body)
    g.join()
    t1 = now()
    assert g.successful()
    return {"seconds": t1 - t0}


def run_generator(n, variant, opts):
    def gen():
        while True:
            yield

    send = gen().send
    send(None)
    settle()
    t0 = now()
    for _ in range(n):
        send(None)
    t1 = now()
    return {"seconds": t1 - t0}


IMPLS = {
    "qloop": run_qloop,
    "qloop_loop": run_qloop_loop,
    "greenlet": run_greenlet,
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent,
    "generator": run_generator,
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
