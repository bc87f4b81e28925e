"""spawn: the life of a coroutine whose body yields once and returns.

run: create all N, then start each, then finish each (creation order).
seq: one at a time: create, start, finish coroutine i before creating i+1.
mem: N coroutines alive at once, all blocked on one shared event;
     ``rss_delta_per_coro_b`` = (RSS with all N blocked - RSS before creating
     them) / N, from /proc/self/statm.  Then the event fires and all finish.

qloop: qloop.Coroutine(f), where f calls qloop.coroutine_yield(); the caller
enters it twice (start -> yield, resume -> return), like greenlet.  mem: each
waits on one qloop.CoQueue, released by restart_all().  asyncio/uvloop:
loop.create_task(co()) (co awaits asyncio.sleep(0); mem: asyncio.Event);
gevent: gevent.spawn(f) + join/joinall (f = gevent.sleep(0); mem:
gevent.event.Event); greenlet: greenlet(f), switch() twice (f switches to
its parent once).
"""
import sys

from ._common import cli, new_aio_loop, now, qloop_api, rss_bytes, settle

NAME = "spawn"
VARIANTS = ("run", "seq", "mem")
DEFAULT_N = 100_000
QUICK_N = {"run": 5_000, "seq": 5_000, "mem": 10_000}
CALLGRIND_N = 2_000
FLOORS = ()
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent", "greenlet": "greenlet"}
METRIC = {"run": "per_op_ns", "seq": "per_op_ns", "mem": "rss_delta_per_coro_b"}


def _mem_result(seconds, before, blocked, n):
    return {"seconds": seconds, "rss_delta_per_coro_b": round((blocked - before) / n, 1)}


def run_qloop(n, variant, opts):
    Coroutine, coroutine_yield = qloop_api("Coroutine", "coroutine_yield")
    if variant == "seq":
        def f():
            coroutine_yield()
        settle()
        t0 = now()
        for _ in range(n):
            co = Coroutine(f)
            co.enter()
            co.enter()
        t1 = now()
        assert co.done
        return {"seconds": t1 - t0}
    if variant == "run":
        def f():
            coroutine_yield()
        settle()
        t0 = now()
        cos = [Coroutine(f) for _ in range(n)]
        for co in cos:
            co.enter()
        for co in cos:
            co.enter()
        t1 = now()
        assert all(co.done for co in cos)
        return {"seconds": t1 - t0}
    # mem
    AioContext, CoQueue = qloop_api("AioContext", "CoQueue")
    qloop_api("CoQueue.restart_all")
    ctx = AioContext()
    q = CoQueue()
    blocked = 0

    def f():
        nonlocal blocked
        blocked += 1
        q.wait()

    settle()
    before = rss_bytes()
    t0 = now()
    cos = [Coroutine(f) for _ in range(n)]
    for co in cos:
        co.enter()
    assert blocked == n, blocked
    during = rss_bytes()
    q.restart_all()
    # Woken from outside any coroutine they run at once; poll in case the
    # implementation defers them to the context instead.
    for _ in range(1000):
        if all(co.done for co in cos):
            break
        ctx.poll(False)
    t1 = now()
    assert all(co.done for co in cos)
    ctx.close()
    return _mem_result(t1 - t0, before, during, n)


def run_aio(impl):
    def run(n, variant, opts):
        import asyncio
        loop = new_aio_loop(impl)
        asyncio.set_event_loop(loop)
        make = loop.create_task
        box = {}
        if variant in ("run", "seq"):
            sleep = asyncio.sleep

            async def co():
                await sleep(0)

            if variant == "run":
                async def main():
                    tasks = [make(co()) for _ in range(n)]
                    for t in tasks:
                        await t
            else:
                async def main():
                    for _ in range(n):
                        await make(co())
        else:
            ev = asyncio.Event()
            blocked = 0

            async def co():
                nonlocal blocked
                blocked += 1
                await ev.wait()

            async def main():
                tasks = [make(co()) for _ in range(n)]
                await asyncio.sleep(0)  # every task runs up to ev.wait()
                await asyncio.sleep(0)
                assert blocked == n, blocked
                box["during"] = rss_bytes()
                ev.set()
                for t in tasks:
                    await t
        settle()
        box["before"] = rss_bytes()
        t0 = now()
        loop.run_until_complete(main())
        t1 = now()
        loop.close()
        if variant == "mem":
            return _mem_result(t1 - t0, box["before"], box["during"], n)
        return {"seconds": t1 - t0}
    return run


def run_gevent(n, variant, opts):
    import gevent
    from gevent.event import Event
    spawn = gevent.spawn
    gevent.sleep(0)
    if variant in ("run", "seq"):
        sleep = gevent.sleep

        def f():
            sleep(0)

        settle()
        t0 = now()
        if variant == "run":
            gs = [spawn(f) for _ in range(n)]
            gevent.joinall(gs)
        else:
            for _ in range(n):
                g = spawn(f)
                g.join()
            gs = [g]
        t1 = now()
        assert all(g.successful() for g in gs)
        return {"seconds": t1 - t0}
    ev = Event()
    blocked = 0

    def f():
        nonlocal blocked
        blocked += 1
        ev.wait()

    settle()
    before = rss_bytes()
    t0 = now()
    gs = [spawn(f) for _ in range(n)]
    gevent.sleep(0)
    gevent.sleep(0)
    assert blocked == n, blocked
    during = rss_bytes()
    ev.set()
    gevent.joinall(gs)
    t1 = now()
    assert all(g.successful() for g in gs)
    return _mem_result(t1 - t0, before, during, n)


def run_greenlet(n, variant, opts):
    from greenlet import getcurrent, greenlet
    parent = getcurrent()

    def f():
        parent.switch()  # the one yield (mem: the blocked state)

    settle()
    if variant == "seq":
        t0 = now()
        for _ in range(n):
            g = greenlet(f)
            g.switch()
            g.switch()
        t1 = now()
        assert g.dead
        return {"seconds": t1 - t0}
    before = rss_bytes()
    t0 = now()
    gs = [greenlet(f) for _ in range(n)]
    for g in gs:
        g.switch()
    during = rss_bytes()
    for g in gs:
        g.switch()
    t1 = now()
    assert all(g.dead for g in gs)
    if variant == "mem":
        return _mem_result(t1 - t0, before, during, n)
    return {"seconds": t1 - t0}


IMPLS = {
    "qloop": run_qloop,
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent,
    "greenlet": run_greenlet,
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
