"""fdwatch: fd readiness ping-pong through two pipes, N round trips.

Two non-blocking pipes, P1 (A -> B) and P2 (B -> A).  One round trip: A
writes a byte to P1; B, woken by P1's readability, reads it and writes a byte
to P2; A, woken by P2's readability, reads it.

callback:     both sides are read handlers registered once.
coro:         both sides are coroutines that block until their fd is
              readable; the registration is made once, and each wait stores
              the waiting coroutine where the handler finds and wakes it.
coro_oneshot: as coro, but the handler is registered before and removed
              after every wait.
In the coro variants a read that finds nothing (a stale level-triggered
event) waits again; such retries are counted in ``spurious_wakeups``.

qloop: ctx.set_fd_handler(fd, read=cb); in the coro variants both sides are
qloop.Coroutine started by a main coroutine that AioContext.run() runs, and
the read handler wakes the waiting one with qloop.co_wake (coro_oneshot:
the handler is set before and removed after each wait).
asyncio/uvloop: add_reader (coro: a future per wait); gevent: loop.io
watchers (coro: hub.wait(watcher); coro_oneshot: gevent.socket.wait_read).
c_epoll (the floor): fdwatch_floor.c, the same round trips in C with one
epoll set and no loop - the six system calls per round trip that every impl
makes (coro_oneshot: plus an epoll_ctl add and delete per wait).
"""
import json
import os
import subprocess
import sys

from ._common import c_helper, cli, new_aio_loop, now, qloop_api, qloop_driver, qloop_run, settle

NAME = "fdwatch"
VARIANTS = ("callback", "coro", "coro_oneshot")
DEFAULT_N = 100_000
QUICK_N = 10_000
CALLGRIND_N = 2_000
FLOORS = ("c_epoll",)
REQUIRES = {"uvloop": "uvloop", "gevent": "gevent"}


class _Pipes:
    def __init__(self):
        self.r1, self.w1 = os.pipe()
        self.r2, self.w2 = os.pipe()
        for fd in self.fds():
            os.set_blocking(fd, False)

    def fds(self):
        return (self.r1, self.w1, self.r2, self.w2)

    def close(self):
        for fd in self.fds():
            os.close(fd)


def _callback_sides(p, n, finish):
    """(on_b, on_a, count): the two readiness callbacks of the callback variant."""
    read, write = os.read, os.write
    r1, w1, r2, w2 = p.fds()
    count = 0

    def on_b():
        read(r1, 1)
        write(w2, b"x")

    def on_a():
        nonlocal count
        read(r2, 1)
        count += 1
        if count < n:
            write(w1, b"x")
        else:
            finish()

    return on_b, on_a, lambda: count


def _coro_sides(p, n, wait_r1, wait_r2):
    """side_a, side_b bodies for coroutine impls whose wait is a plain call
    (qloop, gevent); stats() -> (round trips, spurious wake-ups)."""
    read, write = os.read, os.write
    r1, w1, r2, w2 = p.fds()
    count = 0
    spurious = 0

    def wait_read(fd, wait):
        nonlocal spurious
        wait()
        while True:
            try:
                return read(fd, 1)
            except BlockingIOError:
                spurious += 1
                wait()

    def side_a():
        nonlocal count
        for _ in range(n):
            write(w1, b"x")
            wait_read(r2, wait_r2)
            count += 1

    def side_b():
        for _ in range(n):
            wait_read(r1, wait_r1)
            write(w2, b"x")

    return side_a, side_b, lambda: (count, spurious)


def run_qloop(n, variant, opts):
    AioContext = qloop_api("AioContext")
    p = _Pipes()
    ctx = AioContext()
    if variant == "callback":
        run, stop = qloop_driver(ctx)
        on_b, on_a, count = _callback_sides(p, n, stop)
        ctx.set_fd_handler(p.r1, read=on_b)
        ctx.set_fd_handler(p.r2, read=on_a)
        settle()
        t0 = now()
        os.write(p.w1, b"x")
        run()
        t1 = now()
        ctx.set_fd_handler(p.r1, None)
        ctx.set_fd_handler(p.r2, None)
        spurious = 0
        assert count() == n
    else:
        Coroutine, coroutine_yield, coroutine_self, co_wake = qloop_api(
            "Coroutine", "coroutine_yield", "coroutine_self", "co_wake")
        qloop_api("Coroutine.join")
        set_fd_handler = ctx.set_fd_handler
        if variant == "coro":
            waiting = {p.r1: None, p.r2: None}

            def waker(fd):
                def wake():
                    co = waiting[fd]
                    if co is not None:
                        waiting[fd] = None
                        co_wake(co)
                return wake

            set_fd_handler(p.r1, read=waker(p.r1))
            set_fd_handler(p.r2, read=waker(p.r2))

            def waiter(fd):
                def wait():
                    waiting[fd] = coroutine_self()
                    coroutine_yield()
                return wait
        else:
            def waiter(fd):
                def wait():
                    me = coroutine_self()
                    set_fd_handler(fd, read=lambda: co_wake(me))
                    try:
                        coroutine_yield()
                    finally:
                        set_fd_handler(fd, None)
                return wait

        side_a, side_b, stats = _coro_sides(p, n, waiter(p.r1), waiter(p.r2))
        def main():
            cos = [Coroutine(side_b), Coroutine(side_a)]
            for co in cos:
                co_wake(co)   # both start once main yields (in join)
            for co in cos:
                co.join()

        settle()
        t0 = now()
        qloop_run(ctx, main)
        t1 = now()
        if variant == "coro":
            set_fd_handler(p.r1, None)
            set_fd_handler(p.r2, None)
        count, spurious = stats()
        assert count == n, count
    ctx.close()
    p.close()
    return {"seconds": t1 - t0, "spurious_wakeups": spurious}


