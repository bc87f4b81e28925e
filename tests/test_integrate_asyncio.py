"""Driving a qloop AioContext from an asyncio event loop."""
import asyncio
import os
import threading

import qloop
from qloop.integrate import asyncio as qlasyncio


def test_asyncio_loop_runs_bh_timer_and_fd_handler():
    ctx = qloop.AioContext()
    r, w = os.pipe()
    os.set_blocking(r, False)
    got = []

    async def main():
        loop = asyncio.get_running_loop()
        handle = qlasyncio.attach(ctx, loop)
        done = loop.create_future()

        def note(x):
            got.append(x)
            if len(got) == 4 and not done.done():
                done.set_result(None)

        ctx.schedule_oneshot(note, "bh")
        ctx.timer(note, "timer").mod_in(30_000_000)
        ctx.set_fd_handler(r, read=lambda: note(os.read(r, 10)))
        loop.call_later(0.01, os.write, w, b"fd")
        # work handed over from another thread wakes the asyncio loop
        threading.Timer(0.05, ctx.schedule_oneshot, (note, "thread")).start()
        await asyncio.wait_for(done, 10)
        ctx.set_fd_handler(r)
        handle.detach()

    asyncio.run(main())
    assert sorted(map(str, got)) == sorted(map(str, ["bh", b"fd", "timer", "thread"]))
    assert got[0] == "bh"
    os.close(r)
    os.close(w)
    ctx.close()


def test_asyncio_exception_handler_gets_qloop_callback_errors():
    ctx = qloop.AioContext()
    caught = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda l, c: caught.append(c["exception"]))
        handle = qlasyncio.attach(ctx, loop)
        ctx.schedule_oneshot(lambda: 1 / 0)
        for _ in range(20):
            await asyncio.sleep(0.01)
            if caught:
                break
        handle.detach()

    asyncio.run(main())
    assert caught and isinstance(caught[0], ZeroDivisionError)
    ctx.close()


def test_context_closed_while_attached_detaches_cleanly():
    # After ctx.close() its fileno() raises: the attachment must still let
    # go of the fd it watches, and a pending wakeup must not blow up.
    errors = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda lp, c: errors.append(c))
        ctx = qloop.AioContext()
        fd = ctx.fileno()
        handle = qlasyncio.attach(ctx, loop)
        ctx.schedule_oneshot(lambda: None)  # a wakeup is pending
        ctx.close()
        await asyncio.sleep(0.01)  # the attachment runs and sees it closed
        handle.detach()
        handle.detach()
        assert not loop.remove_reader(fd)  # nothing left registered

    asyncio.run(main())
    assert errors == []
