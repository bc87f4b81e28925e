"""threadpool: a trivial function sent through the thread pool and back, N times.

A coroutine runs ``f()`` (returns a constant) in a worker thread and waits
for the result, one call at a time.  One op = one round trip: coroutine ->
pool thread -> result delivered back into the coroutine's loop -> coroutine
resumed.

qloop: qloop.run_in_thread(f) inside a coroutine run by AioContext.run().
asyncio/uvloop: ``await loop.run_in_executor(None, f)``.  gevent:
``hub.threadpool.apply(f)`` from a greenlet.  executor: the floor without an
event loop, concurrent.futures.ThreadPoolExecutor ``submit(f).result()``
from the main thread.
"""
import sys

from ._common import cli, new_aio_loop, now, qloop_api, qloop_run, settle

NAME = "threadpool"
VARIANTS = ()
DEFAULT_N = 50_000
QUICK_N = 3_000
CALLGRIND_N = 500
FLOORS = ("executor",)
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent"}


def f():
    return 42


def _warm_calls(call):
    # Start the pool's threads before timing (first calls spawn workers).
    for _ in range(8):
        assert call() == 42


def run_qloop(n, variant, opts):
    AioContext, run_in_thread = qloop_api("AioContext", "run_in_thread")
    ctx = AioContext()
    box = {}

    def main():
        _warm_calls(lambda: run_in_thread(f))
        settle()
        t0 = now()
        for _ in range(n):
            run_in_thread(f)
        box["seconds"] = now() - t0

    qloop_run(ctx, main)
    ctx.close()
    return {"seconds": box["seconds"]}


def run_aio(impl):
    def run(n, variant, opts):
        loop = new_aio_loop(impl)
        box = {}

        async def main():
            rie = loop.run_in_executor
            for _ in range(8):
                assert await rie(None, f) == 42
            settle()
            t0 = now()
            for _ in range(n):
                await rie(None, f)
            box["seconds"] = now() - t0

        loop.run_until_complete(main())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        return {"seconds": box["seconds"]}
    return run


def run_gevent(n, variant, opts):
    import gevent
    pool = gevent.get_hub().threadpool
    box = {}

    def main():
        apply = pool.apply
        _warm_calls(lambda: apply(f))
        settle()
        t0 = now()
        for _ in range(n):
            apply(f)
        box["seconds"] = now() - t0

    g = gevent.spawn(main)
    g.join()
    assert g.successful(), g.exception
    return {"seconds": box["seconds"]}


def run_executor(n, variant, opts):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor() as ex:
        submit = ex.submit
        _warm_calls(lambda: submit(f).result())
        settle()
        t0 = now()
        for _ in range(n):
            submit(f).result()
        t1 = now()
    return {"seconds": t1 - t0}


IMPLS = {
    "qloop": run_qloop,
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent,
    "executor": run_executor,
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