def run_aio(impl):
    def run(n, variant, opts):
        import asyncio
        p = _Pipes()
        loop = new_aio_loop(impl)
        spurious = 0
        if variant == "callback":
            on_b, on_a, count = _callback_sides(p, n, loop.stop)
            loop.add_reader(p.r1, on_b)
            loop.add_reader(p.r2, on_a)
            settle()
            t0 = now()
            os.write(p.w1, b"x")
            loop.run_forever()
            t1 = now()
            loop.remove_reader(p.r1)
            loop.remove_reader(p.r2)
            assert count() == n
        else:
            read, write = os.read, os.write
            new_future = loop.create_future
            add_reader, remove_reader = loop.add_reader, loop.remove_reader
            if variant == "coro":
                pending = {p.r1: None, p.r2: None}

                def wake(fd):
                    fut = pending[fd]
                    if fut is not None:
                        pending[fd] = None
                        fut.set_result(None)

                add_reader(p.r1, wake, p.r1)
                add_reader(p.r2, wake, p.r2)

                async def readable(fd):
                    fut = pending[fd] = new_future()
                    await fut
            else:
                async def readable(fd):
                    fut = new_future()
                    add_reader(fd, fut.set_result, None)
                    try:
                        await fut
                    finally:
                        remove_reader(fd)

            count = 0

            async def read_one(fd):
                nonlocal spurious
                await readable(fd)
                while True:
                    try:
                        return read(fd, 1)
                    except BlockingIOError:
                        spurious += 1
                        await readable(fd)

            async def side_a():
                nonlocal count
                for _ in range(n):
                    write(p.w1, b"x")
                    await read_one(p.r2)
                    count += 1

            async def side_b():
                for _ in range(n):
                    await read_one(p.r1)
                    write(p.w2, b"x")

            async def main():
                await asyncio.gather(side_b(), side_a())

            settle()
            t0 = now()
            loop.run_until_complete(main())
            t1 = now()
            if variant == "coro":
                remove_reader(p.r1)
                remove_reader(p.r2)
            assert count == n, count
        loop.close()
        p.close()
        return {"seconds": t1 - t0, "spurious_wakeups": spurious}
    return run


def run_gevent(n, variant, opts):
    import gevent
    from gevent.event import Event
    p = _Pipes()
    hub = gevent.get_hub()
    io1 = hub.loop.io(p.r1, 1)  # 1 = READ
    io2 = hub.loop.io(p.r2, 1)
    gevent.sleep(0)
    spurious = 0
    if variant == "callback":
        done = Event()

        def finish():
            io1.stop()
            io2.stop()
            done.set()

        on_b, on_a, count = _callback_sides(p, n, finish)
        io1.start(on_b)
        io2.start(on_a)
        settle()
        t0 = now()
        os.write(p.w1, b"x")
        done.wait()
        t1 = now()
        assert count() == n
    else:
        if variant == "coro":
            def wait_r1():
                hub.wait(io1)

            def wait_r2():
                hub.wait(io2)
        else:
            from gevent.socket import wait_read

            def wait_r1():
                wait_read(p.r1)

            def wait_r2():
                wait_read(p.r2)

        side_a, side_b, stats = _coro_sides(p, n, wait_r1, wait_r2)
        settle()
        t0 = now()
        gs = [gevent.spawn(side_b), gevent.spawn(side_a)]
        gevent.joinall(gs, raise_error=True)
        t1 = now()
        count, spurious = stats()
        assert count == n, count
    io1.close()
    io2.close()
    p.close()
    return {"seconds": t1 - t0, "spurious_wakeups": spurious}


def run_c_floor(n, variant, opts):
    exe = c_helper("fdwatch_floor.c")
    settle()
    out = subprocess.run([exe, str(n), variant], check=True, capture_output=True, text=True,
                         timeout=600).stdout
    res = json.loads(out)
    assert res["round_trips"] == n, res
    return {"seconds": res["seconds"], "cpu_seconds": res["cpu_seconds"],
            "spurious_wakeups": 0}


IMPLS = {
    "qloop": run_qloop,
    "asyncio": run_aio("asyncio"),
    "uvloop": run_aio("uvloop"),
    "gevent": run_gevent,
    "c_epoll": run_c_floor,
}

if __name__ == "__main__":
    sys.exit(cli(sys.modules[__name__]))
